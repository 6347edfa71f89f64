"""The layer rule, checked on the source so it cannot rot.

1. Nothing under ``catenary.core`` imports I/O, threads, the clock, or the
   module-level ``random`` functions (``from random import Random`` is the one
   allowed form: randomness is injected as a seeded generator).
2. A package imports only packages of a strictly lower layer (or itself).
3. The public API is not the core: ``api`` (the wire schema, its error codes
   and public types) and ``client`` (which users import) never import a
   core's structs, a host, the server or the storage beneath them -- even where
   the layers alone would allow it.  The node converts between the core's
   structs and the public types at its port (``runtime/public.py``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "catenary"

FORBIDDEN_IN_CORE = {
    "asyncio",
    "socket",
    "selectors",
    "time",
    "datetime",
    "os",
    "io",
    "pathlib",
    "shutil",
    "threading",
    "multiprocessing",
    "concurrent",
    "subprocess",
    "signal",
    "uuid",
    "secrets",
    "tempfile",
    "mmap",
    "fcntl",
    "uvloop",
    "aiohttp",
}

# Lower number = lower layer.  A package may import its own modules and any
# package with a strictly lower number.
LAYERS: dict[str, int] = {
    "wire": 1,
    "storage": 1,
    "core": 1,
    "persist": 2,
    "api": 2,
    "host": 2,  # sans-IO host loops over the cores (the hostloop branch may renumber)
    "runtime": 3,
    "testing": 3,
    "server": 4,
    "client": 4,
    "admin": 4,
    "bench": 5,
    "cli": 6,
}

# Rule 3: lower packages a package must not import although its layer is above them.
NEVER_IMPORTS: dict[str, frozenset[str]] = {
    "api": frozenset({"core", "storage", "persist", "host", "runtime", "testing"}),
    "client": frozenset({"core", "storage", "persist", "host", "runtime", "testing", "server"}),
}


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else "__init__"


def _imports(tree: ast.AST) -> list[tuple[str, list[str], int]]:
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
    return found


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def core_violations(path: Path, tree: ast.AST) -> list[str]:
    bad = []
    for module, names, line in _imports(tree):
        top = module.split(".")[0]
        if top in FORBIDDEN_IN_CORE:
            bad.append(f"{path}:{line}: core imports {module}")
        if top == "random" and (module != "random" or names != ["Random"]):
            bad.append(f"{path}:{line}: core may only use 'from random import Random'")
        if top == "catenary":
            parts = module.split(".")
            target = parts[1] if len(parts) > 1 else ""
            if target != "core":
                bad.append(f"{path}:{line}: core imports {module}")
    return bad


def layer_violations(path: Path, tree: ast.AST) -> list[str]:
    package = _package_of(path)
    if package not in LAYERS:
        return []
    bad = []
    for module, _names, line in _imports(tree):
        parts = module.split(".")
        if parts[0] != "catenary" or len(parts) < 2:
            continue
        target = parts[1]
        if target == package or target not in LAYERS:
            continue
        if LAYERS[target] >= LAYERS[package]:
            bad.append(f"{path}:{line}: {package} (layer {LAYERS[package]}) imports {module}")
        elif target in NEVER_IMPORTS.get(package, ()):
            bad.append(f"{path}:{line}: {package} is public and may not import {module}")
    return bad


def test_every_package_has_a_layer() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert packages <= set(LAYERS), f"give these a layer: {sorted(packages - set(LAYERS))}"
    assert set(LAYERS) <= packages, f"layers without a package: {sorted(set(LAYERS) - packages)}"


def test_the_documented_layers_are_the_checked_ones() -> None:
    # docs/architecture.md draws the layers as "<number>  pkg/  pkg/   description".
    text = (SRC.parent.parent / "docs" / "architecture.md").read_text()
    documented: dict[str, int] = {}
    for line in text.splitlines():
        match = re.match(r"^\s*(\d)\s{2}((?:[a-z]+/\s+)+)", line)
        if match:
            for name in re.findall(r"([a-z]+)/", match.group(2)):
                documented[name] = int(match.group(1))
    assert documented == LAYERS


def test_core_does_no_io() -> None:
    bad: list[str] = []
    for path in _sources():
        if _package_of(path) == "core":
            bad += core_violations(path, ast.parse(path.read_text(), str(path)))
    assert not bad, "\n".join(bad)


def test_lower_layers_do_not_import_higher_ones() -> None:
    bad: list[str] = []
    for path in _sources():
        bad += layer_violations(path, ast.parse(path.read_text(), str(path)))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "snippet",
    [
        "import asyncio",
        "import time",
        "from os import path",
        "import random",
        "from random import randint",
        "import threading",
        "from catenary.runtime import host",
        "from catenary.storage import store",
    ],
)
def test_rule_catches_a_planted_import(snippet: str) -> None:
    # The checker itself must fail on each of these, or the rule is hollow.
    fake = SRC / "core" / "planted.py"
    assert core_violations(fake, ast.parse(snippet)), snippet


@pytest.mark.parametrize(
    ("package", "snippet"),
    [
        ("client", "from catenary.core.metadata.types import KeyValue"),
        ("client", "from catenary.core.metadata import types as md"),
        ("client", "import catenary.core.raft.types"),
        ("client", "from catenary.runtime.client_port import ServiceError"),
        ("client", "from catenary.server import node"),
        ("client", "from catenary.storage.store import SegmentedStore"),
        ("api", "from catenary.core.metadata.types import Precondition"),
        ("api", "from catenary.runtime import public"),
    ],
)
def test_public_rule_catches_a_planted_import(package: str, snippet: str) -> None:
    # Rule 3 must fail on each of these, or the public API can quietly grow
    # a dependency on the core again.
    fake = SRC / package / "planted.py"
    assert layer_violations(fake, ast.parse(snippet)), snippet


def test_public_rule_allows_the_wire_schema() -> None:
    fake = SRC / "client" / "planted.py"
    snippet = "from catenary.api import messages\nfrom catenary.api.types import KeyValue\n"
    assert not layer_violations(fake, ast.parse(snippet + "from catenary.wire import FrameKind"))


def test_rule_allows_injected_randomness() -> None:
    fake = SRC / "core" / "planted.py"
    assert not core_violations(fake, ast.parse("from random import Random\nimport msgspec"))


def test_the_host_loops_do_no_io() -> None:
    # host/ is sans-IO like core/ (the simulator runs it): no asyncio, threads,
    # clock or files; time comes in as an argument.
    bad: list[str] = []
    for path in _sources():
        if _package_of(path) != "host":
            continue
        for module, _names, line in _imports(ast.parse(path.read_text(), str(path))):
            if module.split(".")[0] in FORBIDDEN_IN_CORE | {"random"}:
                bad.append(f"{path}:{line}: host imports {module}")
    assert not bad, "\n".join(bad)
