"""The ingest contract: `{"type": "METER"|"VEHICLE", "payload": {...}}`, or a JSON array of such items.

Bounds (documented in the OpenAPI description of each field; readings outside them are rejected, never
clamped): energy per reading 0..FLEET_MAX_INTERVAL_KWH kWh, voltage 50..1000 V, battery temperature -50..100 C,
SoC 0..100 % (fractions allowed), ids 1..64 printable characters without spaces, timestamps with a time zone,
no further than the clock-skew tolerance in the future and no older than the accepted age.

The body is read by `readings_body`, the ingest view's stand-in for `@blp.arguments`: webargs would run every
reading through marshmallow, which the fast path below avoids for the bodies that are plainly valid.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import marshmallow as ma
from flask import current_app, request
from flask_smorest import abort
from marshmallow import validate

from api.auth import check_device_access
from api.blueprint import Blueprint, loads_json, read_body
from api.fields import AwareDateTime, BaseSchema, device_id
from config import VARIABLES, Settings
from db.readings import MeterReading, VehicleReading
from db.schema import DEVICE_ID_MAX_LENGTH

F = TypeVar("F", bound=Callable[..., Any])

VOLTAGE_RANGE = (50.0, 1000.0)
BATTERY_TEMP_RANGE = (-50.0, 100.0)


class StrictFloat(ma.fields.Float):
    """A JSON number, and only a number: no strings, no booleans, nothing non-finite or too large."""

    default_error_messages = {  # noqa: RUF012 - marshmallow's own convention
        "invalid": "Not a number.",
        "special": "Must be a finite number.",
        "too_large": "Number too large.",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        try:
            return super()._deserialize(float(value), attr, data, **kwargs)
        except OverflowError:
            raise self.make_error("too_large") from None


#: Why an energy value is refused: a device that sends its cumulative register (the original design's own examples
#: carry 125.5 and 105.2 kWh) must learn that a reading carries the energy of its own interval.
_INTERVAL_ENERGY_ERROR = (
    "must be between 0 and {max:g} kWh (FLEET_MAX_INTERVAL_KWH): the energy of this reading's own interval (since"
    " the device's previous reading), not a cumulative meter register"
)
_ENERGY_DESCRIPTION = (
    "kWh, 0 to FLEET_MAX_INTERVAL_KWH (default {:g}): the energy of the reading's own interval, not a register"
).format(VARIABLES["FLEET_MAX_INTERVAL_KWH"].default)
#: The energy field of each reading type: its upper bound is a setting, so it is checked in `load_reading`.
_ENERGY_FIELD = {"METER": "kwhConsumedAc", "VEHICLE": "kwhDeliveredDc"}


def _device_id(description: str) -> ma.fields.String:
    return device_id(
        required=True,
        metadata={"description": f"{description}: 1-{DEVICE_ID_MAX_LENGTH} printable characters, no spaces"},
    )


def _timestamp() -> AwareDateTime:
    return AwareDateTime(
        required=True,
        format="iso",
        metadata={"description": "When the reading was taken: ISO 8601 with a time zone"},
    )


class MeterPayloadSchema(BaseSchema):
    meterId = _device_id("Smart meter id")
    kwhConsumedAc = StrictFloat(
        required=True,
        validate=validate.Range(min=0),
        metadata={"description": f"AC energy drawn in the reporting interval, {_ENERGY_DESCRIPTION}"},
    )
    voltage = StrictFloat(
        required=True,
        validate=validate.Range(*VOLTAGE_RANGE),
        metadata={"description": "Supply voltage, V ({:g}-{:g})".format(*VOLTAGE_RANGE)},
    )
    timestamp = _timestamp()


class VehiclePayloadSchema(BaseSchema):
    vehicleId = _device_id("Vehicle id")
    soc = StrictFloat(
        required=True, validate=validate.Range(0, 100), metadata={"description": "State of charge, % (0-100)"}
    )
    kwhDeliveredDc = StrictFloat(
        required=True,
        validate=validate.Range(min=0),
        metadata={"description": f"DC energy into the battery in the interval, {_ENERGY_DESCRIPTION}"},
    )
    batteryTemp = StrictFloat(
        required=True,
        validate=validate.Range(*BATTERY_TEMP_RANGE),
        metadata={"description": "Battery temperature, C ({:g}-{:g})".format(*BATTERY_TEMP_RANGE)},
    )
    isCharging = ma.fields.Boolean(
        load_default=None, allow_none=True, metadata={"description": "Optional: the charger is delivering energy"}
    )
    timestamp = _timestamp()


#: Each reading type and the schema of its payload.
PAYLOAD_SCHEMAS: dict[str, type[BaseSchema]] = {"METER": MeterPayloadSchema, "VEHICLE": VehiclePayloadSchema}


class ReadingSchema(BaseSchema):
    """One item: the envelope; its payload is checked by the schema its type names."""

    type = ma.fields.String(required=True, validate=validate.OneOf(list(PAYLOAD_SCHEMAS)))
    payload = ma.fields.Dict(required=True)


class IngestResultSchema(ma.Schema):
    received = ma.fields.Integer(metadata={"description": "Readings in the request"})
    stored = ma.fields.Integer(metadata={"description": "Readings stored now (new)"})
    duplicates = ma.fields.Integer(
        metadata={"description": "Readings already stored (same device and timestamp); not stored again"}
    )


_PAYLOAD_SCHEMAS = {kind: schema() for kind, schema in PAYLOAD_SCHEMAS.items()}
_ENVELOPE = ReadingSchema()

# The OpenAPI request body: one reading or a non-empty array of them. A marshmallow field cannot say "this schema
# or that one" (the payload), nor a schema "an object or an array", so the oneOfs are written here; their leaves
# are the payload schemas, which apispec turns into components (MeterPayload, VehiclePayload) and references.
_READING_DOC = {
    "type": "object",
    "required": ["type", "payload"],
    "properties": {
        "type": {"type": "string", "enum": list(PAYLOAD_SCHEMAS)},
        "payload": {"oneOf": list(PAYLOAD_SCHEMAS.values())},
    },
}
REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"oneOf": [_READING_DOC, {"type": "array", "items": _READING_DOC, "minItems": 1}]}
        }
    },
}


class ReadingBounds:
    """The bounds that are settings: which timestamps are accepted, relative to the server's clock, and the
    largest energy of one reading."""

    def __init__(
        self, max_future: timedelta, max_age: timedelta, max_kwh: float = VARIABLES["FLEET_MAX_INTERVAL_KWH"].default
    ) -> None:
        self.max_future = max_future
        self.max_age = max_age
        self.max_kwh = max_kwh

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadingBounds:
        """The bounds FLEET_CLOCK_SKEW_SECONDS, FLEET_MAX_READING_AGE_DAYS and FLEET_MAX_INTERVAL_KWH set."""
        return cls(
            timedelta(seconds=settings.clock_skew_seconds),
            timedelta(days=settings.max_reading_age_days),
            settings.max_interval_kwh,
        )

    def check(self, ts: datetime, now: datetime) -> str | None:
        if ts > now + self.max_future:
            return f"Must not be more than {self.max_future.total_seconds():g} s in the future."
        if ts < now - self.max_age:
            return f"Must not be older than {self.max_age.days} days."
        return None


def load_reading(item: Any, bounds: ReadingBounds, now: datetime) -> MeterReading | VehicleReading:
    """Validate one item; raises ValidationError with messages keyed by field (payload fields nested)."""
    if not isinstance(item, dict):
        raise ma.ValidationError({"_schema": ["Must be an object with 'type' and 'payload'."]})
    envelope = _ENVELOPE.load(item)
    kind = envelope["type"]
    energy_field = _ENERGY_FIELD[kind]
    energy = envelope["payload"].get(energy_field)
    # Checked beside the schema, so that a reading with other bad fields names this one too.
    too_much = type(energy) in (int, float) and energy > bounds.max_kwh
    errors: dict[str, Any] = {energy_field: [_INTERVAL_ENERGY_ERROR.format(max=bounds.max_kwh)]} if too_much else {}
    try:
        payload = _PAYLOAD_SCHEMAS[kind].load(envelope["payload"])
    except ma.ValidationError as exc:
        raise ma.ValidationError({"payload": {**exc.normalized_messages(), **errors}}) from None
    if errors:
        raise ma.ValidationError({"payload": errors})
    problem = bounds.check(payload["timestamp"], now)
    if problem:
        raise ma.ValidationError({"payload": {"timestamp": [problem]}})
    ts = payload["timestamp"].astimezone(UTC)
    if kind == "METER":
        return MeterReading(payload["meterId"], ts, payload["kwhConsumedAc"], payload["voltage"])
    return VehicleReading(
        payload["vehicleId"],
        ts,
        payload["soc"],
        payload["kwhDeliveredDc"],
        payload["batteryTemp"],
        payload["isCharging"],
    )


def load_body(body: Any, bounds: ReadingBounds, max_items: int) -> list[MeterReading | VehicleReading]:
    """A single item or a batch; raises ValidationError naming each bad field (by item index in a batch)."""
    now = datetime.now(UTC)
    fast = _load_valid_body(body, bounds, max_items, now)
    if fast is not None:
        return fast
    if isinstance(body, dict):
        return [load_reading(body, bounds, now)]
    if not isinstance(body, list):
        raise ma.ValidationError({"_schema": ["Body must be a reading object or an array of readings."]})
    if not body:
        raise ma.ValidationError({"_schema": ["Batch is empty."]})
    if len(body) > max_items:
        raise ma.ValidationError({"_schema": [f"Batch has {len(body)} readings; the maximum is {max_items}."]})
    readings: list[MeterReading | VehicleReading] = []
    errors: dict[int, Any] = {}
    for index, item in enumerate(body):
        try:
            readings.append(load_reading(item, bounds, now))
        except ma.ValidationError as exc:
            errors[index] = exc.messages
    if errors:
        raise ma.ValidationError(errors)
    return readings


def readings_body(view: F) -> F:
    """Decorator for the ingest view: the body's readings are passed to it (as `@blp.arguments` passes its
    arguments), and documented as the request body. Nothing is stored for a body it refuses: 415 not
    application/json, 400 malformed JSON, 413 too large, 422 invalid readings (every bad field named, by item
    index in a batch), 403 a reading for another device than the one a device key is bound to."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, _request_readings(), **kwargs)

    documented: F = Blueprint.doc(requestBody=REQUEST_BODY)(wrapper)
    return documented


def _request_readings() -> list[MeterReading | VehicleReading]:
    if request.mimetype != "application/json":
        abort(415, message="Content-Type must be application/json")
    try:
        body = loads_json(read_body(request, cache=False))
    except ValueError as exc:  # malformed, not UTF-8, nested too deeply, duplicate keys
        abort(400, message=f"Malformed JSON: {exc}")
    settings = current_app.extensions["fleet.settings"]
    try:
        batch = load_body(body, ReadingBounds.from_settings(settings), settings.max_batch)
    except ma.ValidationError as exc:
        abort(422, message="Invalid readings; nothing was stored", errors={"json": exc.messages})
    for reported in {r.meter_id if isinstance(r, MeterReading) else r.vehicle_id for r in batch}:
        check_device_access(reported)  # a key bound to one device may only report for it
    return batch


# --- the fast path ------------------------------------------------------------------------------------------
# Marshmallow costs ~60 us of CPU per reading (73 % of a worker's time on batches, profiled with py-spy in
# tests/load/bench_ingest.py). Bodies that are valid, which is nearly all of them, are checked here with the
# same rules in plain Python (~10 us); anything this path does not accept outright, it hands to marshmallow,
# which stays the one authority for what is rejected and how the error reads. It may only ever be narrower:
# tests/unit/test_ingest_fast_path.py checks that both paths agree on valid and invalid bodies.

_METER_KEYS = frozenset(("meterId", "kwhConsumedAc", "voltage", "timestamp"))
_VEHICLE_KEYS = frozenset(("vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "timestamp"))
_VEHICLE_KEYS_CHARGING = _VEHICLE_KEYS | {"isCharging"}


class _NotPlainlyValid(Exception):
    """Let marshmallow decide."""


def _number(value: Any, low: float, high: float) -> float:
    # type() rather than isinstance(): bool is an int subclass, and a boolean is not a number here.
    # NaN fails every comparison; a huge int fails the range before float() could overflow.
    if (type(value) is float or type(value) is int) and low <= value <= high:
        return float(value)
    raise _NotPlainlyValid


def _plain_id(value: Any) -> str:
    if (
        type(value) is str
        and 0 < len(value) <= DEVICE_ID_MAX_LENGTH
        and value.isprintable()
        and not any(ch.isspace() for ch in value)
    ):
        return value
    raise _NotPlainlyValid


def _plain_timestamp(value: Any, earliest: datetime, latest: datetime) -> datetime:
    if type(value) is not str or not value.isprintable():  # fromisoformat skips a NUL; api.fields.AwareDateTime not
        raise _NotPlainlyValid
    try:
        ts = datetime.fromisoformat(value)  # what marshmallow's "iso" format uses
    except ValueError:
        raise _NotPlainlyValid from None
    if ts.tzinfo is None or not earliest <= ts <= latest:
        raise _NotPlainlyValid
    return ts.astimezone(UTC)


def _plain_reading(item: Any, earliest: datetime, latest: datetime, max_kwh: float) -> MeterReading | VehicleReading:
    if type(item) is not dict or item.keys() != {"type", "payload"}:
        raise _NotPlainlyValid
    kind, p = item["type"], item["payload"]
    if type(p) is not dict:
        raise _NotPlainlyValid
    if kind == "METER" and p.keys() == _METER_KEYS:
        return MeterReading(
            _plain_id(p["meterId"]),
            _plain_timestamp(p["timestamp"], earliest, latest),
            _number(p["kwhConsumedAc"], 0.0, max_kwh),
            _number(p["voltage"], *VOLTAGE_RANGE),
        )
    if kind == "VEHICLE" and (p.keys() == _VEHICLE_KEYS or p.keys() == _VEHICLE_KEYS_CHARGING):
        charging = p.get("isCharging")
        if charging is not None and type(charging) is not bool:
            raise _NotPlainlyValid  # marshmallow also takes "true", 1, ...: its call
        return VehicleReading(
            _plain_id(p["vehicleId"]),
            _plain_timestamp(p["timestamp"], earliest, latest),
            _number(p["soc"], 0.0, 100.0),
            _number(p["kwhDeliveredDc"], 0.0, max_kwh),
            _number(p["batteryTemp"], *BATTERY_TEMP_RANGE),
            charging,
        )
    raise _NotPlainlyValid


def _load_valid_body(
    body: Any, bounds: ReadingBounds, max_items: int, now: datetime
) -> list[MeterReading | VehicleReading] | None:
    """The readings of a body that is plainly valid, else None (marshmallow then decides)."""
    items = [body] if type(body) is dict else body
    if type(items) is not list or not 0 < len(items) <= max_items:
        return None
    earliest, latest = now - bounds.max_age, now + bounds.max_future
    try:
        return [_plain_reading(item, earliest, latest, bounds.max_kwh) for item in items]
    except _NotPlainlyValid:
        return None
