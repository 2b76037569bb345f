"""One copy of each rule (issue 15): the edition check lives in db/edition.py, the correlation statement in
db/correlation.py, and the statements that need them embed those copies instead of writing their own."""

from __future__ import annotations

from pathlib import Path

from db import alerts, analytics, correlation, edition, mappings, readings

DB = Path(edition.__file__).parent


def test_edition_check_written_only_in_db_edition():
    # Migrations import no app code, so they keep their own copies (and are not the runtime check).
    versions = DB / "migrations" / "versions"
    writers = sorted(
        str(path.relative_to(DB))
        for path in DB.rglob("*.py")
        if versions not in path.parents and "timescaledb.license" in path.read_text()
    )
    assert writers == ["edition.py"]


def test_edition_fragment_embedded_in_the_statements_that_check_inline():
    # Embedded, not a round trip of their own: the ingest statements, a re-map, the analytics probe.
    for sql in (readings._METER_DUAL_WRITE_SQL, readings._VEHICLE_DUAL_WRITE_SQL):
        assert edition.COMMUNITY_SQL in sql
    assert edition.COMMUNITY_SQL in mappings._INVALIDATE_FROM.text
    assert edition.COMMUNITY_SQL in analytics._VEHICLE_PROBE.text
    assert edition.COMMUNITY_SQL == "current_setting('timescaledb.license') = 'timescale'"


def test_correlation_statement_shared_by_alerts_and_analytics():
    # The alerts' evaluation wraps the window statement for every vehicle; the analytics report's is the same
    # window statement filtered to one vehicle (correlation.vehicle_window).
    assert correlation.WINDOW_ALL_SQL in alerts._CORRELATION_LOST.text
    assert "percentile_cont" not in alerts._CORRELATION_LOST.text.replace(correlation.WINDOW_ALL_SQL, "")
    assert "percentile_cont" in correlation._WINDOW_ONE.text
