"""The layers stay apart: db/, jobs/, cli/ and config/ load no Flask and import nothing from api/.

The CLI and the jobs run where no web server does (a cron box, an operator's laptop): loading Flask,
flask-smorest and prometheus_client there cost 0.6 s of every `fleet` command and tied the data layer to the web
framework. api/ is imported only by the WSGI entry point (`api:create_app()`, named in docker/gunicorn.conf.py).
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Packages that must work without the API.
NON_WEB_PACKAGES = ("cli", "config", "db", "jobs")
#: Modules that only the web side may load.
WEB_MODULES = ("api", "flask", "flask_smorest", "flask_limiter", "werkzeug", "webargs", "prometheus_client")


def _modules(package: str) -> list[str]:
    names = [package]
    for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
        # Alembic's env.py and the revisions run inside Alembic, not as importable modules.
        if not info.name.startswith("db.migrations"):
            names.append(info.name)
    return names


def _top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_non_web_packages_load_no_flask_and_no_api() -> None:
    modules = [name for package in NON_WEB_PACKAGES for name in _modules(package)]
    assert "cli.ops" in modules and "jobs.scheduler" in modules and "db.readings" in modules  # the walk found them
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    if name != 'cli.__main__':\n"
        "        importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    web = [m for m in loaded if m.split(".")[0] in WEB_MODULES]
    assert web == [], f"importing {', '.join(NON_WEB_PACKAGES)} loaded {web}"


def test_no_module_outside_api_imports_api() -> None:
    offenders = []
    for package in NON_WEB_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            wrong = _top_level_imports(path) & set(WEB_MODULES)
            if wrong:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(wrong)}")
    assert offenders == []


def test_the_web_side_still_imports_what_it_needs() -> None:
    """The scan above looks at the right names: the API's own modules do import Flask."""
    assert "flask" in _top_level_imports(ROOT / "api" / "__init__.py")


def test_every_api_blueprint_is_the_hardened_one() -> None:
    """Each blueprint of the app but the docs page's and the operator page's parses bodies strictly and bounds page
    numbers (api/blueprint.py). Building the app opens no connection: an unreachable URL is enough."""
    from api import create_app
    from api.blueprint import Blueprint as Hardened
    from config import Settings

    app = create_app(Settings.from_env({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}))
    plain = sorted(name for name, blp in app.blueprints.items() if not isinstance(blp, Hardened))
    assert len(app.blueprints) - len(plain) >= 7  # ops, ingest, devices, mappings, analytics, alerts, metrics
    # Swagger UI's page and files: no arguments, bodies or pages. The operator page (ui): HTML pages, not API
    # operations; it parses its queries with the API's schemas itself and answers a bad one with a 400 page.
    assert plain == ["api-docs", "docs_assets", "ui"]
