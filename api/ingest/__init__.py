"""Device readings in: `POST /v1/telemetry/ingest`."""

from apispec import APISpec

from api.ingest.views import blp

__all__ = ["blp", "register_schemas"]


def register_schemas(spec: APISpec) -> None:
    """Nothing left to register: apispec makes components of the payload schemas from the request body itself
    (api.ingest.schemas.REQUEST_BODY) when the blueprint is registered. Kept until create_app stops calling it."""
