"""Replicas on PostgreSQL (SPEC §10 `replicas`, §12): dispatch throughput of three replicas,
and the failover time after SIGKILL of a schedule's owner.

A PostgreSQL server is started for the bench (tests/postgres.py: initdb + pg_ctl in a temp
dir, fsync and synchronous_commit on). Three real `watcherd run` daemons share one database
(`[daemon] database`, replica_id r1..r3, default lease_ttl 15 s) and an `http` pipeline
POSTing to a loopback sink in its own process.

1. dispatch_runs_per_s: CLIENTS tasks in this process queue N manual runs through the store
   (`PgStore.insert_manual`: one commit + NOTIFY each, as an API trigger on any replica
   does); the replicas claim them (FOR UPDATE SKIP LOCKED), POST, and record the outcome.
   Figure: N / (last finished_at − first queued_at), read from the database. Every run must
   end Completed/Submitted at attempt 1 (claimed once).
   Baseline, same server, same settings, same run: a bare driver loop in one process, one
   connection, doing the same three commits per run with the store's own SQL (insert Queued,
   claim Running, Completed) back to back; measured before and after, averaged.
   Goal: ≥ 0.7× the bare loop.
2. failover_s: 12 Minute recurrences whose start times are spread over the seconds of a
   minute (a slot due every 5 s). Before a slot is due, its schedule's owner (the leases
   table) is SIGKILLed; the figure is the time from the kill to that slot's run being queued
   (queued_at, on the same machine's clock), the worst of KILLS kills (the killed replica is
   restarted in between). Goal: ≤ lease_ttl + 1 s, and exactly one run per slot.

Usage: python bench/replicas.py [--runs N] [--baseline-runs N] [--clients N] [--kills N]
Needs the engine's replica wiring (`watcherd run` with `[daemon] database`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))
from _common import Daemon, emit  # noqa: E402
from dispatch import sink  # noqa: E402

BENCH = "replicas"
LEASE_TTL = 15.0
TOKEN = "bench-token-0123456789"

CONFIG = """\
[daemon]
state_dir = "{state}"
api = ""
log_format = "json"
database = "{url}"
replica_id = "{rid}"
token = "{token}"
max_concurrent_runs = 8

[pipelines.hook]
kind = "http"
url = "http://127.0.0.1:{port}/hook"

[[schedules]]
name = "hook"
pipeline = "hook"
experiment_name = "bench"
recurrence = {{ frequency = "Month", interval = 1, start_time = "2099-01-01T00:00:00" }}
{extra}"""

MINUTES = "".join(
    f"""
[[schedules]]
name = "m{i:02d}"
pipeline = "hook"
experiment_name = "failover"
recurrence = {{ frequency = "Minute", interval = 1, start_time = "2026-01-01T00:00:{i * 5:02d}" }}
"""
    for i in range(12)
)


def _emit(figure: str, value: float, baseline: float | None, goal: str, met: bool) -> None:
    emit(BENCH, figure, value, baseline=baseline, goal=goal, met=met)


# ── the bare loop ────────────────────────────────────────────────────────────


async def bare_runs_per_s(url: str, n: int) -> float:
    """Three commits per run on one connection, the store's SQL, nothing else."""
    import psycopg

    from watcherd.core.models import RunStatus
    from watcherd.core.runs import NewRun
    from watcherd.state.postgres import runs as runs_sql

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            now = datetime.now(UTC)
            run = NewRun(
                schedule_id="bare",
                pipeline_id="p",
                experiment="bare",
                dedup=f"manual:{uuid.uuid4()}",
                trigger={"kind": "manual", "by": "bench", "i": i},
                parameters={},
            )
            async with conn.transaction():
                (rid,) = await runs_sql.insert_runs(conn, [run], now)
            async with conn.transaction():
                await runs_sql.claim_run(conn, rid, "bare", now, False)
            async with conn.transaction():
                await runs_sql.transition_run(
                    conn, rid, RunStatus.COMPLETED, [RunStatus.RUNNING], None,
                    {"finished_at": now, "attempts": [{"attempt": 1}]},
                )  # fmt: skip
        return n / (time.perf_counter() - t0)
    finally:
        await conn.close()


# ── the replicas ─────────────────────────────────────────────────────────────


def _replica(work: Path, name: str, rid: str, url: str, port: int, extra: str = "") -> Daemon:
    state = work / name / "state"
    text = CONFIG.format(state=state, url=url, rid=rid, token=TOKEN, port=port, extra=extra)
    return Daemon(work, name, text)


async def _queue_runs(url: str, n: int, clients: int) -> None:
    from watcherd.core.runs import NewRun
    from watcherd.engine.clock import SystemClock
    from watcherd.state.postgres import open_pg

    store, _ = await open_pg(
        url, replica_id="bench", lease_ttl=timedelta(seconds=LEASE_TTL), clock=SystemClock()
    )
    try:
        rows = await store.load_schedules()
        (hook,) = [s for s in rows if s.name == "hook"]
        pipes = await store.load_pipelines()
        pipeline = next(p.id for p in pipes.values() if p.name == "hook")
        left = iter(range(n))

        async def client() -> None:
            for _ in left:
                run = NewRun(
                    schedule_id=hook.id,
                    pipeline_id=pipeline,
                    experiment="bench",
                    dedup=f"manual:{uuid.uuid4()}",
                    trigger={"kind": "manual", "by": "bench"},
                    parameters={},
                )
                await store.insert_manual(run, None, datetime.now(UTC))

        async with asyncio.TaskGroup() as tg:
            for _ in range(clients):
                tg.create_task(client())
    finally:
        await store.close()


def _query(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        return list(conn.execute(sql, args).fetchall())  # type: ignore[call-overload]


def dispatch(url: str, work: Path, port: int, n: int, clients: int) -> tuple[float, str]:
    """Runs/s through three replicas; (figure, problems)."""
    daemons = [_replica(work, f"d{i}", f"r{i}", url, port) for i in (1, 2, 3)]
    try:
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_ready(120)
        asyncio.run(_queue_runs(url, n, clients))
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            ((left,),) = _query(
                url, "SELECT count(*) FROM runs WHERE status IN ('Queued', 'Running')"
            )
            if left == 0:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("replicas: runs still pending after 600 s")
    finally:
        for d in daemons:
            d.stop()
    ((first, last, total, bad, by),) = _query(
        url,
        "SELECT min(queued_at), max(finished_at), count(*), count(*) FILTER (WHERE status NOT"
        " IN ('Completed', 'Submitted') OR attempt <> 1), count(DISTINCT claimed_by)"
        " FROM runs WHERE experiment = 'bench'",
    )
    problems = "" if total == n and not bad else f"{total}/{n} runs, {bad} not ok or retried"
    if by != 3:
        problems += f" (claimed by {by} replicas)"
    assert isinstance(first, datetime) and isinstance(last, datetime)
    return n / (last - first).total_seconds(), problems


def failover(url: str, work: Path, port: int, kills: int) -> tuple[float, str]:
    """The worst kill → slot-queued delay over `kills` SIGKILLs of an owner."""
    daemons = {f"r{i}": _replica(work, f"f{i}", f"r{i}", url, port, MINUTES) for i in (1, 2, 3)}
    problems = ""
    worst = 0.0
    try:
        for d in daemons.values():
            d.start()
        for d in daemons.values():
            d.wait_ready(120)
        time.sleep(2 * LEASE_TTL)  # spread over the three
        for _ in range(kills):
            now = time.time()
            due = (int(now) // 5 + 2) * 5  # the slot after next, 5-10 s away
            sec = due % 60
            sched = f"m{sec // 5:02d}"
            rows = _query(
                url,
                "SELECT l.owner FROM leases l JOIN schedules s ON s.id = l.schedule_id"
                " WHERE s.name = %s AND l.expires_at > now()",
                sched,
            )
            if not rows:
                problems += f" {sched} had no owner;"
                continue
            owner = str(rows[0][0])
            time.sleep(max(0.0, due - 0.3 - time.time()))
            victim = daemons[owner]
            assert victim.proc is not None
            victim.proc.send_signal(signal.SIGKILL)
            killed = time.time()
            victim.proc.wait()
            slot = datetime.fromtimestamp(due, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            deadline = time.monotonic() + 4 * LEASE_TTL
            got: list[tuple[object, ...]] = []
            while time.monotonic() < deadline:
                got = _query(
                    url,
                    "SELECT r.queued_at FROM runs r JOIN schedules s ON s.id = r.schedule_id"
                    " WHERE s.name = %s AND r.trigger LIKE %s",
                    sched,
                    f'%"{slot}"%',
                )
                if got:
                    break
                time.sleep(0.05)
            if len(got) != 1:
                problems += f" {sched} {slot}: {len(got)} runs;"
                continue
            queued = got[0][0]
            assert isinstance(queued, datetime)
            delay = queued.timestamp() - killed
            worst = max(worst, delay)
            sys.stderr.write(f"failover: killed {owner} ({sched} due {slot}): {delay:.2f} s\n")
            victim.stop()  # already dead: closes its notify socket
            victim.start()
            victim.wait_ready(120)
            time.sleep(2 * LEASE_TTL)  # rebalanced again
        ((dups,),) = _query(
            url,
            "SELECT count(*) FROM (SELECT schedule_id, dedup FROM runs GROUP BY 1, 2"
            " HAVING count(*) > 1) d",
        )
        if dups:
            problems += f" {dups} slots with more than one run;"
    finally:
        for d in daemons.values():
            d.stop()
    return worst, problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=3000)
    p.add_argument("--baseline-runs", type=int, default=1000)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--kills", type=int, default=2)
    args = p.parse_args(argv)
    from tests.postgres import PostgresServer

    work = Path(tempfile.mkdtemp(prefix="watcherd-bench-replicas-"))
    os.chmod(work, 0o755)
    try:
        with PostgresServer.launch() as server, sink() as port:
            url = server.dsn(server.create_database("bench"))
            from watcherd.state.postgres.schema import migrate

            async def prepare() -> None:
                import psycopg

                conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
                try:
                    await migrate(conn)
                finally:
                    await conn.close()

            asyncio.run(prepare())
            b0 = asyncio.run(bare_runs_per_s(url, args.baseline_runs))
            value, problems = dispatch(url, work, port, args.runs, args.clients)
            b1 = asyncio.run(bare_runs_per_s(url, args.baseline_runs))
            if problems:
                sys.stderr.write(f"replicas: dispatch: {problems}\n")
            base = (b0 + b1) / 2
            _emit(
                "dispatch_runs_per_s",
                value,
                base,
                ">= 0.7x a bare driver loop doing the same commits",
                value >= 0.7 * base and not problems,
            )
            fail_url = server.dsn(server.create_database("failover"))
            worst, problems = failover(fail_url, work, port, args.kills)
            if problems:
                sys.stderr.write(f"replicas: failover:{problems}\n")
            _emit(
                "failover_s",
                worst,
                LEASE_TTL,
                f"next slot <= lease_ttl + 1 s ({LEASE_TTL + 1:g} s), one run per slot",
                0 < worst <= LEASE_TTL + 1 and not problems,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
