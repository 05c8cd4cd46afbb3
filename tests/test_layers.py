"""The layer rules of STYLE.md §2, checked on the import graph of `watcherd/` (built with ast).

Every import counts, lazy ones inside functions included. A self-test plants forbidden
imports in synthetic modules and sees each rule fail.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "watcherd"

# layer → the watcherd layers it may import (itself always allowed)
ALLOWED: Mapping[str, frozenset[str]] = {
    "core": frozenset(),
    "config": frozenset({"core"}),
    "engine": frozenset({"core", "config"}),
    "state": frozenset({"core", "engine"}),
    "pollers": frozenset({"core", "engine"}),
    "dispatch": frozenset({"core", "engine"}),
    "services": frozenset({"core", "config", "engine"}),
    "api": frozenset({"core", "services"}),
    "client": frozenset({"core"}),
    "sdk": frozenset({"core", "client"}),
}
# The engine sees adapters only through its ports.
ENGINE_FORBIDDEN = frozenset({"state", "pollers", "dispatch", "services", "api", "cli", "daemon"})
# Third-party SDKs stay in the modules that name them (prefix of a dotted module path).
SDK_HOMES: Mapping[str, tuple[str, ...]] = {
    "azure.storage.blob": ("watcherd.pollers.blob",),
    "azure.storage.queue": ("watcherd.pollers.blob",),
    "azure.identity": (
        "watcherd.pollers.blob",
        "watcherd.dispatch.azureml",
        "watcherd.dispatch.batch",
    ),
    "watchdog": ("watcherd.pollers.local", "watcherd.cli.watch"),
    "sqlite3": ("watcherd.state.sqlite",),
    "psycopg": ("watcherd.state.postgres",),
    "psycopg_pool": ("watcherd.state.postgres",),
    "tenacity": ("watcherd.engine.retry",),
}
# Never in the pure core (nor in config): I/O, concurrency and the clock's SDKs.
IMPURE = ("asyncio", "sqlite3", "aiohttp", "httpx", "azure", "watchdog", "psycopg", "socket")


def modules(root: Path = PACKAGE) -> dict[str, str]:
    """Every module of the package: dotted name → source."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path.read_text()
    return out


def imports(name: str, source: str, known: set[str]) -> Iterator[str]:
    """Dotted modules imported by `name` (relative imports resolved; `from m import x` is
    the module m.x when that is a module of the package)."""
    package = name if name in known and _is_package(name, known) else name.rpartition(".")[0]
    for node in _import_nodes(source):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in known else base


@functools.cache
def _import_nodes(source: str) -> tuple[ast.Import | ast.ImportFrom, ...]:
    """The import statements of a source, parsed once per test session."""
    return tuple(
        n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import | ast.ImportFrom)
    )


def _is_package(name: str, known: set[str]) -> bool:
    return any(k.startswith(name + ".") for k in known)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def violations(mods: Mapping[str, str]) -> list[str]:
    """Every broken rule, as `importer -> imported: why`."""
    known = set(mods)
    out = []
    for name, source in mods.items():
        mine = layer(name)
        for target in imports(name, source, known):
            if target.startswith("watcherd."):
                theirs = layer(target)
                if theirs == mine or mine not in ALLOWED:
                    continue
                if mine == "engine" and theirs in ENGINE_FORBIDDEN:
                    out.append(f"{name} -> {target}: the engine sees adapters through its ports")
                elif theirs not in ALLOWED[mine]:
                    out.append(f"{name} -> {target}: {mine}/ may not import {theirs}/")
                continue
            top = target.split(".")[0]
            if mine in ("core", "config") and top in IMPURE:
                out.append(f"{name} -> {target}: {mine}/ is pure (no I/O, no asyncio)")
            for sdk, homes in SDK_HOMES.items():
                if (target == sdk or target.startswith(sdk + ".")) and not any(
                    name == h or name.startswith(h) for h in homes
                ):
                    out.append(f"{name} -> {target}: {sdk} belongs in {', '.join(homes)}")
    return sorted(set(out))


def test_the_package_keeps_its_layer_rules() -> None:
    assert violations(modules()) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("watcherd.core.bad", "import sqlite3\n", "core/ is pure"),
        ("watcherd.core.bad", "def f():\n    import asyncio\n", "core/ is pure"),
        ("watcherd.core.bad", "from watcherd.engine import ports\n", "core/ may not import"),
        ("watcherd.config.bad", "from watcherd.services import manager\n", "config/ may not"),
        (
            "watcherd.engine.bad",
            "from watcherd.state.sqlite.store import SqliteStore\n",
            "through its ports",
        ),
        ("watcherd.engine.bad", "from watcherd.pollers import local\n", "through its ports"),
        ("watcherd.services.bad", "from watcherd.cli import checkconfig\n", "may not import cli"),
        ("watcherd.services.bad", "from watcherd.state import sqlite\n", "may not import state"),
        ("watcherd.api.bad", "from watcherd.engine.engine import Engine\n", "may not import"),
        ("watcherd.sdk.bad", "from watcherd.daemon import Daemon\n", "may not import daemon"),
        ("watcherd.dispatch.bad", "import watchdog.observers\n", "watchdog belongs in"),
        ("watcherd.engine.bad", "import psycopg\n", "psycopg belongs in"),
        ("watcherd.pollers.local", "from azure.storage.blob import BlobClient\n", "belongs in"),
    ],
)
def test_a_planted_forbidden_import_is_caught(module: str, source: str, expected: str) -> None:
    mods = modules()
    assert violations(mods) == []
    mods[module] = source
    found = violations(mods)
    assert any(expected in v and v.startswith(module) for v in found), found
