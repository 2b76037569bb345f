"""`fleet alerts scan|list`: alert evaluation now (the job is jobs/alerts.py `scan_alerts`) and the alerts.

Exit codes: 0 done, 1 the configuration or the database failed (message on stderr), 2 bad usage (click).
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import click

from cli.support import cli_engine, click_errors, emit, load_settings, setting_option, transaction
from db import alerts
from db.schema import ALERT_KINDS, POLICY_ALERT_KIND
from jobs.alerts import scan_alerts


def _when(t: datetime | None) -> str:
    return "-" if t is None else t.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")


@click.group("alerts")
def alerts_group() -> None:
    """Alerts: low charger efficiency, lost vehicle/meter correlation, silent devices."""


@alerts_group.command("scan")
@setting_option("--window-hours", "alert_window_hours", "Complete hours over which efficiency is judged")
@setting_option(
    "--correlation-window-hours", "correlation_window_hours", "Complete hours over which correlation is judged"
)
@setting_option("--threshold", "efficiency_alert_threshold", "Efficiency below which a vehicle is alerted")
@setting_option("--silent-minutes", "silent_minutes", "Minutes without a reading that make a device silent")
@setting_option("--min-readings", "alert_min_readings", "Readings a vehicle needs in a window to be judged")
@setting_option(
    "--min-match-rate", "correlation_min_match_rate", "Share of readings that must line up with the meter's"
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def alerts_scan(as_json: bool, **overrides: Any) -> None:
    """Evaluate every alert condition now: open, refresh and resolve alerts; print what changed.

    Safe to re-run, and to run while the scheduler (`fleet jobs run`) scans too: scans take turns.
    Options override the FLEET_* settings for this run only.
    """
    settings = dataclasses.replace(load_settings(), **{k: v for k, v in overrides.items() if v is not None})
    engine = cli_engine(settings)
    try:
        with click_errors("scan alerts"):
            stats = scan_alerts(engine, settings)
    finally:
        engine.dispose()
    if as_json:
        emit(True, dataclasses.asdict(stats), "")
        return
    lines = [
        f"scanned at {_when(stats.now)}: efficiency over {_when(stats.window_start)} - {_when(stats.window_end)},"
        f" correlation over {_when(stats.correlation_window_start)} - {_when(stats.correlation_window_end)}",
        f"{'kind':<18} {'opened':>7} {'refreshed':>10} {'resolved':>9}",
    ]
    for kind, counts in stats.by_kind().items():
        lines.append(f"{kind:<18} {counts.opened:>7} {counts.refreshed:>10} {counts.resolved:>9}")
    click.echo("\n".join(lines))


def _summary(alert: alerts.Alert) -> str:
    d = alert.details
    if alert.kind == "low_efficiency" and d.get("efficiency") is not None:
        return f"efficiency {float(d['efficiency']):.1%} < {float(d['threshold']):.0%}"
    if alert.kind == "correlation_lost" and d.get("matchRate") is not None:
        offset = d.get("medianOffsetSeconds")
        offset_text = "no meter reading nearby" if offset is None else f"median offset {float(offset):+.1f} s"
        return f"match rate {float(d['matchRate']):.0%}, {offset_text}"
    if alert.kind == POLICY_ALERT_KIND:
        on = f" on {d['relation']}" if d.get("relation") else ""
        return f"{d.get('procName')}{on}: last run by {d.get('lastRunBy')} failed: {d.get('error')}"
    if alert.kind == "silent_device" and d.get("silentMinutes") is not None:
        return f"silent {float(d['silentMinutes']):.0f} min"
    return ""


@alerts_group.command("list")
@click.option(
    "--status",
    type=click.Choice(alerts.ALERT_STATUSES),
    default="open",
    show_default=True,
    help="Open, resolved, or all alerts.",
)
@click.option("--kind", type=click.Choice(ALERT_KINDS), default=None, help="Only alerts of this kind.")
@click.option("--device", "device_id", default=None, help="Only alerts of this meter or vehicle id.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True, help="Most alerts shown.")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True, help="Alerts skipped first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def alerts_list(status: str, kind: str | None, device_id: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List alerts, newest opened first (default: the open ones)."""
    with transaction(load_settings(), "list alerts") as conn:
        found, total = alerts.list_alerts(
            conn,
            status=status,  # type: ignore[arg-type]  # checked by click.Choice
            kind=kind,
            device_id=device_id,
            limit=limit,
            offset=offset,
        )
    if as_json:
        emit(True, {"total": total, "alerts": [dataclasses.asdict(a) for a in found]}, "")
        return
    if not found:
        click.echo(f"no {'' if status == 'all' else status + ' '}alerts" + (f" ({total} in all)" if total else ""))
        return
    header = f"{'id':>6}  {'kind':<16}  {'device':<30}  {'opened':<17}  {'last seen':<17}  {'resolved':<17}  details"
    lines = [header]
    for a in found:
        device = f"{a.device_type} {a.device_id}"
        lines.append(
            f"{a.id:>6}  {a.kind:<16}  {device:<30}  {_when(a.opened_at):<17}  {_when(a.last_seen_at):<17}"
            f"  {_when(a.resolved_at):<17}  {_summary(a)}"
        )
    lines.append(f"{offset + 1}-{offset + len(found)} of {total}")
    click.echo("\n".join(lines))
