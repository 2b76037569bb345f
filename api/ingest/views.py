from flask import current_app
from flask.views import MethodView

from api.auth import require_role
from api.blueprint import Blueprint
from api.ingest import service
from api.ingest.schemas import IngestResultSchema, readings_body
from api.problems import PROBLEM_JSON, ProblemSchema

# Not strict about the query string: a query parameter filters nothing here, and devices in the field (firmware
# that adds `?source=gw-1`, say) must not start failing; listings and analytics are where a typo misleads.
blp = Blueprint("ingest", __name__, url_prefix="/v1/telemetry", description="Device readings", strict_query=False)

#: Error answers are problem documents (documented with that content type, not flask-smorest's application/json).
_PROBLEM = {"schema": ProblemSchema, "content_type": PROBLEM_JSON}


@blp.route("/ingest")
class Ingest(MethodView):
    @require_role("device")
    @readings_body
    @blp.response(200, IngestResultSchema)
    @blp.alt_response(400, description="Malformed JSON", **_PROBLEM)
    @blp.alt_response(413, description="Body larger than FLEET_MAX_BODY_BYTES", **_PROBLEM)
    @blp.alt_response(415, description="Not application/json", **_PROBLEM)
    @blp.alt_response(
        422, description="Invalid readings: errors name each field (and item index in a batch)", **_PROBLEM
    )
    def post(self, batch):
        """Store one reading or a batch (JSON array); retried readings are counted as duplicates, not stored twice."""
        return service.ingest(current_app.extensions["fleet.db"], batch)
