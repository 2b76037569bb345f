"""Domain errors raised by the data layer; the API maps them to HTTP problems in one place."""


class NotFound(LookupError):
    """The device, key or mapping asked for does not exist."""


class Conflict(ValueError):
    """The change contradicts what is stored (e.g. a mapping that would rewrite the past)."""
