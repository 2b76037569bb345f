"""API keys on both engines: the data layer, the `fleet keys` CLI, and authentication, roles, device binding
and per-key rate limiting on a small test-only blueprint (no business endpoint is protected yet)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
import sqlalchemy as sa
from flask import g
from flask.views import MethodView
from flask_smorest import Blueprint

import db
from api.auth import API_KEY_HEADER, check_device_access, require_role
from cli import main
from config import ConfigError, Settings
from db import keys
from db.errors import NotFound
from tests.support.cli import cli_env

blp = Blueprint("auth_probe", __name__, url_prefix="/test-auth", description="Test-only protected routes")


#: The real app plus the probe blueprint; key lookups uncached unless the test asks for a TTL.
pytestmark = pytest.mark.app(blueprints=[blp], FLEET_KEY_CACHE_SECONDS="0")


@blp.route("/fleet")
class FleetProbe(MethodView):
    @require_role("read")
    @blp.response(200)
    def get(self):
        """Needs a read key."""
        return {"key_id": g.api_key.id, "role": g.api_key.role}


@blp.route("/devices/<device_id>")
class DeviceProbe(MethodView):
    @require_role("device")
    @blp.response(200)
    def get(self, device_id):
        """Needs a device key for this device (or an unbound one)."""
        check_device_access(device_id)
        return {"device_id": device_id, "key_id": g.api_key.id}


def new_key(engine, role: str, device_id: str | None = None, name: str = "test") -> tuple[keys.ApiKey, str]:
    with db.transaction(engine) as conn:
        return keys.create_key(conn, name, role, device_id)


def revoke(engine, key_id: int) -> None:
    with db.transaction(engine) as conn:
        keys.revoke_key(conn, key_id)


def _get(client, path: str, key: str | None = None):
    return client.get(path, headers={API_KEY_HEADER: key} if key is not None else {})


def _assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert body["status"] == status
    return body


# --- data layer --------------------------------------------------------------------------------------------


def test_keys_create_stores_hash_not_plaintext(clean_db):
    key, plaintext = new_key(clean_db, "device", device_id="m-1", name="meter m-1")
    assert plaintext.startswith("fk_") and len(plaintext) >= 40
    assert key.key_prefix == plaintext[: keys.DISPLAY_PREFIX_LENGTH]
    assert (key.role, key.device_id, key.name, key.active) == ("device", "m-1", "meter m-1", True)
    with clean_db.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE id = :id"), {"id": key.id}).mappings().one()
    assert row["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in {str(v) for v in row.values()}
    _, other = new_key(clean_db, "read")
    assert other != plaintext


def test_keys_list_and_revoke(clean_db):
    first, _ = new_key(clean_db, "read", name="dashboard")
    second, plaintext = new_key(clean_db, "admin", name="ops")
    with db.transaction(clean_db) as conn:
        assert [k.id for k in keys.list_keys(conn)] == [first.id, second.id]
        assert not any(hasattr(k, "key_hash") for k in keys.list_keys(conn))
        assert keys.find_active_key(conn, plaintext) == second
        revoked = keys.revoke_key(conn, second.id)
    assert revoked.revoked_at is not None and not revoked.active
    with db.transaction(clean_db) as conn:
        assert keys.find_active_key(conn, plaintext) is None
        assert keys.revoke_key(conn, second.id).revoked_at == revoked.revoked_at  # idempotent
        assert [k.active for k in keys.list_keys(conn)] == [True, False]


def test_keys_find_active_key_rejects_unknown_and_malformed(clean_db):
    _, plaintext = new_key(clean_db, "read")
    with clean_db.connect() as conn:
        for candidate in (plaintext + "x", plaintext[:-1], "fk_", "", "Bearer " + plaintext, "fk_" + "a" * 500):
            assert keys.find_active_key(conn, candidate) is None


def test_keys_revoke_unknown_id_is_not_found(clean_db):
    with db.transaction(clean_db) as conn:
        for key_id in (424242, 0, -1, 2**70):
            with pytest.raises(NotFound, match="does not exist"):
                keys.revoke_key(conn, key_id)


@pytest.mark.parametrize(
    ("role", "device_id", "message"),
    [("root", None, "role must be one of"), ("read", "m-1", "only a device key"), ("device", "x" * 65, "device id")],
)
def test_keys_create_rejects_bad_input(clean_db, role, device_id, message):
    with db.transaction(clean_db) as conn, pytest.raises(ValueError, match=message):
        keys.create_key(conn, "k", role, device_id)


def test_keys_table_refuses_binding_a_non_device_key(clean_db):
    with pytest.raises(sa.exc.IntegrityError, match="api_keys_device_binding_check"), clean_db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO api_keys (name, key_prefix, key_hash, role, device_id)"
                " VALUES ('x', 'fk_x', 'h', 'read', 'm-1')"
            )
        )


# --- CLI ---------------------------------------------------------------------------------------------------


def test_cli_keys_create_list_revoke(runner, clean_db):
    env = cli_env(clean_db)
    created = runner.invoke(
        main, ["keys", "create", "--name", "meter m-7", "--role", "device", "--device-id", "m-7"], env=env
    )
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()  # the key alone on stdout, the notes on stderr
    assert plaintext.startswith("fk_")
    assert "not shown again" in created.stderr
    with clean_db.connect() as conn:
        key = keys.find_active_key(conn, plaintext)
    assert key is not None and key.device_id == "m-7"

    as_json = runner.invoke(main, ["keys", "create", "--name", "dash", "--role", "read", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    read_key = json.loads(as_json.output)
    assert read_key["key"].startswith("fk_") and read_key["role"] == "read" and read_key["active"] is True

    listed = runner.invoke(main, ["keys", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.output)["keys"]
    assert [(r["id"], r["name"], r["role"]) for r in rows] == [
        (key.id, "meter m-7", "device"),
        (read_key["id"], "dash", "read"),
    ]
    assert plaintext not in listed.output and "key_hash" not in listed.output and "key" not in rows[0]
    human = runner.invoke(main, ["keys", "list"], env=env)
    assert "meter m-7" in human.output and key.key_prefix in human.output and plaintext not in human.output

    revoked = runner.invoke(main, ["keys", "revoke", str(key.id), "--json"], env=env)
    assert revoked.exit_code == 0, revoked.output
    assert json.loads(revoked.output)["active"] is False
    with clean_db.connect() as conn:
        assert keys.find_active_key(conn, plaintext) is None


def test_cli_keys_revoke_unknown_id_is_a_clear_error(runner, clean_db):
    env = cli_env(clean_db)
    result = runner.invoke(main, ["keys", "revoke", "987654"], env=env)
    assert result.exit_code == 1
    assert "API key 987654 does not exist" in result.output


def test_cli_keys_create_refuses_bound_read_key(runner, clean_db):
    env = cli_env(clean_db)
    result = runner.invoke(main, ["keys", "create", "--name", "x", "--role", "read", "--device-id", "m-1"], env=env)
    assert result.exit_code == 1
    assert "only a device key can be bound" in result.output
    with clean_db.connect() as conn:
        assert keys.list_keys(conn) == []


def test_cli_keys_create_rejects_unknown_role(runner, clean_db):
    env = cli_env(clean_db)
    result = runner.invoke(main, ["keys", "create", "--name", "x", "--role", "root"], env=env)
    assert result.exit_code == 2
    assert "root" in result.output


# --- authentication and roles --------------------------------------------------------------------------------


def test_auth_missing_key_is_401_with_challenge(client):
    body = _assert_problem(_get(client, "/test-auth/fleet"), 401)
    assert "X-API-Key" in body["detail"]
    assert _get(client, "/test-auth/fleet").headers["WWW-Authenticate"] == "ApiKey"


@pytest.mark.parametrize("bad", ["fk_not-a-real-key", "nonsense", "x" * 1000])
def test_auth_unknown_key_is_401(client, clean_db, bad):
    new_key(clean_db, "read")
    resp = _get(client, "/test-auth/fleet", bad)
    body = _assert_problem(resp, 401)
    assert body["detail"] == "the API key is unknown or revoked"
    assert resp.headers["WWW-Authenticate"] == "ApiKey"


def test_auth_revoked_key_is_401(client, clean_db):
    key, plaintext = new_key(clean_db, "read")
    assert _get(client, "/test-auth/fleet", plaintext).status_code == 200
    revoke(clean_db, key.id)
    _assert_problem(_get(client, "/test-auth/fleet", plaintext), 401)


def test_auth_read_key_allowed_and_exposed_on_g(client, clean_db):
    key, plaintext = new_key(clean_db, "read")
    resp = _get(client, "/test-auth/fleet", plaintext)
    assert resp.status_code == 200
    assert resp.get_json() == {"key_id": key.id, "role": "read"}


def test_auth_wrong_role_is_403(client, clean_db):
    _, device_key = new_key(clean_db, "device", device_id="m-1")
    _, read_key = new_key(clean_db, "read")
    body = _assert_problem(_get(client, "/test-auth/fleet", device_key), 403)
    assert "role 'device'" in body["detail"]
    _assert_problem(_get(client, "/test-auth/devices/m-1", read_key), 403)


def test_auth_device_key_bound_to_its_device(client, clean_db):
    _, bound = new_key(clean_db, "device", device_id="m-1")
    assert _get(client, "/test-auth/devices/m-1", bound).status_code == 200
    body = _assert_problem(_get(client, "/test-auth/devices/m-2", bound), 403)
    assert "bound to another device" in body["detail"]


def test_auth_unbound_device_key_reaches_any_device(client, clean_db):
    _, unbound = new_key(clean_db, "device")
    for device_id in ("m-1", "v-9"):
        assert _get(client, f"/test-auth/devices/{device_id}", unbound).get_json()["device_id"] == device_id


def test_auth_admin_key_has_every_role(client, clean_db):
    _, admin = new_key(clean_db, "admin")
    assert _get(client, "/test-auth/fleet", admin).status_code == 200
    assert _get(client, "/test-auth/devices/m-1", admin).status_code == 200


def test_auth_health_and_ready_need_no_key(client):
    assert client.get("/health").status_code == 200
    assert client.get("/ready").status_code == 200


def test_auth_revocation_takes_effect_within_cache_ttl(make_client, clean_db):
    client = make_client(FLEET_KEY_CACHE_SECONDS="0.5")
    key, plaintext = new_key(clean_db, "read")
    assert _get(client, "/test-auth/fleet", plaintext).status_code == 200
    revoke(clean_db, key.id)
    assert _get(client, "/test-auth/fleet", plaintext).status_code == 200  # still cached in this process
    time.sleep(0.6)
    _assert_problem(_get(client, "/test-auth/fleet", plaintext), 401)


def test_auth_openapi_documents_the_key(client):
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    operation = spec["paths"]["/test-auth/fleet"]["get"]
    assert operation["security"] == [{"ApiKeyAuth": []}]
    assert {"401", "403", "429"} <= set(operation["responses"])
    assert "security" not in spec["paths"]["/health"]["get"]


# --- rate limiting -----------------------------------------------------------------------------------------


def test_rate_limit_per_key_is_a_429_problem_with_retry_after(make_client, clean_db):
    client = make_client(FLEET_RATE_LIMIT="3/minute")
    _, first = new_key(clean_db, "read")
    _, second = new_key(clean_db, "admin")
    for _ in range(3):
        assert _get(client, "/test-auth/fleet", first).status_code == 200
    resp = _get(client, "/test-auth/fleet", first)
    body = _assert_problem(resp, 429)
    assert "3/minute" in body["detail"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    # The budget is the key's, across endpoints: another key is unaffected, this one is refused everywhere.
    assert _get(client, "/test-auth/fleet", second).status_code == 200
    _assert_problem(_get(client, "/test-auth/devices/m-1", first), 429)
    # /health and /ready are never limited.
    for _ in range(5):
        assert client.get("/health").status_code == 200


def test_rate_limit_without_a_key_counts_per_address(make_client, clean_db):
    client = make_client(FLEET_RATE_LIMIT="2/minute")
    assert [_get(client, "/test-auth/fleet", "fk_guess").status_code for _ in range(3)] == [401, 401, 429]


def test_rate_limit_off(make_client, clean_db):
    client = make_client(FLEET_RATE_LIMIT="off")
    _, plaintext = new_key(clean_db, "read")
    assert {_get(client, "/test-auth/fleet", plaintext).status_code for _ in range(5)} == {200}


@pytest.mark.parametrize(("storage", "shared"), [("redis://127.0.0.1:6379", True), ("memory://", False)])
def test_rate_limit_storage_is_shared_between_workers_through_redis(make_client, clean_db, storage, shared):
    # Two app instances stand for two gunicorn workers (or hosts); the machine's Redis is on its standard port.
    worker_a, worker_b = (
        make_client(FLEET_RATE_LIMIT="4/minute", FLEET_RATE_LIMIT_STORAGE_URI=storage) for _ in range(2)
    )
    _, plaintext = new_key(clean_db, "read")  # a fresh key: its random prefix is its own limit bucket
    assert [_get(worker_a, "/test-auth/fleet", plaintext).status_code for _ in range(3)] == [200] * 3
    second_worker = [_get(worker_b, "/test-auth/fleet", plaintext).status_code for _ in range(2)]
    assert second_worker == ([200, 429] if shared else [200, 200])


# --- configuration -----------------------------------------------------------------------------------------


def test_settings_auth_defaults():
    settings = Settings.from_env({})
    assert (settings.key_cache_seconds, settings.rate_limit, settings.rate_limit_storage_uri) == (
        5.0,
        "6000/minute",
        "memory://",
    )
    assert Settings.from_env({"FLEET_RATE_LIMIT_STORAGE_URI": "redis://127.0.0.1:6379"}).rate_limit_storage_uri


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLEET_RATE_LIMIT", "lots"),
        ("FLEET_RATE_LIMIT_STORAGE_URI", "ftp://x"),
        ("FLEET_RATE_LIMIT_STORAGE_URI", "async+redis://x"),
        ("FLEET_KEY_CACHE_SECONDS", "-1"),
        ("FLEET_KEY_CACHE_SECONDS", "inf"),
    ],
)
def test_settings_bad_auth_value_names_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
