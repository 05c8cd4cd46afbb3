"""The real-PostgreSQL fixture (tests/postgres.py) and the psycopg features the store relies on."""

# ruff: noqa: F811  (the imported fixtures are test parameters)

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from tests.postgres import APP_USER, PASSWORD, PostgresServer

REPO = Path(__file__).resolve().parent.parent


def test_connect_and_create_table(pg_server: PostgresServer, pg_database: str) -> None:
    with psycopg.connect(pg_database) as conn:
        user, version = conn.execute(
            "SELECT current_user, current_setting('server_version_num')::int"
        ).fetchone() or (None, 0)
        assert user == APP_USER
        assert version >= 130000
        settings: dict[str, str] = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('fsync', 'synchronous_commit', 'listen_addresses', 'port')"
            ).fetchall()
        )
        assert settings == {
            "fsync": "on",
            "synchronous_commit": "on",
            "listen_addresses": "127.0.0.1",
            "port": str(pg_server.port),
        }
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        conn.commit()
        assert conn.execute("SELECT v FROM t ORDER BY id").fetchall() == [("a",), ("b",)]


def test_each_test_gets_a_fresh_database(pg_server: PostgresServer, pg_database: str) -> None:
    dbname = pg_database.rsplit("/", 1)[1]
    assert dbname.startswith("t")
    with psycopg.connect(pg_database) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
        assert tables == (0,)


def test_password_from_url_pgpassword_and_pgpass(
    pg_server: PostgresServer,
    pg_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dbname = pg_database.rsplit("/", 1)[1]
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "absent"))
    no_password = pg_server.password_dsn(dbname, with_password=False)

    # In the URL (percent-encoded: the password has ':', '@', '/', '%' and '\').
    with psycopg.connect(pg_server.password_dsn(dbname)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("watcherd_pw",)
        conn.execute("CREATE TABLE owned_by_group (x int)")  # member of the owner role
    # Missing or wrong: refused, and the message does not carry the password.
    with pytest.raises(psycopg.OperationalError, match="no password supplied") as missing:
        psycopg.connect(no_password, connect_timeout=5)
    wrong = pg_server.dsn(dbname, "watcherd_pw", "not-the-Password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed") as bad:
        psycopg.connect(wrong, connect_timeout=5)
    for err in (missing.value, bad.value):
        assert PASSWORD not in str(err) and "not-the-Password" not in str(err)

    # PGPASSWORD
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    with psycopg.connect(no_password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    monkeypatch.delenv("PGPASSWORD")

    # A pgpass file (libpq ignores one readable by group or others).
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(pg_server.pgpass_line())
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    with psycopg.connect(no_password) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_bad_url_leaks_into_the_error(pg_server: PostgresServer) -> None:
    """Documents what the store must mask (SPEC §8): libpq quotes an unparsable URL whole,
    and the exception's pgconn keeps the password."""
    url = f"postgresql://watcherd_pw:{'s3cret'}@[127.0.0.1:{pg_server.port}/x"
    with pytest.raises(psycopg.ProgrammingError) as parse:
        psycopg.connect(url)
    assert "s3cret" in str(parse.value)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(pg_server.dsn("x", "watcherd_pw", "s3cret"), connect_timeout=5)
    assert "s3cret" not in str(refused.value)
    assert "s3cret" in repr(refused.value.pgconn)


def test_restart_keeps_data_and_port(pg_server: PostgresServer, pg_database: str) -> None:
    port = pg_server.port
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (v text)")
        conn.execute("INSERT INTO kept VALUES ('before restart')")
        pg_server.restart()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed
    assert pg_server.port == port
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT v FROM kept").fetchall() == [("before restart",)]


def test_immediate_stop_recovers_committed_data(
    pg_server: PostgresServer, pg_database: str
) -> None:
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE crash (v int)")
        conn.execute("INSERT INTO crash SELECT generate_series(1, 100)")
    pg_server.stop("immediate")  # no shutdown checkpoint: WAL replay at the next start
    assert not pg_server.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_database, connect_timeout=2)
    pg_server.start()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM crash").fetchone() == (100,)


async def test_listen_notify_round_trip(pg_database: str) -> None:
    listener = await psycopg.AsyncConnection.connect(pg_database, autocommit=True)
    sender = await psycopg.AsyncConnection.connect(pg_database)
    try:
        await listener.execute("LISTEN watcherd_changes")
        got: list[tuple[str, str, int]] = []

        async def listen() -> None:
            async for n in listener.notifies(timeout=10, stop_after=2):
                got.append((n.channel, n.payload, n.pid))

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.05)
        payload = json.dumps({"schedule": "s1", "op": "disable"})
        await sender.execute("SELECT pg_notify('watcherd_changes', %s)", (payload,))
        await asyncio.sleep(0.2)
        assert got == []  # delivered at commit, not before
        t0 = time.monotonic()
        await sender.commit()
        await sender.execute("NOTIFY watcherd_changes, 'second'")
        await sender.commit()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 1.0
        assert [(c, p) for c, p, _ in got] == [
            ("watcherd_changes", payload),
            ("watcherd_changes", "second"),
        ]
        assert got[0][2] == sender.info.backend_pid
    finally:
        await listener.close()
        await sender.close()


async def test_notifies_ends_with_an_error_when_the_connection_drops(
    pg_server: PostgresServer, pg_database: str
) -> None:
    listener = await psycopg.AsyncConnection.connect(pg_database, autocommit=True)
    try:
        await listener.execute("LISTEN c")

        async def listen() -> None:
            async for _ in listener.notifies(timeout=20):
                pass

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.1)
        dbname = pg_database.rsplit("/", 1)[1]
        assert await asyncio.to_thread(pg_server.terminate_connections, dbname) == 1
        with pytest.raises(psycopg.OperationalError):
            await asyncio.wait_for(task, 10)
        assert listener.closed  # the caller must reconnect, LISTEN again and re-read state
    finally:
        await listener.close()


async def test_skip_locked_and_advisory_locks(pg_database: str) -> None:
    async with (
        await psycopg.AsyncConnection.connect(pg_database) as a,
        await psycopg.AsyncConnection.connect(pg_database) as b,
    ):
        await a.execute("CREATE TABLE runs (id int PRIMARY KEY, status text NOT NULL)")
        await a.execute("INSERT INTO runs SELECT i, 'Queued' FROM generate_series(1, 3) i")
        await a.commit()
        claim = (
            "SELECT id FROM runs WHERE status = 'Queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
        )
        ra = await (await a.execute(claim)).fetchone()
        rb = await (await b.execute(claim)).fetchone()
        assert (ra, rb) == ((1,), (2,))
        await a.execute("UPDATE runs SET status = 'Running' WHERE id = 1")
        await b.rollback()  # b gives its row back
        await a.commit()
        rb = await (await b.execute(claim)).fetchone()
        assert rb == (2,)
        await b.commit()

        # Transaction-level advisory lock: held to commit, others can try without waiting.
        await a.execute("SELECT pg_advisory_xact_lock(4242)")
        r = await (await b.execute("SELECT pg_try_advisory_xact_lock(4242)")).fetchone()
        assert r == (False,)
        await b.rollback()
        waiter = asyncio.create_task(b.execute("SELECT pg_advisory_xact_lock(4242)"))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        await a.commit()
        await asyncio.wait_for(waiter, 5)
        await b.commit()


async def test_async_pool(pg_database: str) -> None:
    # open=False + open(): opening an async pool in its constructor is deprecated (a warning,
    # and this suite turns warnings into errors).
    async with AsyncConnectionPool(
        pg_database, min_size=1, max_size=3, open=False, kwargs={"autocommit": True}
    ) as pool:
        await pool.wait(timeout=10)

        # Each holds its connection until all three hold one: the pool must grow to 3 (a
        # sleep instead let one connection serve two callers when a new one was slow to open).
        held = asyncio.Barrier(3)

        async def pid() -> int:
            async with pool.connection() as conn:
                await held.wait()
                row = await (await conn.execute("SELECT pg_backend_pid()")).fetchone()
                assert row is not None
                return int(row[0])

        pids = await asyncio.wait_for(asyncio.gather(*(pid() for _ in range(3))), 20)
        assert len(set(pids)) == 3


def test_reaper_stops_the_server_when_its_process_is_killed() -> None:
    """A test process that dies by SIGKILL (no atexit, no fixture teardown) leaves no server."""
    code = (
        "import sys, time\n"
        "from tests.postgres import PostgresServer\n"
        "s = PostgresServer.launch()\n"
        "print(s.root, s.port, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        root, port = proc.stdout.readline().split()
        assert Path(root, "data", "postmaster.pid").exists()
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    deadline = time.monotonic() + 30
    while Path(root).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(root).exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://postgres@127.0.0.1:{port}/postgres", connect_timeout=2)


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root: the server must not run as root")
def test_server_runs_as_the_postgres_user(pg_server: PostgresServer) -> None:
    pid = int((pg_server.datadir / "postmaster.pid").read_text().split()[0])
    assert os.stat(f"/proc/{pid}").st_uid != 0
