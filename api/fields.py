"""Field rules shared by every schema that takes a device id."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from db.schema import DEVICE_ID_MAX_LENGTH


def printable_id(value: str) -> None:
    """Ids are printable and contain no white space (what devices send and what URLs carry)."""
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise ma.ValidationError("Must contain only printable characters and no spaces.")


def device_id(**kwargs: Any) -> ma.fields.String:
    """A meter or vehicle id: 1..DEVICE_ID_MAX_LENGTH printable characters, no spaces."""
    return ma.fields.String(validate=[ma.validate.Length(1, DEVICE_ID_MAX_LENGTH), printable_id], **kwargs)


class AwareDateTime(ma.fields.AwareDateTime):
    """ISO 8601 with an offset, as marshmallow's; a string with a control character is not one, although
    CPython's datetime.fromisoformat skips a NUL before the offset ('2026-01-01T00:00:00\\x00+05:00')."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, str) and not value.isprintable():
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE)
        return super()._deserialize(value, attr, data, **kwargs)
