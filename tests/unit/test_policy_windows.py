"""The interval syntax of `fleet policies set` and the safety rules every policy change must pass."""

from datetime import timedelta

import pytest

from db.policies import RETENTION_MARGIN, Windows, check_windows, format_interval, parse_interval, refusal_reasons

DAY = timedelta(days=1)
DEFAULTS = Windows(
    hypertable="meter_readings",
    raw_retention=90 * DAY,
    compress_after=7 * DAY,
    rollup_retention=1095 * DAY,
    refresh_start=30 * DAY,
    refresh_end=timedelta(hours=1),
    refresh_every=timedelta(minutes=30),
)
MAX_AGE = 30 * DAY


def test_interval_syntax_round_trips():
    for text in ("90d", "1h", "30m", "45s", "1095d", "1d12h", "29d23h59m59s"):
        assert format_interval(parse_interval(text)) == text
    assert parse_interval("2w") == timedelta(days=14)
    assert parse_interval(" 90m ") == timedelta(hours=1, minutes=30)
    assert format_interval(timedelta(minutes=90)) == "1h30m"
    assert format_interval(None) is None


@pytest.mark.parametrize("bad", ["", "90", "d", "1.5d", "-3d", "3 months", "1y", "1d 12h", "0s", "36501d"])
def test_interval_syntax_rejects(bad):
    with pytest.raises(ValueError):
        parse_interval(bad)


def test_windows_defaults_are_safe_on_both_editions():
    assert check_windows(DEFAULTS, community=True, max_reading_age=MAX_AGE) == []
    assert check_windows(DEFAULTS, community=False, max_reading_age=MAX_AGE) == []


def test_windows_raw_retention_needs_the_margin_past_the_refresh_window():
    edge = Windows("meter_readings", raw_retention=30 * DAY + RETENTION_MARGIN, refresh_start=30 * DAY)
    assert check_windows(edge, community=True, max_reading_age=MAX_AGE) == []
    short = Windows(
        "meter_readings", raw_retention=30 * DAY + RETENTION_MARGIN - timedelta(seconds=1), refresh_start=30 * DAY
    )
    [(relation, reason)] = check_windows(short, community=True, max_reading_age=DAY)
    assert relation == "meter_readings"
    assert "rollups have not finished with" in reason and "--raw-retention 31d or more" in reason


def test_windows_apache_checks_only_raw_retention():
    # Refresh settings do not exist there: nothing about them is judged.
    w = Windows("vehicle_readings", raw_retention=40 * DAY, refresh_start=60 * DAY, refresh_end=61 * DAY)
    assert check_windows(w, community=False, max_reading_age=MAX_AGE) == []
    w = Windows("vehicle_readings", raw_retention=20 * DAY)
    assert len(check_windows(w, community=False, max_reading_age=MAX_AGE)) == 1


def test_windows_refresh_schedule_must_see_each_hour_twice():
    w = Windows("meter_readings", refresh_start=3 * DAY, refresh_end=timedelta(hours=1), refresh_every=DAY)
    assert check_windows(w, community=True, max_reading_age=timedelta(days=1)) == []
    w = Windows("meter_readings", refresh_start=3 * DAY, refresh_end=timedelta(hours=1), refresh_every=2 * DAY)
    [(relation, reason)] = check_windows(w, community=True, max_reading_age=timedelta(days=1))
    assert relation == "meter_readings_1h"
    assert "fewer than two runs" in reason


def test_refusal_reasons_name_every_relation_once():
    problems = [("meter_readings", "too short"), ("vehicle_readings", "too short"), ("meter_readings_1h", "other")]
    assert refusal_reasons(problems) == ["meter_readings, vehicle_readings: too short", "meter_readings_1h: other"]
