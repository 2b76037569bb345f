"""Logging and metrics pieces that need no database: redaction, request ids, the JSON pipeline, gunicorn's
access line, the multiprocess directory, and the settings that drive them."""

from __future__ import annotations

import io
import json
import logging
import types
from datetime import timedelta

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector

from api import logging_setup, metrics
from api.logging_setup import GunicornLogger, redact, valid_request_id
from config import ConfigError, Settings

KEY = "fk_AbCdEfGh" + "x1Y2z3" * 5 + "Q-_"  # 43 characters after the marker, like a real key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} refused", "key fk_AbCdEfGh...[redacted] refused"),
        ("display prefix fk_AbCdEfGh is fine", "display prefix fk_AbCdEfGh is fine"),
        ("postgresql+psycopg://fleet:s3cr%40t@db:5432/fleet", "postgresql+psycopg://fleet:***@db:5432/fleet"),
        ("redis://:hunter2@cache:6379/0", "redis://:***@cache:6379/0"),
        ("host=db user=fleet password=hunter2 dbname=x", "host=db user=fleet password=*** dbname=x"),
        ("postgresql://fleet@db/fleet", "postgresql://fleet@db/fleet"),
        ("meter_readings_meter_id_fkey violated", "meter_readings_meter_id_fkey violated"),
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("0f8e2c1a-9b7d-4c3e-8f1a-2b3c4d5e6f70", True),
        ("edge:7f3a.42_b~+/=", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        (None, False),
        ("two words", False),
        ("<script>", False),
        (KEY, False),
    ],
)
def test_valid_request_id(value, kept):
    assert valid_request_id(value) is kept


def _json_logger(name: str) -> tuple[logging.Logger, io.StringIO]:
    """A logger writing through the configured pipeline's formatter and filters into a buffer."""
    config = logging_setup.logging_config("INFO")
    handler = logging.StreamHandler(io.StringIO())
    fmt = dict(config["formatters"]["json"])
    handler.setFormatter(fmt.pop("()")(**fmt))
    handler.addFilter(logging_setup.RequestIdFilter())
    handler.addFilter(logging_setup.RedactSecretsFilter())
    log = logging.getLogger(name)
    log.propagate = False
    log.handlers = [handler]
    log.setLevel(logging.INFO)
    return log, handler.stream


def test_json_lines_carry_the_request_id_and_redact_message_args_extras_and_tracebacks():
    log, out = _json_logger("tests.unit.json")
    token = logging_setup.request_id_var.set("rid-123")
    try:
        try:
            raise ValueError(f"cannot connect to postgresql://u:topsecret@db/x with {KEY}")
        except ValueError:
            log.exception("failed for %s", KEY, extra={"dsn": "password=topsecret", "device_type": "meter"})
    finally:
        logging_setup.request_id_var.reset(token)
    text = out.getvalue()
    line = json.loads(text)
    assert line["request_id"] == "rid-123" and line["level"] == "ERROR" and line["logger"] == "tests.unit.json"
    assert line["message"] == "failed for fk_AbCdEfGh...[redacted]"
    assert line["dsn"] == "password=***" and line["device_type"] == "meter"
    assert "ValueError" in line["exc_info"] and "u:***@db" in line["exc_info"]
    assert KEY not in text and "topsecret" not in text


def _gunicorn_logger(accesslog: str | None = "-") -> GunicornLogger:
    cfg = types.SimpleNamespace(accesslog=accesslog, loglevel="info")
    glog = GunicornLogger.__new__(GunicornLogger)  # setup() would configure the whole process's logging
    glog.cfg = cfg
    glog.error_log, glog.access_log = logging.getLogger("tests.unit.gerror"), _json_logger("tests.unit.access")[0]
    return glog


def test_gunicorn_access_line_has_the_request_id_and_no_request_header():
    glog = _gunicorn_logger()
    resp = types.SimpleNamespace(status="401 UNAUTHORIZED", sent=181, headers=[("X-Request-ID", "abc123")])
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v1/telemetry/ingest",
        "QUERY_STRING": "",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_X_API_KEY": KEY,
        "HTTP_AUTHORIZATION": "Bearer secret-token",
        "HTTP_COOKIE": "session=secret-cookie",
    }
    req = types.SimpleNamespace(headers=[("X-API-KEY", KEY), ("AUTHORIZATION", "Bearer secret-token")])
    glog.access(resp, req, environ, timedelta(milliseconds=12))
    text = glog.access_log.handlers[0].stream.getvalue()
    line = json.loads(text)
    assert line["request_id"] == "abc123"
    assert (line["method"], line["path"], line["status"], line["bytes"]) == ("POST", "/v1/telemetry/ingest", 401, 181)
    assert line["duration_ms"] == 12.0 and line["message"] == '"POST /v1/telemetry/ingest" 401 12.0ms'
    for secret in (KEY, "fk_AbCdEfGh", "secret-token", "secret-cookie"):
        assert secret not in text


def test_gunicorn_access_line_off_without_accesslog():
    glog = _gunicorn_logger(accesslog=None)
    resp = types.SimpleNamespace(status="200 OK", sent=2, headers=[])
    glog.access(resp, None, {"REQUEST_METHOD": "GET", "PATH_INFO": "/health"}, timedelta(0))
    assert glog.access_log.handlers[0].stream.getvalue() == ""


def test_reset_multiprocess_dir_removes_only_sample_files(tmp_path):
    directory = tmp_path / "prom"
    assert metrics.reset_multiprocess_dir(str(directory)) == 0 and directory.is_dir()
    for name in ("counter_1.db", "gauge_livesum_1.db", "histogram_2.db"):
        (directory / name).write_bytes(b"x")
    (directory / "README").write_text("not ours")
    assert metrics.reset_multiprocess_dir(str(directory)) == 3
    assert [p.name for p in directory.iterdir()] == ["README"]


def test_settings_metrics_access_and_log_level():
    assert Settings.from_env({}).metrics_access == "public"
    assert Settings.from_env({"FLEET_METRICS": " Admin "}).metrics_access == "admin"
    assert Settings.from_env({"FLEET_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="FLEET_METRICS"):
        Settings.from_env({"FLEET_METRICS": "yes"})
    with pytest.raises(ConfigError, match="FLEET_LOG_LEVEL"):
        Settings.from_env({"FLEET_LOG_LEVEL": "LOUD"})


def _worker_file(directory, name: str, samples: dict[tuple[str, str, str], float]) -> None:
    """A sample file as a worker writes it: (metric, sample name, device_type) -> value."""
    mmap = MmapedDict(str(directory / name))
    for (metric, sample, device_type), val in samples.items():
        mmap.write_value(mmap_key(metric, sample, ["device_type"], [device_type], "help"), val, 0.0)
    mmap.close()


def _totals(directory) -> dict[tuple[str, str], float]:
    return {
        (s.name, s.labels.get("device_type", "")): s.value
        for family in MultiProcessCollector(None, path=str(directory)).collect()
        for s in family.samples
    }


def test_exited_workers_are_folded_into_the_archive_and_still_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    stored = ("fleet_readings_stored", "fleet_readings_stored_total")
    _worker_file(tmp_path, "counter_101.db", {(*stored, "meter"): 5, (*stored, "vehicle"): 1})
    _worker_file(tmp_path, "counter_102.db", {(*stored, "meter"): 7})
    _worker_file(tmp_path, "gauge_livesum_101.db", {("fleet_db_pool_size", "fleet_db_pool_size", ""): 4})
    before = _totals(tmp_path)
    assert before[("fleet_readings_stored_total", "meter")] == 12

    metrics.mark_worker_dead(101)
    metrics.mark_worker_dead(102)
    metrics.mark_worker_dead(103)  # exited before writing anything

    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db"]
    after = _totals(tmp_path)
    assert after[("fleet_readings_stored_total", "meter")] == 12
    assert after[("fleet_readings_stored_total", "vehicle")] == 1
    assert ("fleet_db_pool_size", "") not in after  # a live gauge leaves with its process


def test_a_log_call_with_bad_arguments_is_logged_not_raised():
    log, out = _json_logger("tests.unit.badargs")
    log.info("%d readings from %s", "many", KEY)  # a bug in a log call must not fail the request
    line = json.loads(out.getvalue())
    assert "do not fit the format" in line["message"] and KEY not in line["message"]
