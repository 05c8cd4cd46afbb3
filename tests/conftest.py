"""Shared fixtures: a running daemon factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import DaemonProc


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
