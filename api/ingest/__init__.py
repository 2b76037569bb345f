"""Device readings in: `POST /v1/telemetry/ingest`."""

from api.ingest.views import blp

__all__ = ["blp"]
