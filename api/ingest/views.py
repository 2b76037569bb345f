from dataclasses import asdict
from datetime import timedelta

import marshmallow as ma
from flask import current_app, request
from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import check_device_access, require_role
from api.blueprint import loads_json, read_body
from api.ingest import schemas, service
from api.problems import PROBLEM_JSON, ProblemSchema

blp = Blueprint("ingest", __name__, url_prefix="/v1/telemetry", description="Device readings")

_ITEM = {
    "type": "object",
    "required": ["type", "payload"],
    "properties": {
        "type": {"type": "string", "enum": ["METER", "VEHICLE"]},
        "payload": {
            "oneOf": [{"$ref": "#/components/schemas/MeterPayload"}, {"$ref": "#/components/schemas/VehiclePayload"}]
        },
    },
}
#: Error answers are problem documents (documented with that content type, not flask-smorest's application/json).
_PROBLEM = {"schema": ProblemSchema, "content_type": PROBLEM_JSON}
INGEST_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"oneOf": [_ITEM, {"type": "array", "items": _ITEM, "minItems": 1}]},
        }
    },
}


def _parse_json_body():
    if request.mimetype != "application/json":
        abort(415, message="Content-Type must be application/json")
    try:
        return loads_json(read_body(request, cache=False))
    except ValueError as exc:  # malformed, not UTF-8, nested too deeply, duplicate keys
        abort(400, message=f"Malformed JSON: {exc}")


@blp.route("/ingest")
class Ingest(MethodView):
    @require_role("device")
    @blp.doc(requestBody=INGEST_REQUEST_BODY)
    @blp.response(200, schemas.IngestResultSchema)
    @blp.alt_response(400, description="Malformed JSON", **_PROBLEM)
    @blp.alt_response(413, description="Body larger than FLEET_MAX_BODY_BYTES", **_PROBLEM)
    @blp.alt_response(415, description="Not application/json", **_PROBLEM)
    @blp.alt_response(
        422, description="Invalid readings: errors name each field (and item index in a batch)", **_PROBLEM
    )
    def post(self):
        """Store one reading or a batch (JSON array); retried readings are counted as duplicates, not stored twice."""
        settings = current_app.extensions["fleet.settings"]
        window = schemas.TimeWindow(
            max_future=timedelta(seconds=settings.clock_skew_seconds),
            max_age=timedelta(days=settings.max_reading_age_days),
        )
        try:
            batch = schemas.load_body(_parse_json_body(), window, settings.max_batch)
        except ma.ValidationError as exc:
            abort(422, message="Invalid readings; nothing was stored", errors={"json": exc.messages})
        for device_id in service.device_ids(batch):  # a key bound to one device may only report for it
            check_device_access(device_id)
        return asdict(service.ingest(current_app.extensions["fleet.db"], batch))
