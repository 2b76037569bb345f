"""The `fleet` CLI: engine lifecycle and schema commands, through click's runner."""

import json

import port_for

from cli import main
from db.embedded import supervisor as embedded
from tests.conftest import is_community


def _engine_env(cfg: embedded.EngineConfig) -> dict[str, str]:
    return {
        "FLEET_ENGINE_DIR": str(cfg.directory),
        "FLEET_ENGINE_PORT": str(cfg.port),
        "FLEET_ENGINE_HEALTH_PORT": str(cfg.health_port),
    }


def test_cli_db_current_reports_head_and_edition(runner, engine, engine_kind):
    url = engine.url.render_as_string(hide_password=False)
    result = runner.invoke(main, ["db", "current", "--json"], env={"DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["at_head"] is True
    assert data["edition"]["license"] == ("timescale" if is_community(engine_kind) else "apache")


def test_cli_db_current_unreachable_database_is_a_clear_error(runner):
    result = runner.invoke(
        main, ["db", "current"], env={"DATABASE_URL": "postgresql://x@127.0.0.1:1/db", "FLEET_DB_CONNECT_TIMEOUT": "2"}
    )
    assert result.exit_code == 1
    assert "cannot read the database" in result.output


def test_cli_bad_setting_names_the_variable(runner):
    result = runner.invoke(main, ["db", "current"], env={"FLEET_DB_POOL_SIZE": "lots"})
    assert result.exit_code == 1
    assert "FLEET_DB_POOL_SIZE" in result.output


def test_cli_engine_status_of_running_engine(runner, embedded_engine):
    result = runner.invoke(main, ["engine", "status", "--json"], env=_engine_env(embedded_engine))
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["running"] is True
    assert status["health"]["status"] == "ok"


def test_cli_engine_start_status_stop(runner, tmp_path):

    cfg = embedded.EngineConfig(
        tmp_path / "engine", port=port_for.select_random(), health_port=port_for.select_random()
    )
    env = _engine_env(cfg)
    try:
        started = runner.invoke(main, ["engine", "start"], env=env)
        assert started.exit_code == 0, started.output
        assert f"export DATABASE_URL='postgresql://postgres:postgres@127.0.0.1:{cfg.port}/" in started.output
        again = runner.invoke(main, ["engine", "start", "--json"], env=env)  # idempotent: same supervisor
        assert json.loads(again.output)["supervisor_pid"] == embedded.status(cfg).supervisor_pid
        assert runner.invoke(main, ["engine", "status"], env=env).exit_code == 0
        stopped = runner.invoke(main, ["engine", "stop", "--json"], env=env)
        assert json.loads(stopped.output) == {"stopped": True}
        # Restarted on its existing data directory, it is still a TimescaleDB Community server.
        assert runner.invoke(main, ["engine", "start"], env=env).exit_code == 0
        current = runner.invoke(main, ["db", "current", "--json"], env={**env, "DATABASE_URL": cfg.database_url})
        assert json.loads(current.output)["edition"]["license"] == "timescale", current.output
        assert runner.invoke(main, ["engine", "stop"], env=env).exit_code == 0
    finally:
        embedded.stop(cfg)
    after = runner.invoke(main, ["engine", "status"], env=env)
    assert after.exit_code == 3
    assert "not running" in after.output
