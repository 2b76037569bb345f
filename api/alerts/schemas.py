"""Alert query and response schemas; JSON names are camelCase, as in the API contract."""

from __future__ import annotations

import marshmallow as ma

from api.fields import UtcDateTime, device_id
from db.alerts import ALERT_STATUSES
from db.schema import ALERT_DEVICE_TYPES, ALERT_KINDS


class AlertQueryArgsSchema(ma.Schema):
    status = ma.fields.String(
        load_default="open",
        validate=ma.validate.OneOf(ALERT_STATUSES),
        metadata={"description": "open (default): still firing; resolved: cleared; all"},
    )
    kind = ma.fields.String(validate=ma.validate.OneOf(ALERT_KINDS), metadata={"description": "Only this kind"})
    device_id = device_id(data_key="deviceId", metadata={"description": "Only this meter's or vehicle's alerts"})


class AlertSchema(ma.Schema):
    id = ma.fields.Integer()
    kind = ma.fields.String(metadata={"description": f"One of {', '.join(ALERT_KINDS)}"})
    device_type = ma.fields.String(
        data_key="deviceType", metadata={"description": f"One of {', '.join(ALERT_DEVICE_TYPES)}"}
    )
    device_id = ma.fields.String(data_key="deviceId")
    opened_at = UtcDateTime(data_key="openedAt", metadata={"description": "Scan that first found the condition"})
    last_seen_at = UtcDateTime(
        data_key="lastSeenAt", metadata={"description": "Latest scan that found the condition still true"}
    )
    resolved_at = UtcDateTime(
        data_key="resolvedAt",
        allow_none=True,
        metadata={"description": "Scan that found the condition cleared; null: open"},
    )
    details = ma.fields.Dict(
        metadata={
            "description": "What the scan measured: efficiency and threshold (low_efficiency); matchRate and"
            " medianOffsetSeconds (correlation_lost); lastRecordedAt and silentMinutes (silent_device); the window."
            " A resolved alert adds `resolution`, the measurement that cleared it."
        }
    )
