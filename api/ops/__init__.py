"""Liveness and readiness for load balancers and orchestrators."""

from api.ops.views import blp

__all__ = ["blp"]
