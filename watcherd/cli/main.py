"""The `watcherd` command line: argv in, exit code out (0 ok, 1 runtime, 2 usage/config)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from watcherd.core.models import StoredSchedule

__all__ = ["main"]

_MANAGE = ("schedules", "pipelines", "experiments", "runs", "replicas")


def _err(msg: str) -> None:
    sys.stderr.write(f"watcherd: {msg}\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="watcherd",
        description="Self-hosted scheduler for pipeline runs (Azure ML Schedule, locally).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    r = sub.add_parser("run", help="run the daemon in the foreground")
    r.add_argument("--config", help="config file (default: $WATCHERD_CONFIG, ./watcherd.toml)")
    c = sub.add_parser("check-config", help="validate a config file and show next fire times")
    c.add_argument("--config")
    c.add_argument("--json", action="store_true")
    sub.add_parser(
        "watch", help="dev mode: run a command for each file written in DIR", add_help=False
    )
    for name in _MANAGE:
        sub.add_parser(name, help=f"manage {name} of a running daemon", add_help=False)
    # `state copy` parses its own options (watcherd.cli.state_copy): listed here for --help.
    state = sub.add_parser("state", help="the daemon's stored state")
    state.add_argument(
        "action", nargs="?", metavar="copy", help="copy --to URL [--from DIR] [--config FILE]"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "watch":
        from watcherd.cli.watch import main as watch_main

        return int(watch_main(args[1:]))
    if args[:2] == ["state", "copy"]:
        return _state_copy(args[2:])
    if args and args[0] in _MANAGE:
        from watcherd.cli.manage import main as manage_main

        return int(manage_main(args))
    parser = _parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if ns.command == "run":
        return _run(ns.config, os.environ)
    if ns.command == "check-config":
        return _check(ns.config, ns.json, os.environ)
    if ns.command == "state":
        _err("usage: watcherd state copy --to URL [--from DIR] [--config FILE]")
        return 2
    parser.print_help(sys.stderr)
    return 2


def _state_copy(argv: list[str]) -> int:
    """`watcherd state copy …` (SPEC §12): `watcherd.cli.state_copy.main(argv)` with the
    arguments after `state copy`; imported only when used."""
    try:
        from watcherd.cli import state_copy
    except ImportError as exc:  # e.g. the PostgreSQL driver is not installed
        _err(f"state copy is not available in this installation ({exc})")
        return 1
    return int(state_copy.main(argv))


def _load(arg: str | None, env: Mapping[str, str]) -> object:
    from watcherd import config as config_mod
    from watcherd.core.errors import ConfigErrors

    path = config_mod.find_config_path(arg, env, Path.cwd())
    try:
        return config_mod.load(path, env)
    except ConfigErrors as exc:
        sys.stderr.write(str(exc) + "\n")
        return None


def _run(arg: str | None, env: Mapping[str, str]) -> int:
    # Start-up allocates ~300k long-lived objects (imports, config): collecting them over
    # and over costs ~35 ms. The daemon freezes them and turns the collector on at READY.
    gc.disable()
    try:
        return _run_daemon(arg, env)
    finally:
        gc.enable()


def _run_daemon(arg: str | None, env: Mapping[str, str]) -> int:
    from watcherd import logs
    from watcherd.core.models import Config
    from watcherd.daemon import run_daemon

    cfg = _load(arg, env)
    if not isinstance(cfg, Config):
        return 2
    logs.configure(cfg.daemon.log_format, cfg.secrets)
    assert cfg.path is not None
    from watcherd.dispatch.process import use_pidfd_child_watcher

    use_pidfd_child_watcher()
    try:
        return asyncio.run(run_daemon(cfg.path, env, cfg=cfg))
    except KeyboardInterrupt:
        return 0


def _check(arg: str | None, as_json: bool, env: Mapping[str, str]) -> int:
    from watcherd import config as config_mod
    from watcherd.cli import checkconfig
    from watcherd.core.errors import ConfigErrors

    path = config_mod.find_config_path(arg, env, Path.cwd())
    now = datetime.now(UTC)
    try:
        cfg = config_mod.load(path, env)
    except ConfigErrors as exc:
        report = checkconfig.build_report(exc, now=now, stored={})
    else:
        stored, unreadable = _read_stored(cfg)
        report = checkconfig.build_report(cfg, now=now, stored=stored, unreadable=unreadable)
    text = checkconfig.format_json(report) if as_json else checkconfig.format_text(report)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 2 if report.errors else 0


def _read_stored(cfg: object) -> tuple[dict[str, StoredSchedule], str | None]:
    """The stored schedules (anchors, statuses, API-created bodies), read-only, and why the
    state DB could not be read (None: read, or there is no state yet)."""
    from watcherd.core.errors import WatcherdError
    from watcherd.core.models import Config
    from watcherd.state.sqlite.schema import check_file
    from watcherd.state.sqlite.store import SqliteStore, load_schedules

    assert isinstance(cfg, Config)
    db = cfg.daemon.state_dir / "state.db"
    try:
        check_file(db)  # emptied or missing where a start opened one: `run` refuses it
    except WatcherdError as exc:
        return {}, str(exc)
    if not db.exists() or db.stat().st_size == 0:  # no state yet (a start initializes it)
        return {}, None
    try:
        store = SqliteStore(cfg.daemon.state_dir, read_only=True, lock=False)
    except WatcherdError as exc:
        return {}, str(exc)
    try:
        rows = store.db.sync(load_schedules)
    except Exception as exc:  # an unreadable DB only loses the stored anchors
        return {}, f"{db}: {exc}"
    finally:
        store.db.close()
    return {r.id: r for r in rows}, None
