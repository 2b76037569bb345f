"""Alert settings and scan arguments: defaults, parsing, and refusals (no database)."""

from datetime import UTC, datetime, timedelta

import pytest

from config import ConfigError, Settings
from db import alerts


def test_alert_settings_defaults():
    s = Settings.from_env({})
    assert (s.alert_window_hours, s.correlation_window_hours) == (24, 1)
    assert (s.efficiency_alert_threshold, s.correlation_min_match_rate) == (0.85, 0.5)
    assert (s.alert_min_readings, s.alert_min_ac_kwh, s.silent_minutes) == (30, 1.0, 15)


def test_alert_settings_are_read():
    s = Settings.from_env(
        {
            "FLEET_ALERT_WINDOW_HOURS": "6",
            "FLEET_CORRELATION_WINDOW_HOURS": "2",
            "FLEET_CORRELATION_MIN_MATCH_RATE": "0.8",
            "FLEET_ALERT_MIN_READINGS": "10",
            "FLEET_ALERT_MIN_AC_KWH": "0",
            "FLEET_SILENT_MINUTES": "5",
        }
    )
    assert (s.alert_window_hours, s.correlation_window_hours, s.correlation_min_match_rate) == (6, 2, 0.8)
    assert (s.alert_min_readings, s.alert_min_ac_kwh, s.silent_minutes) == (10, 0.0, 5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLEET_ALERT_WINDOW_HOURS", "0"),
        ("FLEET_ALERT_WINDOW_HOURS", "745"),
        ("FLEET_ALERT_WINDOW_HOURS", "1.5"),
        ("FLEET_CORRELATION_WINDOW_HOURS", "0"),
        ("FLEET_CORRELATION_MIN_MATCH_RATE", "0"),
        ("FLEET_CORRELATION_MIN_MATCH_RATE", "1.2"),
        ("FLEET_CORRELATION_MIN_MATCH_RATE", "nan"),
        ("FLEET_ALERT_MIN_READINGS", "0"),
        ("FLEET_ALERT_MIN_AC_KWH", "-1"),
        ("FLEET_ALERT_MIN_AC_KWH", "inf"),
        ("FLEET_SILENT_MINUTES", "0"),
        ("FLEET_SILENT_MINUTES", "soon"),
    ],
)
def test_alert_settings_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": timedelta(minutes=90)},
        {"window": timedelta(0)},
        {"correlation_window": timedelta(hours=-1)},
        {"efficiency_threshold": 0},
        {"correlation_min_match_rate": 1.5},
        {"silent_minutes": 0},
        {"min_readings": 0},
        {"min_ac_kwh": -0.1},
        {"now": datetime(2026, 11, 26, 10, 0)},  # naive
    ],
)
def test_scan_refuses_bad_arguments_before_touching_the_database(kwargs):
    valid = {
        "window": timedelta(hours=24),
        "correlation_window": timedelta(hours=1),
        "efficiency_threshold": 0.85,
        "silent_minutes": 15,
        "min_readings": 30,
        "correlation_min_match_rate": 0.5,
        "min_ac_kwh": 1.0,
    }
    with pytest.raises(ValueError):
        alerts.scan(None, **{**valid, **kwargs})  # type: ignore[arg-type]  # None: refused before it is used


def test_scan_takes_its_thresholds_from_the_settings_only():
    """No second copy of the defaults in db/: scan() has none, the job passes the declared settings'."""
    import inspect

    from jobs.alerts import scan_parameters

    signature = inspect.signature(alerts.scan)
    thresholds = [name for name in signature.parameters if name not in ("conn", "now", "community")]
    assert all(signature.parameters[name].default is inspect.Parameter.empty for name in thresholds)
    assert sorted(scan_parameters(Settings.from_env({}))) == sorted(thresholds)
    assert scan_parameters(Settings.from_env({"FLEET_ALERT_WINDOW_HOURS": "6"}))["window"] == timedelta(hours=6)


def test_evaluation_window_is_whole_hours_before_now():
    now = datetime(2026, 11, 26, 10, 59, 59, tzinfo=UTC)
    assert alerts.evaluation_window(now, timedelta(hours=24)) == (
        datetime(2026, 11, 25, 10, tzinfo=UTC),
        datetime(2026, 11, 26, 10, tzinfo=UTC),
    )


def test_scan_stats_sum_the_kinds():
    t = datetime(2026, 11, 26, 10, tzinfo=UTC)
    stats = alerts.ScanStats(
        now=t,
        window_start=t,
        window_end=t,
        correlation_window_start=t,
        correlation_window_end=t,
        low_efficiency=alerts.KindStats(1, 2, 3),
        silent_device=alerts.KindStats(10, 20, 30),
    )
    assert (stats.opened, stats.refreshed, stats.resolved) == (11, 22, 33)
    assert list(stats.by_kind()) == ["low_efficiency", "correlation_lost", "silent_device"]
