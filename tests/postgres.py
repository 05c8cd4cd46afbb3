"""A real PostgreSQL server (Debian's `postgresql` package) for the store and replica tests.

The fixtures are registered for every test module by `tests/conftest.py` (`pytest_plugins`),
so `pg_server` starts once per session; a test just names the fixtures as parameters.

`pg_server` is session-scoped: one cluster made with `initdb` in a temp dir and run with
`pg_ctl` on 127.0.0.1 and a free port; tests may stop(), start() or restart() it (same port,
same data). `pg_database` makes a fresh database per test and yields its libpq URL for the
non-superuser role `watcherd` (trust auth), dropped after the test. `pg_store_url` is faster
for store tests: one database migrated to watcherd's schema once per session, every table
emptied before each test (CREATE DATABASE + migration cost ~1 s per test with fsync on).

Roles: `postgres` (superuser, trust, for admin work: `url`), `watcherd` (trust, CREATEDB, owns
every test database) and `watcherd_pw` (member of `watcherd`, scram-sha-256 with PASSWORD, for
tests of password handling: `password_dsn()`, `pgpass_line()`).

Binaries come from /usr/lib/postgresql/<ver>/bin (the highest version >= 13; override with
WATCHERD_PG_BINDIR); PATH and any /usr/local/bin symlinks are not used. `initdb` refuses to run
as root, so as root every server command runs as the `postgres` user (`runuser`) in a temp dir
under /tmp that it owns. Without the binaries the tests are skipped, unless CI is set: then they
fail. Install: `apt-get install postgresql`.

`PostgresServer` also works outside pytest (bench/)::

    with PostgresServer.launch() as server:
        url = server.dsn(server.create_database())

A reaper process stops the server and removes its directory when this process exits, however
it exits (even SIGKILL): it waits for EOF on a pipe only this process holds.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import TupleRow

__all__ = [
    "APP_USER",
    "MIN_VERSION",
    "PASSWORD",
    "PASSWORD_USER",
    "PostgresServer",
    "find_pg_bindir",
    "pg_database",
    "pg_server",
    "pg_store_url",
]

MIN_VERSION = 13
SUPERUSER = "postgres"
APP_USER = "watcherd"
PASSWORD_USER = "watcherd_pw"
# Characters that need quoting in a URL (: @ / %) and escaping in .pgpass (: \).
PASSWORD = r"pw:s3cr@t/%x\y"
OS_USER = "postgres"  # the unprivileged account the server runs as when we are root
START_TIMEOUT = 30

_PG_ENV_DROP = re.compile(r"^PG[A-Z]+$")


def find_pg_bindir() -> Path | None:
    """The bin directory of the highest installed PostgreSQL >= 13, or None."""
    override = os.environ.get("WATCHERD_PG_BINDIR", "").strip()
    if override:
        path = Path(override)
        return path if (path / "initdb").is_file() else None
    found: list[tuple[int, Path]] = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bindir = Path(initdb).parent
        try:
            version = int(bindir.parent.name)  # Debian: /usr/lib/postgresql/15/bin
        except ValueError:
            continue  # 9.6 and older name their directory with a dot
        needed = ("initdb", "pg_ctl", "postgres")
        if version >= MIN_VERSION and all(os.access(bindir / n, os.X_OK) for n in needed):
            found.append((version, bindir))
    return max(found)[1] if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env() -> dict[str, str]:
    """Our environment without PG* variables (PGDATA, PGPORT… would steer pg_ctl) and with C
    messages, so server errors are in English whatever the test machine's locale is."""
    env = {k: v for k, v in os.environ.items() if not _PG_ENV_DROP.match(k)}
    env["LC_ALL"] = "C"
    env.pop("LANGUAGE", None)
    return env


_REAPER = r"""
import json, shutil, subprocess, sys
stop, root = json.loads(sys.argv[1]), sys.argv[2]
sys.stdin.buffer.read()  # EOF: the test process closed the pipe or died
subprocess.run(stop, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
               timeout=60, check=False)
shutil.rmtree(root, ignore_errors=True)
"""


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, run with pg_ctl; stop()/start() keep port and data."""

    def __init__(self, bindir: Path, root: Path, run_as: str | None) -> None:
        self.bindir = bindir
        self.root = root  # owned by the server's OS user, mode 0700
        self.datadir = root / "data"
        self.socket_dir = root
        self.logfile = root / "postgres.log"
        self.run_as = run_as
        self.host = "127.0.0.1"
        self.port = 0
        self._db_counter = 0
        self._lock = threading.Lock()
        self._reaper: subprocess.Popen[bytes] | None = None

    # ---- making one -------------------------------------------------------------------------

    @classmethod
    def launch(cls, bindir: Path | None = None) -> PostgresServer:
        """initdb a new cluster in a new temp dir and start it; raise RuntimeError on failure."""
        bindir = bindir or find_pg_bindir()
        if bindir is None:
            raise RuntimeError(f"no PostgreSQL >= {MIN_VERSION} in /usr/lib/postgresql/*/bin")
        run_as = OS_USER if os.geteuid() == 0 else None
        # As root: a dir under /tmp (world-traversable), not TMPDIR or pytest's tmp_path, whose
        # parents may be 0700 root. mkdtemp makes it 0700; hand it to the server's user.
        root = Path(tempfile.mkdtemp(prefix="watcherd-pg-", dir="/tmp" if run_as else None))
        server = cls(bindir, root, run_as)
        try:
            if run_as:
                pw = pwd.getpwnam(run_as)
                os.chown(root, pw.pw_uid, pw.pw_gid)
            server._start_reaper()
            server._initdb()
            server._first_start()
            server._create_roles()
        except BaseException:
            server.close()
            raise
        return server

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cmd(self, *argv: str) -> list[str]:
        if self.run_as:
            return ["runuser", "-u", self.run_as, "--", *argv]
        return list(argv)

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        # cwd: the server's user must be able to read its cwd (initdb fails in /root or /work).
        proc = subprocess.run(
            self._cmd(*argv),
            cwd=self.root,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return proc

    def _pg_ctl_stop_argv(self, mode: str) -> list[str]:
        pg_ctl = str(self.bindir / "pg_ctl")
        return [pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop"]

    def _start_reaper(self) -> None:
        stop = json.dumps(self._cmd(*self._pg_ctl_stop_argv("immediate")))
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", _REAPER, stop, str(self.root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # not killed by the terminal's Ctrl-C with us
        )
        atexit.register(self.close)

    def _initdb(self) -> None:
        proc = self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.datadir),
            "-U", SUPERUSER,
            "-A", "trust",
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",  # the cluster is thrown away; the server itself runs with fsync on
            "--no-instructions",
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {(proc.stdout + proc.stderr).strip()[-1500:]}")
        (self.datadir / "pg_hba.conf").write_text(
            "# TYPE  DATABASE  USER          ADDRESS        METHOD\n"
            "local   all       all                          trust\n"
            f"host    all       {PASSWORD_USER}   127.0.0.1/32   scram-sha-256\n"
            "host    all       all           127.0.0.1/32   trust\n"
        )

    def _write_port(self) -> None:
        with (self.datadir / "postgresql.conf").open("a") as f:
            f.write(
                "\n# watcherd tests\n"
                f"listen_addresses = '{self.host}'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "max_connections = 200\n"
                "password_encryption = 'scram-sha-256'\n"
                "timezone = 'UTC'\n"
                "log_timezone = 'UTC'\n"
                "lc_messages = 'C'\n"
            )

    def _first_start(self) -> None:
        # The free port may be taken between the probe and the bind: then try another.
        for attempt in range(3):
            self.port = _free_port()
            self._write_port()  # later settings in the file win over earlier ones
            try:
                self.start()
                return
            except RuntimeError as e:
                if "could not bind" not in str(e) or attempt == 2:
                    raise

    def _create_roles(self) -> None:
        with self.admin_connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB").format(sql.Identifier(APP_USER)))
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(PASSWORD_USER), sql.Literal(PASSWORD), sql.Identifier(APP_USER)
                )
            )

    # ---- running ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        proc = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status")
        return proc.returncode == 0

    def start(self) -> None:
        """Start the server (no-op if running); return once it accepts connections."""
        if self.running:
            return
        proc = self._run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.datadir),
            "-l", str(self.logfile),
            "-w", "-t", str(START_TIMEOUT),
            "start",
            timeout=START_TIMEOUT + 10,
        )  # fmt: skip
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
            raise RuntimeError(
                f"pg_ctl start failed: {(proc.stdout + proc.stderr).strip()[-500:]}\n"
                f"{log.strip()[-1500:]}"
            )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: mode "fast" (clean), "immediate" (like a crash: recovery at the
        next start) or "smart" (wait for clients). Clients see their connections drop."""
        if not self.running:
            return
        proc = self._run(*self._pg_ctl_stop_argv(mode))
        if proc.returncode != 0 and self.running:
            raise RuntimeError(f"pg_ctl stop failed: {(proc.stdout + proc.stderr).strip()}")

    def restart(self, mode: str = "fast") -> None:
        """stop(mode) then start(): same port, same data."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server for good and remove its directory (also run at exit)."""
        reaper, self._reaper = self._reaper, None
        if reaper is None:
            return
        try:
            atexit.unregister(self.close)
            if self.datadir.exists():
                self.stop("immediate")
        finally:
            assert reaper.stdin is not None
            reaper.stdin.close()  # the reaper stops what is left and removes the dir
            try:
                reaper.wait(timeout=90)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()

    # ---- URLs and databases -----------------------------------------------------------------

    def dsn(
        self, dbname: str = "postgres", user: str = APP_USER, password: str | None = None
    ) -> str:
        """A libpq URL to dbname on this server (role watcherd and trust auth by default)."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    @property
    def url(self) -> str:
        """The superuser's URL to the `postgres` database, for admin work."""
        return self.dsn("postgres", user=SUPERUSER)

    def password_dsn(self, dbname: str = "postgres", with_password: bool = True) -> str:
        """A URL for the password role; without the password it needs PGPASSWORD or a pgpass."""
        return self.dsn(dbname, PASSWORD_USER, PASSWORD if with_password else None)

    def pgpass_line(self, dbname: str = "*") -> str:
        """A ~/.pgpass line for the password role (':' and '\\' escaped)."""
        pw = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
        return f"{self.host}:{self.port}:{dbname}:{PASSWORD_USER}:{pw}\n"

    def admin_connect(self) -> psycopg.Connection[TupleRow]:
        """An autocommit superuser connection (close it, or use it in a with block)."""
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10)

    def create_database(self, name: str | None = None) -> str:
        """CREATE DATABASE name (default tNNN) OWNER watcherd; return the name."""
        if name is None:
            with self._lock:
                self._db_counter += 1
                name = f"t{self._db_counter:03d}"
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(APP_USER)
                )
            )
        return name

    def drop_database(self, name: str) -> None:
        """DROP DATABASE name WITH (FORCE): open connections to it are terminated."""
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def terminate_connections(self, dbname: str) -> int:
        """pg_terminate_backend every other client connection to dbname (a network fault as
        clients see it); return how many were terminated."""
        with self.admin_connect() as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            ).fetchone()
        return int(row[0]) if row else 0


def _require_postgres() -> Path:
    bindir = find_pg_bindir()
    reason = ""
    if bindir is None:
        reason = (
            f"PostgreSQL >= {MIN_VERSION} not found in /usr/lib/postgresql/*/bin "
            "(install: apt-get install postgresql)"
        )
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam(OS_USER)
        except KeyError:
            reason = f"running as root and there is no '{OS_USER}' user to run the server as"
        if shutil.which("runuser") is None:
            reason = "running as root and runuser (util-linux) is missing"
    if reason:
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false"):
            pytest.fail(reason + "; CI is set, so the PostgreSQL tests must run", pytrace=False)
        pytest.skip(reason)
    assert bindir is not None
    return bindir


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session; a test may stop(), start() or restart() it."""
    server = PostgresServer.launch(_require_postgres())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh database for this test: its libpq URL (role watcherd, owner, trust auth)."""
    pg_server.start()  # an earlier test may have left it stopped
    name = pg_server.create_database()
    try:
        yield pg_server.dsn(name)
    finally:
        pg_server.start()
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def _pg_store_db(pg_server: PostgresServer) -> Iterator[str]:
    import asyncio

    from watcherd.state.postgres.schema import migrate

    name = pg_server.create_database("watcherd_store")
    url = pg_server.dsn(name)

    async def go() -> None:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    # A thread of its own: the session fixture may be set up inside a running event loop.
    worker = threading.Thread(target=asyncio.run, args=(go(),))
    worker.start()
    worker.join()
    yield url


@pytest.fixture
def pg_store_url(pg_server: PostgresServer, _pg_store_db: str) -> str:
    """The URL of a database with watcherd's current schema and no rows (role watcherd)."""
    pg_server.start()  # an earlier test may have left it stopped
    with psycopg.connect(_pg_store_db, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '10s'")
        # DELETE, not TRUNCATE: a few rows, and TRUNCATE's new files cost an fsync each.
        with conn.transaction():
            rows = conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename NOT IN ('schema_version', 'deployment')"
            ).fetchall()
            for (table,) in rows:
                conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
            conn.execute("ALTER TABLE runs ALTER COLUMN seq RESTART")
            conn.execute(
                "UPDATE deployment SET config_hash = '', config_by = NULL, config_at = NULL"
            )
    return _pg_store_db
