"""The core imports no adapter (issue 12): adapters parse into core types and carry effects out.

Only `jaa_gateway/adapters/` itself, the wiring (`app.py`, `cli.py`) and the demo may import
`jaa_gateway.adapters`. Every import counts, wherever it is written: at module level, inside a
function, under `if TYPE_CHECKING:`, relative, or through `importlib.import_module`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import jaa_gateway

PACKAGE_DIR = Path(jaa_gateway.__file__).parent
ADAPTERS = "jaa_gateway.adapters"
# May import adapters: the adapters themselves, the wiring, and the demo (which drives the edge).
ALLOWED = ("jaa_gateway.adapters", "jaa_gateway.app", "jaa_gateway.cli", "jaa_gateway.demo")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_allowed(module: str) -> bool:
    return any(module == a or module.startswith(a + ".") for a in ALLOWED)


def is_adapter(name: str) -> bool:
    return name == ADAPTERS or name.startswith(ADAPTERS + ".")


def imported_names(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every module `source` (the text of `module`) imports, absolute, with its line number.

    `from X import y` yields both X and X.y, since y may be a submodule."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                if node.module:
                    base.append(node.module)
                target = ".".join(base)
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (
                    isinstance(node.func, ast.Name)
                    and node.func.id in ("import_module", "__import__")
                )
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def adapter_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    hits: dict[int, str] = {}  # one per import statement: its module, not each name too
    for line, name in imported_names(source, module, is_package):
        if is_adapter(name):
            hits.setdefault(line, name)
    return [f"{module}:{line} imports {name}" for line, name in sorted(hits.items())]


def test_the_core_imports_no_adapter() -> None:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    core = [p for p in files if not is_allowed(module_name(p))]
    # the walk really sees the core (a wrong root would make this test pass on nothing)
    names = {module_name(p) for p in core}
    assert {"jaa_gateway.engine", "jaa_gateway.alarms", "jaa_gateway.effects"} <= names
    assert "jaa_gateway.domain.events" in names and "jaa_gateway.deadlines" in names
    offenders = [
        hit
        for p in core
        for hit in adapter_imports(
            p.read_text(encoding="utf-8"), module_name(p), p.name == "__init__.py"
        )
    ]
    assert offenders == [], "the core must not import adapters:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("jaa_gateway.engine", "import jaa_gateway.adapters.mqtt"),
        ("jaa_gateway.engine", "import jaa_gateway.adapters as a"),
        ("jaa_gateway.engine", "from jaa_gateway.adapters.events import DeviceEvent"),
        ("jaa_gateway.engine", "from jaa_gateway.adapters import http"),
        ("jaa_gateway.engine", "from jaa_gateway import adapters"),
        ("jaa_gateway.engine", "from .adapters.scheduler import Deadlines"),
        ("jaa_gateway.engine", "from . import adapters"),
        ("jaa_gateway.domain.gate", "from ..adapters import events"),
        ("jaa_gateway.store.db", "from ..adapters.http import HttpApi"),
        (
            "jaa_gateway.alarms",
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from jaa_gateway.adapters.events import DeviceEvent\n",
        ),
        ("jaa_gateway.engine", "def f():\n    from jaa_gateway.adapters import mqtt\n"),
        (
            "jaa_gateway.engine",
            "import importlib\nimportlib.import_module('jaa_gateway.adapters.http')",
        ),
        ("jaa_gateway.engine", "__import__('jaa_gateway.adapters')"),
    ],
)
def test_the_check_sees_every_way_of_importing(module: str, source: str) -> None:
    assert adapter_imports(source, module), source


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("jaa_gateway.engine", "from jaa_gateway.domain.events import DeviceEvent"),
        ("jaa_gateway.engine", "import jaa_gateway.adaptersx"),
        ("jaa_gateway.engine", "from jaa_gateway import adapters_helper"),
        ("jaa_gateway.engine", "from .deadlines import Deadlines"),
        ("jaa_gateway.engine", "s = 'jaa_gateway.adapters.mqtt'"),
    ],
)
def test_the_check_does_not_flag_the_core_itself(module: str, source: str) -> None:
    assert adapter_imports(source, module) == [], source


def test_package_relative_imports_resolve_from_the_package() -> None:
    # in jaa_gateway/notify/__init__.py, "from .x" is jaa_gateway.notify.x
    src = "from .adapters import y"
    assert adapter_imports(src, "jaa_gateway", is_package=True)
    assert not adapter_imports(src, "jaa_gateway.notify", is_package=True)


# The HTTP edge reads through `jaa_gateway.views` and commands through its `AlarmDesk`
# protocol: no SQL, no store, no concrete engine (issue 12).
HTTP_EDGE = (
    "jaa_gateway.adapters.http",
    "jaa_gateway.adapters.http_common",
    "jaa_gateway.adapters.twilio_webhooks",
    # the guard console reads through `jaa_gateway.board` and acts through the AlarmDesk
    "jaa_gateway.adapters.console.auth",
    "jaa_gateway.adapters.console.feed",
    "jaa_gateway.adapters.console.model",
    "jaa_gateway.adapters.console.routes",
    "jaa_gateway.adapters.console.texts",
)
HTTP_FORBIDDEN = ("sqlalchemy", "jaa_gateway.store", "jaa_gateway.engine")


def forbidden_in_http(source: str, module: str) -> list[str]:
    return [
        f"{module}:{line} imports {name}"
        for line, name in imported_names(source, module)
        if any(name == f or name.startswith(f + ".") for f in HTTP_FORBIDDEN)
    ]


def test_the_http_edge_has_no_sql_and_no_engine() -> None:
    offenders: list[str] = []
    for module in HTTP_EDGE:
        path = PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")
        offenders += forbidden_in_http(path.read_text(encoding="utf-8"), module)
    assert offenders == [], "the HTTP edge must call services only:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        "from sqlalchemy import select",
        "import sqlalchemy.dialects.sqlite",
        "from jaa_gateway.store import queries as q",
        "from jaa_gateway.store.schema import alarms",
        "from jaa_gateway.engine import Engine",
        "from jaa_gateway import engine",
    ],
)
def test_the_http_check_sees_sql_and_the_engine(source: str) -> None:
    assert forbidden_in_http(source, "jaa_gateway.adapters.http"), source
