"""Field and schema rules shared by the API's schemas: request bodies, device ids, date-times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma

from db.schema import DEVICE_ID_MAX_LENGTH


class BaseSchema(ma.Schema):
    """Request bodies: an unknown field is an error, not silently dropped."""

    class Meta:
        unknown = ma.RAISE


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


class UtcDateTime(AwareDateTime):
    """ISO 8601 datetime with an offset; accepted only timezone-aware, always written in UTC (the engines'
    session time zones differ, the API's output must not)."""

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        if value is not None:
            value = value.astimezone(UTC)
        return super()._serialize(value, attr, obj, **kwargs)
