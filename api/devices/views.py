from flask.views import MethodView

from api.auth import require_role
from api.blueprint import Blueprint
from api.devices import service
from api.devices.schemas import MeterQueryArgsSchema, MeterStatusSchema, VehicleQueryArgsSchema, VehicleStatusSchema
from api.read_routing import read_engine

blp = Blueprint(
    "devices", __name__, url_prefix="/v1", description="Current status of meters and vehicles; fleet listings"
)


@blp.route("/meters")
class Meters(MethodView):
    @require_role("read")
    @blp.arguments(MeterQueryArgsSchema, location="query")
    @blp.response(200, MeterStatusSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Meters ordered by id, filtered; one page (totals in the X-Pagination header)."""
        page = pagination_parameters
        rows, page.item_count = service.list_meters(read_engine(), args, page.page_size, page.first_item)
        return rows


@blp.route("/meters/<meter_id>")
class MeterById(MethodView):
    @require_role("read")
    @blp.response(200, MeterStatusSchema)
    @blp.alt_response(404, response="NOT_FOUND", description="The meter never reported")
    def get(self, meter_id):
        """Current status of one meter: its newest reading."""
        return service.get_meter(read_engine(), meter_id)


@blp.route("/vehicles")
class Vehicles(MethodView):
    @require_role("read")
    @blp.arguments(VehicleQueryArgsSchema, location="query")
    @blp.response(200, VehicleStatusSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Vehicles ordered by id, filtered; one page (totals in the X-Pagination header)."""
        page = pagination_parameters
        rows, page.item_count = service.list_vehicles(read_engine(), args, page.page_size, page.first_item)
        return rows


@blp.route("/vehicles/<vehicle_id>")
class VehicleById(MethodView):
    @require_role("read")
    @blp.response(200, VehicleStatusSchema)
    @blp.alt_response(404, response="NOT_FOUND", description="The vehicle never reported")
    def get(self, vehicle_id):
        """Current status of one vehicle: its newest reading."""
        return service.get_vehicle(read_engine(), vehicle_id)
