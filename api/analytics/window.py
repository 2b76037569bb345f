"""Analytics windows: whole hours, bounded in length, with the documented defaults."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOUR = timedelta(hours=1)
DEFAULT_LENGTH = timedelta(hours=24)


@dataclass(frozen=True)
class Window:
    """[start, end), both on the hour, in UTC."""

    start: datetime
    end: datetime


class WindowError(ValueError):
    """A window the API refuses; `field` is the query parameter to blame."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def floor_hour(t: datetime) -> datetime:
    """The start of the hour `t` is in (UTC)."""
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def ceil_hour(t: datetime) -> datetime:
    """`t` if it is on the hour, else the start of the next hour (UTC)."""
    floor = floor_hour(t)
    return floor if floor == t else floor + HOUR


def resolve_window(start: datetime | None, end: datetime | None, *, now: datetime, max_days: int) -> Window:
    """The window to report: defaults filled in, widened to whole hours, checked (WindowError)."""
    if start is not None and end is not None and start >= end:
        raise WindowError("startDate", "must be before endDate")
    if start is None and end is None:
        end_h = floor_hour(now) + HOUR  # up to the end of the current hour, which is included
        return Window(end_h - DEFAULT_LENGTH, end_h)
    if start is None:
        assert end is not None
        end_h = ceil_hour(end)
        return Window(end_h - DEFAULT_LENGTH, end_h)
    start_h = floor_hour(start)
    end_h = start_h + DEFAULT_LENGTH if end is None else ceil_hour(end)
    if end_h - start_h > timedelta(days=max_days):
        raise WindowError("endDate", f"the window may span at most {max_days} days")
    return Window(start_h, end_h)
