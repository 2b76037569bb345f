"""API keys at rest and on lookup, without a database: only the SHA-256 of a key is stored, a lookup sends only
that hash to the database, and the one place that compares secret-derived values in Python does it in constant
time (hmac.compare_digest)."""

from __future__ import annotations

import ast
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.dialects import postgresql

from api.auth import KeyCache
from db import keys

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class _StubConnection:
    """Records the statements a function executes and answers each with `row`."""

    def __init__(self, row: Any) -> None:
        self.row = row
        self.statements: list[Any] = []

    def execute(self, statement: Any, parameters: dict[str, Any] | None = None, *args: Any) -> Any:
        self.statements.append((statement, parameters or {}))
        return SimpleNamespace(one=lambda: self.row, one_or_none=lambda: self.row)

    def params(self) -> dict[str, Any]:
        """The bound values of the last statement: those built into it and those passed with it."""
        statement, parameters = self.statements[-1]
        compiled = statement.compile(dialect=postgresql.dialect())
        return {**compiled.params, **parameters}


def _row(key_hash: str = "", **overrides: Any) -> SimpleNamespace:
    values = {
        "id": 1,
        "name": "gateway",
        "key_prefix": "fk_abcdefgh",
        "role": "device",
        "device_id": None,
        "created_at": NOW,
        "revoked_at": None,
        "key_hash": key_hash,
    }
    return SimpleNamespace(**{**values, **overrides})


def test_create_key_stores_only_the_sha256_of_the_key():
    conn = _StubConnection(_row())
    key, plaintext = keys.create_key(conn, "gateway", "device")
    stored = conn.params()
    assert stored["key_hash"] == hashlib.sha256(plaintext.encode()).hexdigest()
    assert stored["key_prefix"] == plaintext[: keys.DISPLAY_PREFIX_LENGTH]
    # The plaintext goes nowhere but back to the caller: no stored value holds it (the prefix is 8 of its 43
    # random characters, kept for display).
    assert not any(isinstance(v, str) and plaintext in v for v in stored.values())
    assert not hasattr(key, "key_hash")
    assert re.fullmatch(r"fk_[A-Za-z0-9_-]{43}", plaintext)  # 32 random bytes


def test_find_active_key_sends_only_the_hash_and_compares_in_constant_time(monkeypatch):
    plaintext = "fk_" + "k" * 43
    digest = hashlib.sha256(plaintext.encode()).hexdigest()
    calls = []

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    conn = _StubConnection(_row(digest))
    found = keys.find_active_key(conn, plaintext)
    assert found is not None and found.id == 1
    assert calls == [(digest, digest)]
    params = conn.params()
    assert digest in params.values()
    assert not any(isinstance(v, str) and plaintext in v for v in params.values())


def test_find_active_key_refuses_a_row_whose_hash_differs():
    # The database found a row but its hash is not this key's (a collation or an index that matched loosely):
    # the constant-time comparison still decides, and says no.
    plaintext = "fk_" + "k" * 43
    conn = _StubConnection(_row(hashlib.sha256(b"another key").hexdigest()))
    assert keys.find_active_key(conn, plaintext) is None


@pytest.mark.parametrize("presented", ["", "no-prefix-" + "k" * 40, "fk_" + "k" * 200])
def test_find_active_key_does_not_look_up_what_cannot_be_a_key(presented):
    conn = _StubConnection(_row())
    assert keys.find_active_key(conn, presented) is None
    assert conn.statements == []


def test_key_cache_remembers_keys_by_hash_never_by_plaintext(monkeypatch):
    cache = KeyCache(engine=SimpleNamespace(), ttl=60)  # type: ignore[arg-type]  # never used: no lookup
    monkeypatch.setattr(cache, "_load", lambda plaintext: None)
    plaintext = "fk_" + "c" * 43
    cache.lookup(plaintext)
    assert list(cache._entries) == [hashlib.sha256(plaintext.encode()).hexdigest()]


def _python_comparisons_of_secrets(path: Path) -> list[str]:
    """`==`/`!=` comparisons in Python between names that hold keys or hashes. SQLAlchemy column expressions
    (`api_keys.c.key_hash == digest`) build SQL, not a comparison, and are allowed."""
    secret_names = {"plaintext", "digest", "key_hash", "presented"}
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            continue
        if ast.unparse(node.left).startswith("api_keys.c."):
            continue
        names = {n.id for side in (node.left, *node.comparators) for n in ast.walk(side) if isinstance(n, ast.Name)}
        attrs = {
            n.attr for side in (node.left, *node.comparators) for n in ast.walk(side) if isinstance(n, ast.Attribute)
        }
        if (names | attrs) & secret_names:
            found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", ["db/keys.py", "api/auth.py"])
def test_key_lookup_path_never_compares_secrets_with_equality(module):
    path = ROOT / module
    assert _python_comparisons_of_secrets(path) == []
    if module == "db/keys.py":
        assert "hmac.compare_digest(" in path.read_text()
