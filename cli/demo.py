"""`fleet demo seed`: a demo fleet's mappings and API keys, printed once with URLs to try.

The data work is in db/demo.py; this module parses options, runs it in one transaction and prints.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict
from typing import Any

import click

from cli.support import emit, load_settings, transaction
from db import demo

DEFAULT_URL = "http://127.0.0.1:8000"


@click.group("demo")
def demo_group() -> None:
    """A demo fleet to try the platform with (see also `fleet simulate`)."""


@demo_group.command("seed")
@click.option("--meters", type=click.IntRange(0, demo.MAX_DEVICES), default=20, show_default=True)
@click.option("--vehicles", type=click.IntRange(0, demo.MAX_DEVICES), default=20, show_default=True)
@click.option("--prefix", default="demo-", show_default=True, help="Start of every demo device id.")
@click.option("--url", default=DEFAULT_URL, show_default=True, help="The API's URL, for the examples printed.")
@click.option("--no-keys", is_flag=True, help="Only the mappings: keep the demo's current keys.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (includes the keys).")
def seed(meters: int, vehicles: int, prefix: str, url: str, no_keys: bool, as_json: bool) -> None:
    """Map demo vehicle i to demo meter i and issue the demo's API keys (printed once).

    Safe to re-run: mappings already in place are kept (and a vehicle an operator re-mapped is left alone);
    the demo keys are rotated: the previous run's keys are revoked and new ones printed."""
    try:
        demo.check_prefix(prefix)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    with transaction(load_settings(), "seed the demo") as conn:
        mapped = demo.seed_mappings(conn, prefix, meters, vehicles)
        issued = None if no_keys else demo.issue_demo_keys(conn, prefix)
    data = _report(prefix, meters, vehicles, url.rstrip("/"), mapped, issued)
    emit(as_json, data, _human(data) if not as_json else "")


def _report(
    prefix: str, meters: int, vehicles: int, url: str, mapped: demo.MappingSeed, issued: demo.KeySeed | None
) -> dict[str, Any]:
    meter_ids, vehicle_ids = demo.device_ids(prefix, meters, vehicles)
    vehicle = vehicle_ids[0] if vehicle_ids else None
    meter = meter_ids[0] if meter_ids else None
    urls = {"api": url, "docs": f"{url}/docs", "health": f"{url}/health"}
    if vehicle:
        urls["performance"] = f"{url}/v1/analytics/performance/{vehicle}"
        urls["vehicle_status"] = f"{url}/v1/vehicles/{vehicle}"
    if meter:
        urls["meter_status"] = f"{url}/v1/meters/{meter}"
    urls["fleet"] = f"{url}/v1/analytics/fleet"
    return {
        "prefix": prefix,
        "meters": meters,
        "vehicles": vehicles,
        "first_meter_id": meter,
        "first_vehicle_id": vehicle,
        "mappings": {
            "valid_from": mapped.valid_from.isoformat(),
            "created": len(mapped.created),
            "unchanged": len(mapped.unchanged),
            "skipped": [asdict(s) for s in mapped.skipped],
        },
        "keys": None
        if issued is None
        else {
            role: {"id": k.key.id, "name": k.key.name, "key_prefix": k.key.key_prefix, "key": k.plaintext}
            for role, k in issued.issued.items()
        },
        "revoked_key_ids": [] if issued is None else issued.revoked,
        "urls": urls,
    }


def _human(data: dict[str, Any]) -> str:
    m = data["mappings"]
    pairs = min(data["meters"], data["vehicles"])
    extra = (
        f"; {data['vehicles'] - pairs} vehicles without a demo meter"
        if data["vehicles"] > pairs
        else f"; {data['meters'] - pairs} meters without a vehicle"
        if data["meters"] > pairs
        else ""
    )
    lines = [
        f"demo fleet {data['prefix']!r}: {data['meters']} meters, {data['vehicles']} vehicles"
        + (f" ({data['first_vehicle_id']} charges on {data['first_meter_id']}, and so on{extra})" if pairs else ""),
        f"mappings from {m['valid_from']}: {m['created']} created, {m['unchanged']} already in place,"
        f" {len(m['skipped'])} left alone (re-mapped by an operator)",
    ]
    lines += [
        f"  {s['vehicle_id']}: wanted {s['wanted_meter_id']}, mapped to {s['current_meter_id'] or '(none now)'}"
        for s in m["skipped"][:10]
    ]
    urls = data["urls"]
    keys = data["keys"]
    if keys is None:
        lines.append("API keys: kept (--no-keys)")
    else:
        revoked = f"; revoked the previous demo keys {data['revoked_key_ids']}" if data["revoked_key_ids"] else ""
        lines.append(f"API keys (shown once: only their hashes are stored{revoked}):")
        lines += [f"  {role:<6} {k['key']}  ({k['name']})" for role, k in keys.items()]
    lines += ["", "try:"]
    if keys is not None:
        lines.append(
            f"  fleet simulate --url {urls['api']} --key {keys['device']['key']}"
            f" --meters {data['meters']} --vehicles {data['vehicles']} --prefix {shlex.quote(data['prefix'])}"
            " --interval 5 --duration 0"
        )
    read = keys["read"]["key"] if keys else "<read key>"
    for name in ("performance", "vehicle_status", "fleet"):
        if name in urls:
            lines.append(f"  curl -H 'X-API-Key: {read}' {urls[name]}")
    lines.append(f"  API docs: {urls['docs']}")
    return "\n".join(lines)
