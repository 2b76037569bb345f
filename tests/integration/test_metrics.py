"""GET /metrics: through the Flask test client on both engines (one process: prometheus_client's default
registry, so tests compare values before and after), and under a real gunicorn with two workers on the native
engine (multiprocess mode: counters add up over workers, the directory is emptied at start)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import port_for
import pytest
from prometheus_client import REGISTRY
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.pool import QueuePool

from api import create_app
from config import Settings
from tests.integration.gunicorn_server import gunicorn, http, parent_pid
from tests.support.api import keyed_client, new_key
from tests.support.builders import meter_reading, vehicle_reading

URL = "/v1/telemetry/ingest"
INGEST_OK = {"endpoint": "ingest.Ingest", "method": "POST", "status_class": "2xx"}
pytestmark = pytest.mark.app(FLEET_MAX_BODY_BYTES="65536")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (sample name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "text/plain"
    return parse(resp.get_data(as_text=True))


def test_metrics_count_stored_and_duplicates_by_device_type(make_client):
    client = make_client("device")
    before = scrape(client)
    batch = [meter_reading("mx-1"), meter_reading("mx-2"), vehicle_reading("vx-1")]
    assert client.post(URL, json=batch).get_json() == {"received": 3, "stored": 3, "duplicates": 0}
    again = client.post(URL, json=[*batch, meter_reading("mx-3")])
    assert again.get_json() == {"received": 4, "stored": 1, "duplicates": 3}
    after = scrape(client)

    def delta(name: str, device_type: str) -> float:
        return value(after, name, device_type=device_type) - value(before, name, device_type=device_type)

    assert delta("fleet_readings_stored_total", "meter") == 3
    assert delta("fleet_readings_stored_total", "vehicle") == 1
    assert delta("fleet_readings_duplicates_total", "meter") == 2
    assert delta("fleet_readings_duplicates_total", "vehicle") == 1


def test_metrics_count_rejections_by_status_and_reason(make_app):
    app = make_app("device")
    client = app.test_client()
    before = scrape(client)
    assert client.post(URL, json={"type": "METER", "payload": {}}).status_code == 422
    assert client.post(URL, json={"type": "METER", "payload": {}}).status_code == 422
    assert client.post(URL, data="type=METER", content_type="application/x-www-form-urlencoded").status_code == 415
    assert client.post(URL, data='{"pad": "' + "x" * 70000 + '"}', content_type="application/json").status_code == 413
    assert client.post(URL, data='{"type": ', content_type="application/json").status_code == 400
    assert keyed_client(app, "fk_" + "W" * 43).post(URL, json=meter_reading("mx-9")).status_code == 401
    after = scrape(client)

    def delta(status: str, reason: str) -> float:
        labels = {"endpoint": "ingest.Ingest", "status": status, "reason": reason}
        return value(after, "fleet_requests_rejected_total", **labels) - value(
            before, "fleet_requests_rejected_total", **labels
        )

    assert delta("422", "validation") == 2
    assert delta("415", "unsupported_media_type") == 1
    assert delta("413", "too_large") == 1
    assert delta("400", "bad_request") == 1
    assert delta("401", "auth") == 1


def test_metrics_latency_histogram_is_per_endpoint_without_device_ids(make_client):
    client = make_client("device")
    labels = {"endpoint": "ingest.Ingest", "method": "POST", "status_class": "2xx"}
    before = scrape(client)
    for i in range(3):
        reading = meter_reading("device-id-that-must-not-be-a-label", minutes_ago=i + 1)
        assert client.post(URL, json=reading).status_code == 200
    assert client.get("/no/such/route").status_code == 404
    after = scrape(client)

    name = "fleet_http_request_duration_seconds"
    assert value(after, f"{name}_count", **labels) - value(before, f"{name}_count", **labels) == 3
    assert value(after, f"{name}_sum", **labels) > value(before, f"{name}_sum", **labels)
    assert value(after, f"{name}_bucket", le="+Inf", **labels) == value(after, f"{name}_count", **labels)
    unmatched = {"endpoint": "unmatched", "method": "GET", "status_class": "4xx"}
    assert value(after, f"{name}_count", **unmatched) - value(before, f"{name}_count", **unmatched) == 1
    label_values = {v for (_, labelset) in after for (_, v) in labelset}
    assert "device-id-that-must-not-be-a-label" not in label_values
    assert "/no/such/route" not in label_values


def test_metrics_are_exempt_from_rate_limits(make_client):
    client = make_client("device", FLEET_RATE_LIMIT="3/minute")
    before = scrape(client)
    statuses = [client.post(URL, json=meter_reading("mx-rl", minutes_ago=i + 1)).status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]  # the scrape above did not use up any of the key's 3
    for _ in range(10):
        scrape(client)  # asserts 200 each time, well past the key's limit
    after = scrape(client)
    labels = {"endpoint": "ingest.Ingest", "status": "429", "reason": "rate_limited"}
    rejected = "fleet_requests_rejected_total"
    assert value(after, rejected, **labels) - value(before, rejected, **labels) == 1


def test_metrics_count_a_database_outage_as_unavailable_but_not_readiness_answers():
    port = port_for.select_random()  # nothing listens there: every connection is refused at once
    settings = Settings.from_env({"DATABASE_URL": f"postgresql://fleet@127.0.0.1:{port}/fleet"})
    app = create_app(settings)
    client = app.test_client()
    try:
        before = scrape(client)
        assert keyed_client(app, "fk_" + "D" * 43).post(URL, json=meter_reading("mx-down")).status_code == 503
        assert client.get("/ready").status_code == 503  # the readiness document, not a refusal
        after = scrape(client)
    finally:
        app.extensions["fleet.db"].dispose()

    def delta(endpoint: str) -> float:
        labels = {"endpoint": endpoint, "status": "503", "reason": "unavailable"}
        rejected = "fleet_requests_rejected_total"
        return value(after, rejected, **labels) - value(before, rejected, **labels)

    assert delta("ingest.Ingest") == 1
    assert delta("ops.Ready") == 0


def test_metrics_access_public_read_admin_off(make_app, clean_db):
    read_key, admin_key, device_key = new_key(clean_db, "read"), new_key(clean_db, "admin"), new_key(clean_db)

    public = make_app().test_client()
    assert public.get("/metrics").status_code == 200

    admin_only = make_app(FLEET_METRICS="admin")
    assert admin_only.test_client().get("/metrics").status_code == 401
    assert keyed_client(admin_only, read_key).get("/metrics").status_code == 403
    assert keyed_client(admin_only, admin_key).get("/metrics").status_code == 200

    read = make_app(FLEET_METRICS="read")
    assert keyed_client(read, device_key).get("/metrics").status_code == 403
    assert keyed_client(read, read_key).get("/metrics").status_code == 200

    off = make_app(FLEET_METRICS="off")
    assert off.test_client().get("/metrics").status_code == 404
    assert "/metrics" not in off.test_client().get("/openapi.json").get_json()["paths"]


def test_metrics_db_pool_gauges_follow_the_pool(client, clean_db):
    pool = clean_db.pool
    size = pool.size() if isinstance(pool, QueuePool) else 0  # the embedded engine runs on a NullPool
    idle = scrape(client)
    assert value(idle, "fleet_db_pool_size") == size
    assert value(idle, "fleet_db_pool_connections_in_use") == 0
    with clean_db.connect():
        if size:
            busy = value(scrape(client), "fleet_db_pool_connections_in_use")
        else:
            # NullPool, the embedded engine: read this process's gauge, not /metrics, whose policy query would wait
            # for the connection held here (that engine serves one client at a time; a second waits up to 60 s).
            busy = REGISTRY.get_sample_value("fleet_db_pool_connections_in_use")
    assert busy == (1 if size else 0)
    assert value(scrape(client), "fleet_db_pool_connections_in_use") == 0


def test_metrics_include_process_metrics(client):
    samples = scrape(client)
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "process_cpu_seconds_total") > 0


# --- a real gunicorn with two workers -------------------------------------------------------------------------


def _stale_files(directory: Path) -> list[Path]:
    """What a previous server, long gone, left behind: 1000 stored meter readings and a live pool gauge."""
    counter = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key(
        "fleet_readings_stored",
        "fleet_readings_stored_total",
        ["device_type"],
        ["meter"],
        "Readings stored (new), by device type.",
    )
    counter.write_value(key, 1000.0, 0.0)
    counter.close()
    gauge = MmapedDict(str(directory / "gauge_livesum_999999.db"))
    gauge.write_value(mmap_key("fleet_db_pool_size", "fleet_db_pool_size", [], [], "stale"), 50.0, 0.0)
    gauge.close()
    return [directory / "counter_999999.db", directory / "gauge_livesum_999999.db"]


def _stored_by_pid(directory: Path) -> dict[int, float]:
    """Meter readings stored, per worker process, from the workers' own counter files."""
    out: dict[int, float] = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, val, _ts, _pos in MmapedDict.read_all_values_from_file(str(path)):
            if '"fleet_readings_stored_total"' in key and '"meter"' in key:
                out[pid] = out.get(pid, 0.0) + val
    return out


def _worker_pids(samples: Samples) -> set[int]:
    return {int(dict(labels)["pid"]) for (name, labels) in samples if name == "process_resident_memory_bytes"}


def _scrapes(url: str, n: int) -> Iterable[Samples]:
    for _ in range(n):
        reply = http(url + "/metrics")
        assert reply.status == 200
        yield parse(reply.body.decode())


@pytest.mark.native
def test_metrics_add_up_over_gunicorn_workers(clean_db, tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    stale = _stale_files(metrics_dir)
    key = new_key(clean_db)
    env = {
        "DATABASE_URL": clean_db.url.render_as_string(hide_password=False),
        "FLEET_DB_POOL_SIZE": "4",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    with gunicorn(env, tmp_path / "gunicorn.log", workers=2, threads=2) as server:
        assert not any(p.exists() for p in stale), "the multiprocess directory was not emptied at start"

        # Readings posted over many connections at once, until both workers have stored some.
        stored = 0
        batches = 0

        def post(i: int) -> int:
            items = [meter_reading(f"gm-{i}-{j}", minutes_ago=1) for j in range(5)]
            reply = http(server.url + URL, items, key=key)
            assert reply.status == 200, reply.body
            return reply.json()["stored"]

        with ThreadPoolExecutor(max_workers=8) as pool:
            # Until both workers have stored some (a worker's file exists, with 0, before its first request).
            while sum(v > 0 for v in _stored_by_pid(metrics_dir).values()) < 2 or batches < 40:
                assert batches < 400, f"the two workers did not both take requests: {_stored_by_pid(metrics_dir)}"
                stored += sum(pool.map(post, range(batches, batches + 20)))
                batches += 20
        assert stored == batches * 5
        by_pid = _stored_by_pid(metrics_dir)
        assert len(by_pid) == 2 and sum(by_pid.values()) == stored and all(v > 0 for v in by_pid.values())

        # Whichever worker answers the scrape, it reports both workers' readings (and not the stale 1000).
        scrapes = list(_scrapes(server.url, 6))
        for samples in scrapes:
            assert value(samples, "fleet_readings_stored_total", device_type="meter") == stored
            assert value(samples, "fleet_http_request_duration_seconds_count", **INGEST_OK) == batches
            assert value(samples, "fleet_db_pool_size") == 8  # 2 live workers x FLEET_DB_POOL_SIZE 4
            assert len(_worker_pids(samples)) == 2
        workers = _worker_pids(scrapes[-1])
        assert all(parent_pid(pid) == server.proc.pid for pid in workers)

        # A worker exits (gunicorn recycles workers too): its readings stay counted (its files are folded into
        # the archive files), its pool gauge goes.
        gone = min(workers)
        os.kill(gone, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while True:
            samples = next(_scrapes(server.url, 1))
            pids = _worker_pids(samples)
            # The replacement shows in the process metrics as soon as it writes a sample; its pool gauge once its
            # app is built (CI saw the 4 of the survivor alone in between).
            if gone not in pids and len(pids) == 2 and value(samples, "fleet_db_pool_size") == 8:
                break
            assert time.monotonic() < deadline, f"no replacement worker with its pool: {pids}"
            time.sleep(0.2)
        assert value(samples, "fleet_readings_stored_total", device_type="meter") == stored
        assert value(samples, "fleet_http_request_duration_seconds_count", **INGEST_OK) == batches
        assert not list(metrics_dir.glob(f"*_{gone}.db"))
        assert (metrics_dir / "counter_archive.db").exists() and (metrics_dir / "histogram_archive.db").exists()
