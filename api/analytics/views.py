from flask import current_app
from flask.views import MethodView

from api.analytics import service
from api.analytics.schemas import FleetQueryArgsSchema, FleetVehicleSchema, PerformanceSchema, WindowQueryArgsSchema
from api.auth import require_role
from api.blueprint import Blueprint
from api.read_routing import read_engine

blp = Blueprint(
    "analytics",
    __name__,
    url_prefix="/v1/analytics",
    description="Charger efficiency: AC drawn from the grid vs DC delivered into batteries, per hour and per vehicle",
)


@blp.route("/performance/<vehicle_id>")
class VehiclePerformance(MethodView):
    @require_role("read")
    @blp.arguments(WindowQueryArgsSchema, location="query")
    @blp.response(200, PerformanceSchema)
    @blp.alt_response(404, response="NOT_FOUND", description="The vehicle never reported and was never mapped")
    def get(self, args, vehicle_id):
        """Hour-by-hour AC/DC energy, efficiency and battery temperature of one vehicle (default: last 24 h).

        Each hour's AC is that of the meter mapped to the vehicle at the start of the hour; readings are summed
        per hour, never paired by timestamp. `correlation` shows how well the two clocks agree.
        """
        return service.vehicle_performance(read_engine(), vehicle_id, args["window"])


@blp.route("/fleet")
class FleetPerformance(MethodView):
    @require_role("read")
    @blp.arguments(FleetQueryArgsSchema, location="query")
    @blp.response(200, FleetVehicleSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Per-vehicle totals and efficiency over a window, sorted and paged; flags vehicles below the threshold."""
        page = pagination_parameters
        settings = current_app.extensions["fleet.settings"]
        rows, page.item_count = service.fleet_performance(
            read_engine(),
            args["window"],
            sort=args["sort"],
            below_threshold=args["below_threshold"],
            threshold=settings.efficiency_alert_threshold,
            limit=page.page_size,
            offset=page.first_item,
        )
        return rows
