"""Plain helpers shared by the test modules: no fixtures, no tests (the fixtures live in tests/conftest.py).

- api: the app under test, API keys and clients that send them;
- builders: ingest payloads (the API's shape) and row inserts (the tables' shape);
- fleet: `FleetData`, what a test posted, and the analytics it must be answered with;
- cli: the environment a `fleet` command runs in.

A test module imports from here, never from another test module (tests/unit/test_test_layout.py checks).
"""

import pkgutil

import pytest

# Plain asserts in these helpers report like a test's own: pytest rewrites a module only if told before it is
# imported, and every submodule is imported after this package.
pytest.register_assert_rewrite(*(f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)))
