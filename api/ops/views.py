from flask import current_app
from flask.views import MethodView

from api import admission
from api.blueprint import Blueprint
from api.ops import service
from api.ops.schemas import HealthSchema, ReadinessSchema

# Not strict about the query string: load balancers and probes may add parameters of their own to /health and
# /ready (tests/integration/test_hostile_input.py), which carry no filter a typo could defeat.
blp = Blueprint("ops", __name__, description="Liveness and readiness", strict_query=False)


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    def get(self):
        """The process is up (no dependency is checked)."""
        return {"status": "ok"}


@blp.route("/ready")
class Ready(MethodView):
    @blp.response(200, ReadinessSchema)
    @blp.alt_response(503, schema=ReadinessSchema, description="Not ready: database down or schema not at head")
    def get(self):
        """Ready to serve: database reachable, schema at head; reports the TimescaleDB edition, and whether this
        worker is shedding load. An overloaded node stays ready: it still serves what it can, and taking it out of
        rotation would move its whole load onto its peers."""
        result = service.readiness(current_app.extensions["fleet.db"])
        result["overload"] = admission.overload()
        result["replica"] = current_app.extensions["fleet.read_router"].describe()
        return result, (200 if result["ready"] else 503)
