from flask import current_app
from flask.views import MethodView

from api.auth import require_role
from api.blueprint import Blueprint
from api.mappings import service
from api.mappings.schemas import MappingQueryArgsSchema, MappingSchema, NewMappingSchema

blp = Blueprint("mappings", __name__, url_prefix="/v1", description="Which meter feeds which vehicle, and when")


@blp.route("/mappings")
class Mappings(MethodView):
    @require_role("admin")
    @blp.arguments(NewMappingSchema)
    @blp.response(201, MappingSchema)
    @blp.alt_response(200, schema=MappingSchema, success=True, description="Already mapped to this meter: no change")
    @blp.alt_response(409, response="CONFLICT", description="validFrom would rewrite the past")
    @blp.alt_response(400, response="BAD_REQUEST", description="Malformed JSON")
    @blp.alt_response(415, response="UNSUPPORTED_MEDIA_TYPE", description="A body that is not application/json")
    @blp.alt_response(413, response="REQUEST_ENTITY_TOO_LARGE", description="Body larger than FLEET_MAX_BODY_BYTES")
    def post(self, new):
        """Re-map a vehicle to a meter from validFrom on, closing its current mapping there."""
        result = service.remap(
            current_app.extensions["fleet.db"], new["vehicle_id"], new["meter_id"], new["valid_from"]
        )
        return result.mapping, (201 if result.created else 200)

    @require_role("read")
    @blp.arguments(MappingQueryArgsSchema, location="query")
    @blp.response(200, MappingSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Mapping history by vehicle then validFrom, or the mappings in effect at an instant; one page."""
        page = pagination_parameters
        rows, page.item_count = service.list_mappings(
            current_app.extensions["fleet.db"], args, page.page_size, page.first_item
        )
        return rows
