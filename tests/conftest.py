"""Shared fixtures: a running daemon factory, the Azurite and PostgreSQL servers."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProc

# Azurite and PostgreSQL fixtures, registered once: a session fixture is then one server for
# the whole session (imported into each module, it would be one per module).
pytest_plugins = ("tests.azurite", "tests.postgres")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    made: list[DaemonProc] = []

    def make(
        config_text: str,
        env: dict[str, str] | None = None,
        start: bool = True,
        workdir: Path | None = None,
    ) -> DaemonProc:
        d = DaemonProc(workdir or tmp_path, config_text, env)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        d.close()


# ── the two long builds: started at once in the background, their tests run last ───────

_LAST = {"compat": 3, "test_image.py": 3, "faults": 2}


def _rank(item: pytest.Item) -> int:
    parts = item.path.parts
    return max((rank for key, rank in _LAST.items() if key in parts), default=0)


def _warm(what: str, build: Callable[[], object]) -> None:
    """Run `build` in a daemon thread. Its fixture calls it again later: the file lock it takes
    makes that call wait for this one, then find the result (or report the failure itself)."""

    def run() -> None:
        try:
            build()
        except BaseException as exc:  # noqa: BLE001  (the fixture reports it, in its test)
            print(f"background {what} build failed: {exc!r}", file=sys.__stderr__)

    threading.Thread(target=run, name=f"warm-{what}", daemon=True).start()


def _warm_base() -> None:
    from tests.ops.image_build import ensure_base, require_podman

    work = Path(tempfile.mkdtemp(prefix="watcherd-warm-base-"))
    try:
        ensure_base(require_podman(work / "podman"), work / "base")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _warm_azure() -> None:
    from tests.compat.azure_env import ensure_azure_env

    # To the real stderr: a test capturing `sys.stderr` (capsys) at that moment would take
    # this thread's lines for its own output (test_cli_manage's error-line checks did).
    ensure_azure_env(log_line=lambda line: print(line, file=sys.__stderr__, flush=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The Azure virtualenv (pip, ~2 min) and the image's Debian base (debootstrap, minutes on
    a fresh machine) mostly wait on the network: both start now, in the background, and the
    tests that need them, with the timing-sensitive fault tests, run after everything else."""
    items.sort(key=_rank)  # stable: each file keeps its order
    if config.option.collectonly:
        return
    names = {item.path.name for item in items} | {p for i in items for p in i.path.parts}
    if "compat" in names and os.environ.get("WATCHERD_AZURE_COMPAT") != "0":
        _warm("azure-venv", _warm_azure)
    if "test_image.py" in names:
        _warm("image-base", _warm_base)
