"""Grafana's provisioning (docker/grafana/) as the tests read it, and what Grafana does to a panel's SQL before
the database sees it.

Two steps turn a dashboard's rawSql into the statement PostgreSQL runs, and `expand` repeats both:
1. the browser replaces template variables (public/app/features/plugins/sql/datasource/SqlDatasource.ts,
   `interpolateVariable`): a single-valued variable's value goes in as it is, its quotes doubled, and not quoted
   (the SQL writes `'$vehicle'`);
2. the PostgreSQL data source's backend expands macros (pkg/tsdb/grafana-postgresql-datasource/macros.go): a
   `$__name(args)` with args split on commas and trimmed; `$__timeFilter(col)` is
   `col BETWEEN '<from>' AND '<to>'`, both ends inclusive, times in UTC as Go's RFC3339Nano writes them;
   `$__timeFrom()` and `$__timeTo()` are those quoted times; `$__timeGroup(col, 1h)` is
   `time_bucket('3600.000s',col)` on a data source with `timescaledb: true`, else
   `floor(extract(epoch from col)/3600)*3600`; `$__timeGroupAlias` adds ` AS "time"`. An unknown macro is an
   error there, and so it is here.
Only those macros are accepted: any other `$__...`, or a `$name` left over, is a MacroError.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
GRAFANA = ROOT / "docker" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "fleet.yaml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "fleet.yaml"
DASHBOARD = GRAFANA / "dashboards" / "fleet.json"

#: The macros a dashboard here may use (a subset of Grafana's: no epoch-number macros, the rollups are timestamptz).
MACROS = frozenset({"__timeFilter", "__timeFrom", "__timeTo", "__timeGroup", "__timeGroupAlias"})
# Grafana's own pattern for a macro call (macros.go: sExpr).
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
# A template variable as Grafana's template service finds it: $name or ${name}.
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
# Intervals as gtime.ParseInterval reads them (the units a dashboard here might use).
_INTERVAL = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


class MacroError(ValueError):
    """SQL that Grafana would refuse, or that uses a macro or variable this dashboard may not use."""


@dataclass(frozen=True)
class Query:
    """One SQL query of the dashboard: a panel's target, or a query variable's."""

    title: str  # the panel's title, or `variable <name>`
    sql: str
    format: str  # table or time_series
    raw: bool  # rawQuery: the SQL is used as written (not built by the query builder)
    datasources: tuple[dict[str, Any], ...]  # the panel's reference and the target's, as written


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel with queries, including those inside a collapsed row; rows themselves are left out."""
    found = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            found.extend(panels({"panels": panel.get("panels", [])}))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    """Every panel target and every query variable of the dashboard."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append(
                Query(
                    title=panel["title"],
                    sql=target.get("rawSql", ""),
                    format=target.get("format", ""),
                    raw=target.get("rawQuery") is True,
                    datasources=(panel.get("datasource") or {}, target.get("datasource") or {}),
                )
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            sql = query if isinstance(query, str) else query.get("rawSql", "")
            found.append(Query(f"variable {variable['name']}", sql, "table", True, (variable.get("datasource") or {},)))
    return found


def rfc3339nano(t: datetime) -> str:
    """`t` in UTC as Go's time.RFC3339Nano writes it: no fraction when it is zero, trailing zeros dropped, `Z`."""
    utc = t.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_interval(text: str) -> timedelta:
    """An interval such as `1h` or `'5m'` (quotes allowed, as Grafana trims them)."""
    match = _INTERVAL.fullmatch(text.strip("'"))
    if match is None:
        raise MacroError(f"error parsing interval {text}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _go_float(value: float) -> str:
    """A float as Go's %v writes one (shortest form; whole numbers without a point)."""
    return str(int(value)) if value == int(value) else repr(value)


def _macro(name: str, args: list[str], time_from: datetime, time_to: datetime, timescaledb: bool) -> str:
    if name not in MACROS:
        raise MacroError(f"unknown macro {name!r}: this dashboard may use only {sorted(MACROS)}")
    start, end = rfc3339nano(time_from), rfc3339nano(time_to)
    if name == "__timeFilter":
        if not args[0]:
            raise MacroError(f"missing time column argument for macro {name}")
        return f"{args[0]} BETWEEN '{start}' AND '{end}'"
    if name == "__timeFrom":
        return f"'{start}'"
    if name == "__timeTo":
        return f"'{end}'"
    if len(args) < 2:
        raise MacroError(f"macro {name} needs time column and interval and optional fill value")
    if len(args) > 2:
        raise MacroError(f"macro {name}: fill modes change the result frame, which these tests do not model")
    seconds = parse_interval(args[1]).total_seconds()
    if timescaledb:
        group = f"time_bucket('{seconds:.3f}s',{args[0]})"
    else:
        group = f"floor(extract(epoch from {args[0]})/{_go_float(seconds)})*{_go_float(seconds)}"
    return group + (' AS "time"' if name == "__timeGroupAlias" else "")


def expand_macros(sql: str, time_from: datetime, time_to: datetime, *, timescaledb: bool) -> str:
    """Grafana's PostgreSQL macro expansion of `sql` for the range [time_from, time_to]."""

    def replace(match: re.Match[str]) -> str:
        name, args = match.group(1), [arg.strip(" ") for arg in match.group(2).split(",")]
        # Grafana reads `$__timeGroup(...)` followed by a comma as the pre-5.3 form of $__timeGroupAlias.
        if name == "__timeGroup" and sql[match.end() : match.end() + 1] == ",":
            name = "__timeGroupAlias"
        return _macro(name, args, time_from, time_to, timescaledb)

    return _MACRO.sub(replace, sql)


def interpolate_variables(sql: str, variables: dict[str, str]) -> str:
    """Single-valued template variables as Grafana's SQL data sources put them in: quotes doubled, unquoted.
    Anything else that looks like a variable is left for the macro step (and its check) to find."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables[name].replace("'", "''") if name in variables else match.group(0)

    return _VARIABLE.sub(replace, sql)


def expand(sql: str, time_from: datetime, time_to: datetime, variables: dict[str, str], *, timescaledb: bool) -> str:
    """The statement the database gets for `sql` over [time_from, time_to] with `variables`; MacroError if the
    SQL uses a macro or variable that is not known here."""
    expanded = expand_macros(interpolate_variables(sql, variables), time_from, time_to, timescaledb=timescaledb)
    leftover = re.search(r"\$\{?\w+", expanded)
    if leftover:
        raise MacroError(f"{leftover.group(0)!r} is neither a known macro nor a variable of this test")
    return expanded
