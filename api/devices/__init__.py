"""Current status of meters and vehicles, and fleet listings for dashboards (from the hot tables)."""

from api.devices.views import blp

__all__ = ["blp"]
