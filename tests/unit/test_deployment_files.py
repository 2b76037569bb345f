"""docker/Dockerfile and docker/compose.yaml, checked without Docker (it cannot run on our machines): the image
runs as a non-root user, installs the tested versions, and every file and `fleet` command the two files name
exists; the compose stack migrates before the API, the scheduler and Grafana's login start, and Grafana starts
once its login exists. Grafana's provisioning files themselves: tests/integration/test_grafana_panels.py."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
CONSTRAINTS = ROOT / "docker" / "constraints.txt"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#"))
    )
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip()) for ln in text.splitlines() if ln.strip()]


def _args(instruction: str, value: str) -> list[str]:
    """An exec-form (JSON) or shell-form command as a list of words."""
    if instruction == "HEALTHCHECK":
        value = value.split("CMD", 1)[1].strip()
    return json.loads(value) if value.startswith("[") else shlex.split(value)


def assert_fleet_command_exists(argv: list[str]) -> None:
    """`fleet a b ...` must name an existing command of the CLI (options and arguments are not checked)."""
    assert argv[0] == "fleet", argv
    command: click.Command = main
    for word in argv[1:]:
        if word.startswith("-") or not isinstance(command, click.Group):
            break
        assert word in command.commands, f"`{' '.join(argv)}`: `{word}` is not a subcommand of `{command.name}`"
        command = command.commands[word]
    assert not isinstance(command, click.Group), f"`{' '.join(argv)}` names a group, not a command"


def test_dockerfile_base_image_and_non_root_user():
    instructions = dockerfile_instructions()
    # The image is the last stage (earlier ones, if any, only build files it copies).
    assert [value for name, value in instructions if name == "FROM"][-1] == "python:3.11-slim"
    users = [value for name, value in instructions if name == "USER"]
    assert users, "the image must switch to a non-root user"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(value for name, value in instructions if name == "RUN")
    assert re.search(rf"useradd\b[^&]*\s{re.escape(user)}\b", created), f"user {user} is never created"


def test_dockerfile_copies_only_files_that_exist_and_bakes_in_no_secret():
    instructions = dockerfile_instructions()
    stages = {value.split()[-1] for name, value in instructions if name == "FROM" and " AS " in value.upper()}
    for name, value in instructions:
        if name == "COPY":
            *sources, _dest = value.split()
            if sources[0].startswith("--from="):  # from an earlier build stage, not from the repository
                assert sources[0].removeprefix("--from=") in stages, f"COPY {sources[0]}: no such stage"
                continue
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        if name in ("ENV", "ARG"):
            assert not re.search(r"PASSWORD|SECRET|DATABASE_URL|API_KEY|TOKEN", value, re.IGNORECASE), value
    # No package index of its own: pip uses its default configuration.
    assert not re.search(
        r"--(extra-)?index-url|--find-links|https?://", DOCKERFILE.read_text().replace("http://127.0.0.1", "")
    )


def test_dockerfile_commands_exist():
    instructions = dockerfile_instructions()
    cmd = [value for name, value in instructions if name == "CMD"][-1]
    assert_fleet_command_exists(_args("CMD", cmd))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["fleet"] == "cli:main"
    assert (ROOT / "docker" / "gunicorn.conf.py").is_file()  # what `fleet serve` runs gunicorn with
    healthcheck = [value for name, value in instructions if name == "HEALTHCHECK"]
    assert healthcheck and "/health" in healthcheck[0]
    compile(_args("HEALTHCHECK", healthcheck[0])[2], "HEALTHCHECK", "exec")  # python -c "<valid Python>"


def test_constraints_pin_every_runtime_dependency_at_the_version_pyproject_pins():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = dict(
        re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?==(\S+)", dep).groups()
        for dep in pyproject["project"]["dependencies"]
    )
    constraints = dict(ln.split("==") for ln in CONSTRAINTS.read_text().splitlines() if ln and not ln.startswith("#"))

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    constraints = {canonical(n): v for n, v in constraints.items()}
    for name, version in pinned.items():
        assert constraints.get(canonical(name)) == version, (
            f"{name}: pyproject {version}, constraints {constraints.get(canonical(name))}"
        )


# --- compose -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services_start_in_order(compose):
    services = compose["services"]
    assert set(services) == {"db", "redis", "migrate", "api", "jobs", "grafana-login", "grafana"}
    assert services["migrate"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    completed = {"condition": "service_completed_successfully"}
    for name in ("api", "jobs", "grafana-login", "grafana"):
        assert services[name]["depends_on"]["migrate"] == completed
    assert services["api"]["depends_on"]["redis"] == {"condition": "service_healthy"}
    # Grafana's login is made by a migrated database's `fleet analyst grant-login` (migration 0006's group role),
    # and Grafana connects as it.
    assert services["grafana"]["depends_on"]["grafana-login"] == completed
    for name in ("migrate", "grafana-login"):
        assert services[name]["restart"] == "no"
    for name in ("db", "redis"):
        assert services[name]["healthcheck"]["test"]


def test_compose_images_are_pinned_and_the_database_is_community(compose):
    services = compose["services"]
    db_image = services["db"]["image"]
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg\d+", db_image), db_image
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", services["redis"]["image"])
    assert re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+", services["grafana"]["image"])
    assert "pgdata" in compose["volumes"] and "pgdata:/var/lib/postgresql/data" in services["db"]["volumes"]
    initdb = next(v for v in services["db"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    assert (COMPOSE.parent / initdb.split(":")[0]).resolve() == ROOT / "docker" / "initdb"


def test_compose_fleet_services_use_the_image_and_existing_commands(compose):
    services = compose["services"]
    for name, argv in (
        ("migrate", ["fleet", "db", "upgrade"]),
        ("api", ["fleet", "serve"]),
        ("jobs", ["fleet", "jobs", "run"]),
        ("grafana-login", ["fleet", "analyst", "grant-login", "grafana"]),
    ):
        service = services[name]
        assert service["command"][: len(argv)] == argv
        assert_fleet_command_exists(service["command"])
        build = service["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        env = service["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "${POSTGRES_PASSWORD" in env["DATABASE_URL"]
        assert env["FLEET_RATE_LIMIT_STORAGE_URI"].startswith("redis://redis:6379")
    assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]  # published on the host's loopback only
    assert services["db"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_compose_grafana_login_takes_its_password_from_the_environment(compose):
    login = compose["services"]["grafana-login"]
    # `fleet analyst grant-login` reads FLEET_ANALYST_PASSWORD (never an argument: `ps` shows arguments).
    assert login["environment"]["FLEET_ANALYST_PASSWORD"].startswith("${GRAFANA_DB_PASSWORD:?")
    assert not any("PASSWORD" in word for word in login["command"])
    grafana = compose["services"]["grafana"]
    # The same password, for the data source's $GRAFANA_DB_PASSWORD (expanded by Grafana).
    assert grafana["environment"]["GRAFANA_DB_PASSWORD"].startswith("${GRAFANA_DB_PASSWORD:?")


def test_compose_grafana_is_private_and_reads_its_provisioning_read_only(compose):
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # required, no default
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]  # published on the host's loopback only
    mounts = {target: (source, options) for source, target, *options in (v.split(":") for v in grafana["volumes"])}
    for target, directory in (("/etc/grafana/provisioning", "provisioning"), ("/etc/grafana/dashboards", "dashboards")):
        source, options = mounts[target]
        assert options == ["ro"], target
        assert (COMPOSE.parent / source).resolve() == ROOT / "docker" / "grafana" / directory
        assert any((ROOT / "docker" / "grafana" / directory).rglob("*.*")), f"nothing to provision in {directory}"
    assert "grafana-data" in compose["volumes"]


def test_compose_text_names_no_secret():
    # Whatever parses it: the only passwords are references to the environment, required at start.
    text = COMPOSE.read_text()
    for line in text.splitlines():
        if re.search(r"PASSWORD\s*:", line):
            assert re.search(r"\$\{(POSTGRES|GRAFANA_DB|GRAFANA_ADMIN)_PASSWORD:\?", line), line


def test_the_image_gets_every_package_of_the_project():
    """Each top-level package pyproject installs is copied into the image and not excluded from its build context
    (cli/ and config/ were once missing from both: `fleet` could not start in the image)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {
        source.rstrip("/")
        for name, value in dockerfile_instructions()
        if name == "COPY" and not value.startswith("--from")
        for source in value.split()[:-1]
    }
    ignore = (ROOT / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "**" in ignore, "the build context must start from nothing and name what it takes"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    for package in packages:
        assert (ROOT / package / "__init__.py").is_file(), package
        assert package in copied, f"docker/Dockerfile does not COPY {package}/"
        assert package in allowed, f"docker/Dockerfile.dockerignore leaves {package}/ out of the build context"
