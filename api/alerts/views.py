from flask.views import MethodView

from api.alerts import service
from api.alerts.schemas import AlertQueryArgsSchema, AlertSchema
from api.auth import require_role
from api.blueprint import Blueprint
from api.read_routing import read_engine

blp = Blueprint(
    "alerts",
    __name__,
    url_prefix="/v1",
    description="Alerts raised by the alert scans (`fleet alerts scan`, the scheduler): one open alert per device and"
    " kind, resolved rather than deleted",
)


@blp.route("/alerts")
class Alerts(MethodView):
    @require_role("read")
    @blp.arguments(AlertQueryArgsSchema, location="query")
    @blp.response(200, AlertSchema(many=True))
    @blp.paginate()
    def get(self, args, pagination_parameters):
        """Alerts, newest opened first (default: the open ones); one page (totals in the X-Pagination header)."""
        page = pagination_parameters
        rows, page.item_count = service.list_alerts(read_engine(), args, page.page_size, page.first_item)
        return rows
