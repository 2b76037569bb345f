"""A demo fleet: device ids, vehicle i mapped to meter i, and the demo's API keys (data layer, no Flask).

The platform keeps no device registry: a meter or vehicle exists through its readings, its mappings and the
keys that may report for it. Seeding a demo fleet therefore means

- naming the devices (`device_ids`: `<prefix>meter-00001`, `<prefix>vehicle-00001`, ...; the simulator in
  jobs/simulator.py derives the same ids from the same prefix and counts);
- mapping vehicle i to meter i through db.mappings (`seed_mappings`), valid from the start of the previous
  hour: the analytics join each hour's AC through the mapping in effect at the start of that hour, so a
  mapping that started "a few minutes ago" would leave the current hour without AC;
- issuing the demo's API keys (`issue_demo_keys`).

Idempotent: a vehicle already mapped to its demo meter is left as it is; a vehicle with any other mapping
history (an operator re-mapped it) is left alone and reported, never re-mapped by the seed. Keys cannot be
shown again (only hashes are stored), so each run *rotates* them instead: the active keys the previous run
created under the same names are revoked and new ones issued, leaving exactly one active key per demo role.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from db import keys, mappings
from db.errors import Conflict
from db.schema import DEVICE_ID_MAX_LENGTH, vehicle_meter_mapping

#: Digits of the device number in demo ids (zero-padded so ids sort in numeric order; 10,000 devices fit).
ID_DIGITS = 5
#: Most meters (or vehicles) one demo fleet may have: the design's fleet size per device kind.
MAX_DEVICES = 10_000
#: Longest prefix that leaves room for "vehicle-NNNNN" within the device id limit.
MAX_PREFIX_LENGTH = DEVICE_ID_MAX_LENGTH - len("vehicle-") - ID_DIGITS
#: The demo's keys: role -> what the key is for (part of its name, so a re-run finds the keys it rotates).
DEMO_KEYS = {"device": "simulator", "read": "dashboard", "admin": "admin"}
_KEY_NAME_SUFFIX = " (fleet demo seed)"


def meter_id(prefix: str, number: int) -> str:
    """Id of demo meter `number` (1-based)."""
    return f"{prefix}meter-{number:0{ID_DIGITS}d}"


def vehicle_id(prefix: str, number: int) -> str:
    """Id of demo vehicle `number` (1-based); it charges on meter `number` when that meter exists."""
    return f"{prefix}vehicle-{number:0{ID_DIGITS}d}"


def check_prefix(prefix: str) -> None:
    """ValueError unless `prefix` makes valid device ids (printable, no spaces, short enough)."""
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ValueError(f"prefix must be at most {MAX_PREFIX_LENGTH} characters")
    if not prefix.isprintable() or any(ch.isspace() for ch in prefix):
        raise ValueError("prefix must contain only printable characters and no spaces")


def device_ids(prefix: str, meters: int, vehicles: int) -> tuple[list[str], list[str]]:
    """The demo's meter ids and vehicle ids; vehicle i and meter i form a charger pair for i <= min(counts)."""
    check_prefix(prefix)
    for name, count in (("meters", meters), ("vehicles", vehicles)):
        if not 0 <= count <= MAX_DEVICES:
            raise ValueError(f"{name} must be 0 to {MAX_DEVICES}")
    return [meter_id(prefix, i) for i in range(1, meters + 1)], [vehicle_id(prefix, i) for i in range(1, vehicles + 1)]


def demo_key_name(prefix: str, role: str) -> str:
    """Name of the demo key with `role`: what it is for, and that `fleet demo seed` made it."""
    return f"{prefix}{DEMO_KEYS[role]}{_KEY_NAME_SUFFIX}"


@dataclass(frozen=True)
class SkippedVehicle:
    """A vehicle the seed left alone: it has a mapping history the seed did not create."""

    vehicle_id: str
    wanted_meter_id: str
    current_meter_id: str | None


@dataclass(frozen=True)
class MappingSeed:
    """What `seed_mappings` did, per vehicle."""

    valid_from: datetime
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[SkippedVehicle] = field(default_factory=list)


def default_valid_from(conn: Connection) -> datetime:
    """The start of the previous hour, by the database's clock."""
    now: datetime = conn.execute(sa.select(sa.func.now())).scalar_one()
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)


def seed_mappings(
    conn: Connection, prefix: str, meters: int, vehicles: int, valid_from: datetime | None = None
) -> MappingSeed:
    """Map demo vehicle i to demo meter i (for i up to the smaller count) from `valid_from` (default: the
    start of the previous hour); idempotent, see the module docstring. One transaction (the caller's)."""
    meter_ids, vehicle_ids = device_ids(prefix, meters, vehicles)
    pairs = list(zip(vehicle_ids, meter_ids, strict=False))
    valid_from = valid_from or default_valid_from(conn)
    result = MappingSeed(valid_from=valid_from)
    history = _mapping_history(conn, [v for v, _ in pairs])
    for vehicle, meter in pairs:
        rows = history.get(vehicle, [])
        open_meter = next((m for m, to in rows if to is None), None)
        if open_meter == meter:
            result.unchanged.append(vehicle)
            continue
        if rows:
            result.skipped.append(SkippedVehicle(vehicle, meter, open_meter))
            continue
        try:
            # remap_vehicle takes the vehicle's lock and re-reads its history: a concurrent seed that mapped
            # it first makes this a no-op; an operator's mapping in between makes it a Conflict (no write).
            remap = mappings.remap_vehicle(conn, vehicle, meter, valid_from)
        except Conflict:
            result.skipped.append(SkippedVehicle(vehicle, meter, None))
            continue
        (result.created if remap.created else result.unchanged).append(vehicle)
    return result


def _mapping_history(conn: Connection, vehicle_ids: Sequence[str]) -> dict[str, list[tuple[str, datetime | None]]]:
    """(meter_id, valid_to) of every mapping row of these vehicles, in one query."""
    if not vehicle_ids:
        return {}
    t = vehicle_meter_mapping
    rows = conn.execute(
        sa.select(t.c.vehicle_id, t.c.meter_id, t.c.valid_to).where(
            t.c.vehicle_id == sa.any_(sa.bindparam("ids", list(vehicle_ids), type_=sa.ARRAY(sa.Text)))
        )
    )
    history: dict[str, list[tuple[str, datetime | None]]] = {}
    for row in rows:
        history.setdefault(row.vehicle_id, []).append((row.meter_id, row.valid_to))
    return history


@dataclass(frozen=True)
class DemoKey:
    """A key issued by the seed, with its plaintext (shown once)."""

    key: keys.ApiKey
    plaintext: str


@dataclass(frozen=True)
class KeySeed:
    """The demo's new keys by role, and the ids of the previous demo keys this run revoked."""

    issued: dict[str, DemoKey]
    revoked: list[int]


def issue_demo_keys(conn: Connection, prefix: str) -> KeySeed:
    """Revoke the active keys a previous seed with this prefix issued, and issue one key per demo role:
    an unbound device key (the simulator reports for every demo device), a read key and an admin key."""
    check_prefix(prefix)
    names = {demo_key_name(prefix, role): role for role in DEMO_KEYS}
    revoked = [keys.revoke_key(conn, k.id).id for k in keys.list_keys(conn) if k.active and names.get(k.name) == k.role]
    issued = {}
    for name, role in names.items():
        key, plaintext = keys.create_key(conn, name, role)
        issued[role] = DemoKey(key, plaintext)
    return KeySeed(issued=issued, revoked=revoked)
