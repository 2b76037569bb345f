"""The test suite's own layout: no test module imports another test module.

What several modules share (fixtures, builders, expectations) lives in tests/conftest.py or tests/support/;
importing from a test module drags its fixtures, marks and module-level set-up into the importer. Checked
with an AST scan of every tests/**/test_*.py: `import tests.x.test_y`, `from tests.x.test_y import ...`,
`from tests.x import test_y` and the relative forms.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module_file(root: Path, dotted: str) -> Path | None:
    """The .py file a dotted module name stands for under `root`, if there is one."""
    if not dotted:
        return None
    path = root.joinpath(*dotted.split(".")).with_suffix(".py")
    return path if path.is_file() else None


def _imported_names(root: Path, path: Path) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything `path` imports that could be a module: the module of each import, and
    for `from m import n` also `m.n` (n may be a submodule)."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `.` is the module's own package
                base = package[: len(package) - node.level + 1] + ([node.module] if node.module else [])
                module = ".".join(base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}" if module else alias.name


def imports_of_test_modules(root: Path) -> list[str]:
    """'path:line imports module' for every test module under root/tests importing another test module."""
    found = []
    for path in sorted((root / "tests").rglob("test_*.py")):
        for line, name in _imported_names(root, path):
            target = _module_file(root, name)
            if target is not None and target.name.startswith("test_") and target != path:
                found.append(f"{path.relative_to(root)}:{line} imports {name}")
    return found


def test_no_test_module_imports_another_test_module():
    assert list((ROOT / "tests").rglob("test_*.py")), "no test modules found: the scan would pass vacuously"
    offenders = imports_of_test_modules(ROOT)
    assert offenders == [], "move what they share into tests/support/ or tests/conftest.py:\n" + "\n".join(offenders)


def test_layout_scan_finds_every_import_form(tmp_path):
    pkg = tmp_path / "tests" / "integration"
    pkg.mkdir(parents=True)
    for init in (tmp_path / "tests" / "__init__.py", pkg / "__init__.py"):
        init.write_text("")
    (pkg / "test_shared.py").write_text("HELPER = 1\n")
    (pkg / "helpers.py").write_text("HELPER = 2\n")
    (pkg / "test_importer.py").write_text(
        "import tests.integration.test_shared\n"
        "from tests.integration.test_shared import HELPER\n"
        "from tests.integration import test_shared\n"
        "from .test_shared import HELPER as H2\n"
        "from . import test_shared as ts\n"
        "from tests.integration import helpers\n"
        "from .helpers import HELPER as H3\n"
    )
    offenders = imports_of_test_modules(tmp_path)
    lines = [o.split(" imports ")[0] for o in offenders]
    assert lines == [f"tests/integration/test_importer.py:{n}" for n in range(1, 6)]  # not helpers (6, 7)
