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
