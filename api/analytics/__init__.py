"""Charger efficiency analytics: one vehicle's hour-by-hour performance, and the fleet overview."""

from api.analytics.views import blp

__all__ = ["blp"]
