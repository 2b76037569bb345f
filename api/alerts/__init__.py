"""Alerts for dashboards and operators: low charger efficiency, lost correlation, silent devices."""

from api.alerts.views import blp

__all__ = ["blp"]
