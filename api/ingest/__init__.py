"""Device readings in: `POST /v1/telemetry/ingest`."""

from apispec import APISpec

from api.ingest.schemas import MeterPayloadSchema, VehiclePayloadSchema
from api.ingest.views import blp

__all__ = ["blp", "register_schemas"]


def register_schemas(spec: APISpec) -> None:
    """The payload schemas the hand-written request body refers to (it is a oneOf: object or array)."""
    spec.components.schema("MeterPayload", schema=MeterPayloadSchema)
    spec.components.schema("VehiclePayload", schema=VehiclePayloadSchema)
