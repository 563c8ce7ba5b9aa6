"""Test files are not libraries: no test module and no script imports another test module or
``tests/conftest.py`` (pytest loads that one itself); what several of them share lives in
``tests/helpers/``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_of(path: Path) -> str:
    """The dotted name of the module at ``path`` (relative to the repository root)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.Module, module: str, is_package: bool) -> list[tuple[int, list[str]]]:
    """For each import statement of ``tree``, its line and the modules it may import: for
    ``from X import a``, both ``X`` and ``X.a``. Relative imports are resolved against
    ``module`` (a package itself where ``is_package``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not is_package:
                    package = package[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join([*package, base] if base else package)
            found.append((node.lineno, [base, *(f"{base}.{a.name}" for a in node.names)]))
    return found


def forbidden(name: str) -> bool:
    """Whether ``name`` is a test module, ``tests.conftest``, or something inside one of them."""
    parts = name.split(".")
    return (
        len(parts) >= 2
        and parts[0] == "tests"
        and (parts[1] == "conftest" or parts[1].startswith("test_"))
    )


def offences(path: Path, source: str) -> list[str]:
    """One line for each import statement in ``source`` (the text of ``path``) that imports a
    test module or ``tests.conftest``."""
    tree = ast.parse(source, filename=str(path))
    module = module_of(path)
    return [
        f"{path.relative_to(ROOT)}:{line} imports {next(n for n in names if forbidden(n))}"
        for line, names in imported(tree, module, path.name == "__init__.py")
        if any(forbidden(n) for n in names)
    ]


def test_no_test_module_or_script_imports_a_test_module_or_conftest() -> None:
    files = sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "docs").glob("*.py"))
    assert ROOT / "tests" / "conftest.py" in files and ROOT / "docs" / "screenshots.py" in files
    problems = [p for path in files for p in offences(path, path.read_text(encoding="utf-8"))]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("tests/test_a.py", "from tests.test_puller import mp3_file"),
        ("tests/test_a.py", "import tests.test_puller as puller"),
        ("tests/test_a.py", "from tests import test_puller"),
        ("tests/test_a.py", "from tests.conftest import music"),
        ("tests/test_a.py", "if True:  from tests import conftest"),
        ("tests/test_a.py", "from .test_puller import mp3_file"),
        ("tests/test_a.py", "from . import conftest"),
        ("tests/helpers/a.py", "from ..conftest import music"),
        ("docs/a.py", "from tests.test_dashboard import Proc"),
    ],
)
def test_each_way_of_importing_a_test_module_is_caught(where: str, source: str) -> None:
    assert len(offences(ROOT / where, source)) == 1


@pytest.mark.parametrize(
    ("where", "source"),
    [
        ("tests/test_a.py", "from tests.helpers.audio import music"),
        ("tests/test_a.py", "from tests import helpers"),
        ("tests/helpers/a.py", "from .constants import TIMEOUT_S"),
        ("docs/a.py", "import testsuite.test_x"),
    ],
)
def test_helpers_may_be_imported(where: str, source: str) -> None:
    assert offences(ROOT / where, source) == []
