"""The history, current-state and mapping tables on both engines.

Tests that write run in `db_conn`: one transaction rolled back at the end, nothing to truncate."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from db import edition
from tests.conftest import is_community

T0 = datetime(2026, 3, 1, 23, 59, tzinfo=UTC)


def test_schema_hypertables_have_their_chunk_intervals(engine):
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT hypertable_name, column_name, time_interval FROM timescaledb_information.dimensions"
                " WHERE hypertable_schema = 'public' ORDER BY hypertable_name"
            )
        ).all()
    assert [(r.hypertable_name, r.column_name, r.time_interval) for r in rows] == [
        ("meter_readings", "recorded_at", timedelta(days=1)),
        ("vehicle_correlation_1h", "bucket", timedelta(days=30)),  # 240,000 rows a day at fleet scale
        ("vehicle_readings", "recorded_at", timedelta(days=1)),
    ]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("meter_readings", ["meter_id", "recorded_at"]),
        ("vehicle_readings", ["vehicle_id", "recorded_at"]),
        ("meters_current", ["meter_id"]),
        ("vehicles_current", ["vehicle_id"]),
        ("vehicle_meter_mapping", ["vehicle_id", "valid_from"]),
    ],
)
def test_schema_unique_keys(engine, table, key):
    with engine.connect() as conn:
        pk = sa.inspect(conn).get_pk_constraint(table)
    assert pk["constrained_columns"] == key


def _insert_meter(conn, meter_id, recorded_at, kwh, *, idempotent):
    sql = "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES (:m, :t, :k, 230)"
    if idempotent:
        sql += " ON CONFLICT (meter_id, recorded_at) DO NOTHING"
    return conn.execute(sa.text(sql), {"m": meter_id, "t": recorded_at, "k": kwh}).rowcount


def test_schema_same_device_and_time_twice_keeps_one_row(db_conn):
    first = _insert_meter(db_conn, "m-dup", T0, 0.5, idempotent=True)
    second = _insert_meter(db_conn, "m-dup", T0, 0.9, idempotent=True)
    # Same instant written in another time zone is the same reading.
    third = _insert_meter(db_conn, "m-dup", T0.astimezone(tz=None).replace(), 0.7, idempotent=True)
    rows = db_conn.execute(sa.text("SELECT kwh_consumed_ac FROM meter_readings WHERE meter_id = 'm-dup'")).all()
    assert (first, second, third) == (1, 0, 0)
    assert [r.kwh_consumed_ac for r in rows] == [0.5]


def test_schema_plain_duplicate_insert_is_refused(db_conn):
    _insert_meter(db_conn, "m-dup2", T0, 0.5, idempotent=False)
    with pytest.raises(IntegrityError, match="meter_readings_pkey"), db_conn.begin_nested():
        _insert_meter(db_conn, "m-dup2", T0, 0.5, idempotent=False)


def test_schema_readings_spread_over_daily_chunks(db_conn):
    for day in range(3):
        _insert_meter(db_conn, "m-chunks", T0 + timedelta(days=day), 0.1, idempotent=True)
    chunks = db_conn.execute(
        sa.text(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'meter_readings'"
            " AND range_start <= :t1 AND range_end > :t0"
        ),
        {"t0": T0, "t1": T0 + timedelta(days=2)},
    ).scalar_one()
    assert chunks == 3


@pytest.mark.parametrize(
    ("table", "row", "constraint"),
    [
        ("meter_readings", {"id": "m", "kwh": -0.1}, "kwh_consumed_ac_nonnegative"),
        ("meter_readings", {"id": "", "kwh": 0.1}, "meter_id_length"),
        ("meter_readings", {"id": "m" * 65, "kwh": 0.1}, "meter_id_length"),
    ],
)
def test_schema_check_constraints_refuse_impossible_readings(db_conn, table, row, constraint):
    with pytest.raises(IntegrityError, match=constraint), db_conn.begin_nested():
        _insert_meter(db_conn, row["id"], T0, row["kwh"], idempotent=True)


def test_schema_vehicle_soc_outside_0_100_refused(db_conn):
    sql = sa.text(
        "INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)"
        " VALUES ('v', :t, :soc, 0.1, 25)"
    )
    with pytest.raises(IntegrityError, match="soc_range"), db_conn.begin_nested():
        db_conn.execute(sql, {"t": T0, "soc": 100.5})


def test_schema_mapping_validity_cannot_overlap(db_conn):
    insert = sa.text(
        "INSERT INTO vehicle_meter_mapping (vehicle_id, meter_id, valid_from, valid_to) VALUES ('v1', :m, :f, :t)"
    )
    db_conn.execute(insert, {"m": "m1", "f": T0, "t": T0 + timedelta(hours=5)})
    # Adjacent (half-open ranges) is fine: the re-map of a vehicle to another charger.
    db_conn.execute(insert, {"m": "m2", "f": T0 + timedelta(hours=5), "t": None})
    with pytest.raises(IntegrityError, match="vehicle_meter_mapping_no_overlap"), db_conn.begin_nested():
        db_conn.execute(insert, {"m": "m3", "f": T0 + timedelta(hours=4), "t": T0 + timedelta(hours=6)})


def test_schema_edition_matches_engine(engine, engine_kind):
    with engine.connect() as conn:
        info = edition.describe(conn)
    assert info.embedded is (engine_kind == "embedded")
    assert info.license == ("timescale" if is_community(engine_kind) else "apache")
    assert info.community is is_community(engine_kind)
