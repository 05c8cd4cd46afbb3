"""`watcherd state copy --to postgresql://… [--from DIR]`: move a SQLite state to PostgreSQL.

Every table of the SQLite state in DIR (default: the config's `state_dir`) is copied, under
that state's lock (a daemon running on it holds the lock: stop it first), into an empty
PostgreSQL database: pipelines, schedules (API-created ones whole, declared ones with their
last-seen file status), timer anchors and cursors, snapshots and listing markers, runs with
their attempts and logs, idempotency keys. A daemon started on the copy carries on where the
SQLite one stopped: no slot, creation run or handled file fires again (SPEC §12).

The password comes from the URL, PGPASSWORD or ~/.pgpass, never needed in argv; the URL is
shown masked in every line this prints.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from watcherd.core.errors import AlreadyRunning, ConfigErrors, StateError
from watcherd.core.timefmt import parse_utc

__all__ = ["main"]

CHUNK = 2000  # runs read from SQLite per round (logs may be large)

# SQLite columns read for each PostgreSQL table (importer.TABLES order), and which of them
# are instants kept as text in SQLite.
_SOURCE: dict[str, tuple[str, tuple[str, ...], frozenset[int]]] = {
    "pipelines": ("pipelines", ("id", "name", "status", "file_status"), frozenset()),
    "schedules": (
        "schedules",
        (
            "id", "name", "source", "status", "file_status", "spec", "trigger_key",
            "anchor", "cursor", "created_at", "updated_at",
        ),
        frozenset({7, 8, 9, 10}),
    ),
    "runs": (
        "runs",
        (
            "seq", "id", "schedule_id", "pipeline_id", "experiment", "dedup", "status",
            "trigger", "parameters", "path", "attempt", "attempts", "error", "exit_code",
            "remote_id", "queued_at", "started_at", "finished_at", "next_attempt_at", "log",
            "file_local", "file_url", "file_param",
        ),
        frozenset({15, 16, 17, 18}),
    ),
    "snapshots": ("snapshots", ("schedule_id", "name", "version"), frozenset()),
    "baselines": ("baselines", ("schedule_id", "key", "marker"), frozenset()),
    "idempotency": ("idempotency", ("key", "run_id", "created_at"), frozenset({2})),
    "experiments": ("experiments", ("name",), frozenset()),
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="watcherd state copy",
        description="Copy a SQLite state into an empty PostgreSQL database (SPEC §12).",
    )
    p.add_argument(
        "--to",
        metavar="URL",
        help="libpq URL or conninfo of the target (default: [daemon] database of the config);"
        " password from PGPASSWORD or ~/.pgpass",
    )
    p.add_argument("--from", dest="source", metavar="DIR", help="state directory to copy")
    p.add_argument("--config", help="config file (default: $WATCHERD_CONFIG, ./watcherd.toml)")
    return p


def _err(msg: str) -> None:
    sys.stderr.write(f"watcherd: {msg}\n")


def main(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    """Entry point for the args after `state copy`; returns the exit code."""
    env = os.environ if env is None else env
    try:
        ns = _parser().parse_args(list(argv))
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    source, url = ns.source, ns.to
    if source is None or url is None:
        from watcherd import config as config_mod

        try:
            cfg = config_mod.load(config_mod.find_config_path(ns.config, env, Path.cwd()), env)
        except ConfigErrors as exc:
            _err(str(exc))
            return 2
        except OSError as exc:
            _err(f"cannot read the config: {exc}; give --from DIR and --to URL")
            return 2
        source = source or str(cfg.daemon.state_dir)
        url = url or cfg.daemon.database
    if not url:
        _err("no target: give --to postgresql://… (or [daemon] database in the config)")
        return 2
    if (why := _url_problem(url)) is not None:  # a usage error, before anything is opened
        _err(f"--to: {why}")
        return 2
    try:
        counts, shown = asyncio.run(_copy(Path(source), url))
    except AlreadyRunning as exc:
        _err(f"{exc}: stop it first (the copy takes the state's lock)")
        return 1
    except StateError as exc:
        _err(str(exc))
        return 1
    summary = ", ".join(f"{n} {table}" for table, n in counts.items())
    sys.stdout.write(f"copied {summary} from {source} into {shown}\n")
    return 0


async def _copy(state_dir: Path, url: str) -> tuple[dict[str, int], str]:
    from watcherd.state.postgres.importer import TABLES, Importer
    from watcherd.state.sqlite.store import SqliteStore

    if not (state_dir / "state.db").is_file():
        raise StateError(f"no watcherd state in {state_dir} (state.db not found)")
    store = SqliteStore(state_dir)  # takes the lock: AlreadyRunning while a daemon runs
    try:
        async with Importer(url) as imp:
            for table in TABLES:
                for chunk in _read(store.db.sync, table):
                    await imp.write(table, chunk)
            counts = {t: imp.counts.get(t, 0) for t in TABLES}
            shown = imp.url.display
    finally:
        await store.close()
    return counts, shown


def _read(sync: Callable[..., Any], table: str) -> Iterator[list[tuple[Any, ...]]]:
    """The rows of one SQLite table in PostgreSQL's column order, a chunk at a time (runs by
    seq, so a large history never sits in memory whole)."""
    name, cols, instants = _SOURCE[table]
    select = f"SELECT {', '.join(cols)} FROM {name}"
    if table != "runs":
        rows = sync(lambda c: c.execute(select).fetchall())
        yield [_convert(r, instants) for r in rows]
        return
    after = -1
    while True:
        rows = sync(
            lambda c, a=after: c.execute(
                select + " WHERE seq > ? ORDER BY seq LIMIT ?", (a, CHUNK)
            ).fetchall()
        )
        if not rows:
            return
        yield [_convert(r, instants) for r in rows]
        after = rows[-1][0]


def _convert(row: Sequence[Any], instants: frozenset[int]) -> tuple[Any, ...]:
    return tuple(
        parse_utc(v) if i in instants else (bytes(v) if isinstance(v, memoryview) else v)
        for i, v in enumerate(row)
    )


def _url_problem(url: str) -> str | None:
    """Why `url` is no PostgreSQL target (`[daemon] database`'s rule), or None."""
    from watcherd.config.daemon import as_database
    from watcherd.config.schema import At, Invalid, Problems

    try:
        as_database(url, At("--to", Problems()))
    except Invalid as exc:
        return exc.reason or "not a PostgreSQL URL"
    return None
