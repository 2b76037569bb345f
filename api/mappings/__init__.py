"""Vehicle -> meter mapping administration: re-maps in time that never rewrite the past."""

from api.mappings.views import blp

__all__ = ["blp"]
