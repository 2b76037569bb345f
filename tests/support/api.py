"""The app under test, API keys, and test clients that send a key."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from flask_smorest import Blueprint
from sqlalchemy.engine import Engine

from api import create_app
from config import Settings
from db import keys


def build_app(engine: Engine, *, blueprints: Iterable[Blueprint] = (), **settings_env: str) -> Flask:
    """The real app on `engine`, with settings read from `settings_env` (as from the environment) and extra
    test-only blueprints registered on its API."""
    app = create_app(Settings.from_env(settings_env), engine=engine)
    for blp in blueprints:
        app.extensions["flask-smorest"]["apis"][""]["ext_obj"].register_blueprint(blp)
    return app


def new_key(eng: Engine, role: str = "device", device_id: str | None = None, name: str | None = None) -> str:
    """Create an API key of `role` (bound to `device_id` if given); returns its plaintext."""
    with eng.begin() as conn:
        return keys.create_key(conn, name or f"test-{role}", role, device_id)[1]


def device_key(eng: Engine, device_id: str | None = None) -> str:
    """A device key, bound to `device_id` if given; returns its plaintext."""
    return new_key(eng, "device", device_id)


def keyed_client(app: Flask, key: str) -> FlaskClient:
    """A client of `app` that sends `key` with every request (the app's other clients do not)."""
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = key
    return client


def with_api_key(app: Flask, eng: Engine, role: str = "admin", device_id: str | None = None) -> str:
    """Create an API key and make every test client of `app` send it; returns the key."""
    plaintext = new_key(eng, role, device_id)

    class KeyedClient(FlaskClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.environ_base["HTTP_X_API_KEY"] = plaintext

    app.test_client_class = KeyedClient
    return plaintext


def build_client(
    engine: Engine,
    role: str | None = None,
    *,
    device_id: str | None = None,
    blueprints: Iterable[Blueprint] = (),
    **settings_env: str,
) -> FlaskClient:
    """A client of a new app on `engine` (see `build_app`); with a `role`, the app's clients send a new key of
    that role. For engines other than the test's own (`both_editions`); a test on its engine uses the fixtures."""
    app = build_app(engine, blueprints=blueprints, **settings_env)
    if role is not None:
        with_api_key(app, engine, role, device_id)
    return app.test_client()
