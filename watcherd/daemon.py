"""Daemon lifecycle: the wiring, and the only place that picks implementations.

It opens the state store, hands the engine its pollers and dispatchers (`ports`), serves the
API, and owns signals, sd_notify, reload, retention and shutdown.

Size: a little over 400 lines; the wiring (`build_engine`, `DefaultPollers`,
`DefaultDispatchers`) and the lifecycle are kept together so one file shows what runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from watcherd import config as config_mod
from watcherd import logs, statefiles
from watcherd.core.errors import AlreadyRunning, ConfigErrors, IncompatibleStore, StateError
from watcherd.core.models import (
    Config,
    Datastore,
    DatastoreTrigger,
    LocalDatastore,
    Schedule,
    Status,
)
from watcherd.engine.clock import Clock, clock_from_env
from watcherd.engine.engine import Engine
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import ChangeSink, Cluster, Dispatcher, Poller, PollHealth, RunStore
from watcherd.engine.retry import backoff_delay
from watcherd.notify import Notifier
from watcherd.services.manager import Manager
from watcherd.state.sqlite.cluster import SoloCluster
from watcherd.state.sqlite.store import SqliteStore

if TYPE_CHECKING:
    from watcherd.pollers.blob_queue import QueueHub

__all__ = ["Daemon", "DefaultDispatchers", "DefaultPollers", "build_engine", "run_daemon"]

log = structlog.get_logger(__name__)

ShutdownTrigger = Callable[[], Awaitable[object]]


class DefaultPollers:
    """The PollerFactory: local directories and Azure Blob prefixes (SDKs imported lazily).

    Every blob poller of the daemon gets the same QueueHub, made with the first one and kept
    across reloads, so a queue named by several schedules has one consumer (SPEC §4). The hub
    owns no task or client: each consumer runs in, and closes with, the poller serving it,
    which the engine cancels at shutdown.
    """

    def __init__(self, clock: Clock, metrics: Metrics) -> None:
        self.clock, self.metrics = clock, metrics
        self._hub: QueueHub | None = None
        # Whether other replicas are live now (they may have what this one lacks): set by
        # `build_engine` for replicas on PostgreSQL; alone (or SQLite) this one keeps all.
        self.others: Callable[[], bool] = lambda: False
        self._missing: set[str] = set()  # local roots reported missing (logged once each)

    def poller(
        self,
        schedule: Schedule,
        datastore: Datastore,
        *,
        sink: ChangeSink,
        health: PollHealth,
        max_pending: int,
    ) -> Poller:
        if isinstance(datastore, LocalDatastore):
            from watcherd.pollers.local import LocalPoller

            return LocalPoller(
                schedule=schedule, datastore=datastore, sink=sink, health=health,
                clock=self.clock, max_pending=max_pending, metrics=self.metrics,
            )  # fmt: skip
        from watcherd.pollers.blob import BlobPoller
        from watcherd.pollers.blob_queue import QueueHub

        if self._hub is None:
            self._hub = QueueHub.for_daemon(self.clock, self.metrics)
        return BlobPoller(
            schedule=schedule, datastore=datastore, sink=sink, health=health,
            clock=self.clock, max_pending=max_pending, metrics=self.metrics, hub=self._hub,
        )  # fmt: skip

    def can_serve(self, datastore: Datastore) -> bool:
        # A root this replica cannot read is another host's to watch (SPEC §12). A missing
        # one is too, with replicas: another host may have it (logged here, once); alone, it
        # is still ours to report (its poller logs and retries it, SPEC §4).
        if not isinstance(datastore, LocalDatastore):
            return True
        root = str(datastore.root)
        if os.path.exists(root):
            self._missing.discard(root)
            return os.access(root, os.R_OK | os.X_OK)
        if not self.others():
            return True
        if root not in self._missing:
            self._missing.add(root)
            log.warning("local_root_missing", datastore=datastore.name, root=root,
                        reason="left to the replicas that have it")  # fmt: skip
        return False

    def locate(self, datastore: Datastore, name: bytes) -> tuple[bytes | None, str | None]:
        if isinstance(datastore, LocalDatastore):
            return os.path.join(os.fsencode(datastore.root), name), None
        from watcherd.pollers.blob import blob_url

        return None, blob_url(datastore, name)


class DefaultDispatchers:
    """The DispatcherFactory: one dispatcher per pipeline kind, imported on first use (aiohttp
    and azure only when a pipeline needs them)."""

    def __init__(self) -> None:
        self._made: dict[str, Dispatcher] = {}

    def __call__(self, kind: str) -> Dispatcher:
        d = self._made.get(kind)
        if d is None:
            d = self._made[kind] = self._make(kind)
        return d

    @staticmethod
    def _make(kind: str) -> Dispatcher:
        if kind == "command":
            from watcherd.dispatch.command import CommandDispatcher

            return CommandDispatcher()
        if kind == "http":
            from watcherd.dispatch.http import HttpDispatcher

            return HttpDispatcher()
        if kind == "azureml":
            from watcherd.dispatch.azureml import AzureMLDispatcher

            return AzureMLDispatcher()
        if kind == "batch_endpoint":
            from watcherd.dispatch.batch import BatchEndpointDispatcher

            return BatchEndpointDispatcher()
        raise KeyError(kind)

    async def aclose(self) -> None:
        for d in self._made.values():
            await d.aclose()


def build_engine(
    cfg: Config, store: RunStore, clock: Clock, cluster: Cluster | None = None
) -> Engine:
    """The engine with the default pollers and dispatchers (close it with `engine.close()`);
    without a cluster, the one daemon of a SQLite state."""
    metrics = Metrics()
    pollers = DefaultPollers(clock, metrics)
    engine = Engine(
        cfg,
        store,
        clock,
        cluster=cluster or SoloCluster(statefiles.replica_id(cfg), clock),
        pollers=pollers,
        dispatchers=DefaultDispatchers(),
        metrics=metrics,
    )
    if cluster is not None:
        leases = engine.arming.leases
        pollers.others = lambda: leases.replicas > 1
    return engine


class Daemon:
    """One running watcherd."""

    def __init__(
        self, config_path: Path, env: Mapping[str, str], *, clock: Clock | None = None
    ) -> None:
        self.config_path = config_path
        self.env = dict(env)
        self.clock = clock or clock_from_env(dict(env))
        self.notifier = Notifier(env)
        self.url: str | None = None
        self.engine: Engine | None = None
        self._stop = asyncio.Event()
        self._reloads: asyncio.Queue[None] = asyncio.Queue()

    async def run(self, cfg: Config, *, shutdown_trigger: ShutdownTrigger | None = None) -> int:
        async with AsyncExitStack() as stack:
            self._install_signals(stack, shutdown_trigger is None)
            try:
                opened = await self._open_state(cfg)
            except AlreadyRunning as exc:
                log.error("already_running", error=str(exc))
                return 1
            except (StateError, OSError) as exc:
                error = str(exc)
                if cfg.daemon.state_dir.exists() and not cfg.daemon.state_dir.is_dir():
                    error = f"state_dir {cfg.daemon.state_dir} is not a directory"
                log.error("state_unavailable", error=error)
                return 1
            if opened is None:  # stopped while waiting for the database
                return 0
            store, cluster = opened
            stack.push_async_callback(store.close)
            try:
                token, token_path = statefiles.token(cfg)
            except OSError as exc:  # a token to generate, and no room or right to keep it
                log.error("state_unavailable", error=f"token file: {statefiles.os_error(exc)}")
                return 1
            self.engine = engine = build_engine(cfg, store, self.clock, cluster)
            stack.push_async_callback(engine.close)
            try:
                await engine.prepare()
            except ConfigErrors as exc:
                log.error("config_invalid", errors=[str(e) for e in exc.errors])
                return 2
            except StateError as exc:  # the store went away mid-start, or is too new
                log.error("state_unavailable", error=str(exc))
                return 1
            manager = Manager(engine)
            if cfg.daemon.api:
                from watcherd.api.app import make_app, serve

                app = make_app(
                    manager, token=token, bind=cfg.daemon.api, api_hosts=cfg.daemon.api_hosts
                )
                try:
                    self.url = await serve(app, cfg.daemon.api, stack)
                except OSError as exc:  # in use, not an address of this host, unresolvable
                    log.error("api_bind_failed", api=cfg.daemon.api, error=statefiles.os_error(exc))
                    return 1
                self._write_discovery(cfg, token_path)
            incompatible: list[str] = []
            try:
                await self._serve(cfg, engine, shutdown_trigger)
            except* IncompatibleStore as group:  # a newer watcherd migrated the database
                incompatible.append(str(group.exceptions[0]))
            if incompatible:
                log.error("state_incompatible", error=incompatible[0])
                return 1
            log.info("daemon_stopped")
        self.notifier.close()
        return 0

    async def _serve(
        self, cfg: Config, engine: Engine, shutdown_trigger: ShutdownTrigger | None
    ) -> None:
        """Run the engine and the daemon's own loops until a stop is asked for."""
        async with asyncio.TaskGroup() as tg:
            from watcherd.dispatch.process import Reaper

            reaper = tg.create_task(Reaper().run())  # zombies of adopted orphans (PID 1)
            engine_task = tg.create_task(engine.run())
            await engine.started.wait()
            self.notifier.ready(self._summary())
            gc.freeze()  # start-up objects leave the collector's generations
            gc.enable()
            log.info(
                "daemon_ready",
                url=self.url,
                schedules=len(engine.schedules),
                state_dir=str(cfg.daemon.state_dir),
            )
            helpers = [
                tg.create_task(self._reload_loop()),
                tg.create_task(self._watchdog()),
                tg.create_task(self._retention()),
            ]
            if shutdown_trigger is not None:
                helpers.append(tg.create_task(self._trigger_stop(shutdown_trigger)))
            await self._stop.wait()
            log.info("daemon_stopping")
            self.notifier.stopping()
            for h in helpers:
                h.cancel()
            engine.stop()
            await engine_task
            reaper.cancel()  # after the drain: orphans stopped at shutdown are reaped too

    async def _open_state(self, cfg: Config) -> tuple[RunStore, Cluster | None] | None:
        """SQLite in state_dir (the default), or PostgreSQL for replicas: a database that
        cannot be reached yet is retried with backoff, logged once (SPEC §12)."""
        if not cfg.daemon.database:
            return SqliteStore(cfg.daemon.state_dir), None
        from watcherd.state.postgres import SchemaTooNew, open_pg

        cfg.daemon.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        attempt = 0
        while not self._stop.is_set():
            try:
                return await open_pg(
                    cfg.daemon.database,
                    replica_id=statefiles.replica_id(cfg),
                    lease_ttl=cfg.daemon.lease_ttl,
                    clock=self.clock,
                )
            except SchemaTooNew:
                raise
            except StateError as exc:
                attempt += 1
                if attempt == 1:
                    log.error("database_unavailable", error=str(exc))
                delay = backoff_delay(attempt, timedelta(seconds=30))
                await self.clock.sleep_until(
                    self.clock.now() + timedelta(seconds=delay), self._stop
                )
        return None

    async def _trigger_stop(self, trigger: ShutdownTrigger) -> None:
        await trigger()
        self._stop.set()

    def _install_signals(self, stack: AsyncExitStack, install: bool) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, self._reloads.put_nowait, None)
            stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        if not install:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_stop_signal, sig)
                stack.callback(loop.remove_signal_handler, sig)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("forced_exit", signal=sig.name)
            from watcherd.dispatch.process import kill_all_groups

            kill_all_groups()  # no command outlives it (its run is re-queued at the next start)
            os._exit(1)  # a second signal forces the exit
        log.info("signal_received", signal=sig.name)
        self._stop.set()

    def _write_discovery(self, cfg: Config, token_path: Path) -> None:
        assert self.url is not None
        doc = {"url": self.url, "token_file": str(token_path.resolve())}
        path = cfg.daemon.state_dir / "config.json"
        try:  # the CLI's way to this daemon; the daemon itself runs without it
            statefiles.write_private(path, json.dumps(doc), 0o600)
        except OSError as exc:
            log.warning("discovery_not_written", path=str(path), error=statefiles.os_error(exc))
        runtime = self.env.get("RUNTIME_DIRECTORY")
        if runtime:
            with contextlib.suppress(OSError):
                path = Path(runtime.split(":")[0]) / "config.json"
                statefiles.write_private(path, json.dumps({"url": self.url}), 0o644)

    def _summary(self) -> str:
        eng = self.engine
        if eng is None:
            return "starting"
        active = sum(1 for s in eng.schedules.values() if s.status is Status.ACTIVE)
        text = (
            f"{active} active schedules, {eng.runner.total_running()} running, "
            f"{eng.runner.total_queued()} queued"
        )
        if eng.reload_error:
            lines = eng.reload_error.splitlines()
            first = lines[1].strip() if len(lines) > 1 else lines[0]
            more = f" (+{len(lines) - 2} more)" if len(lines) > 2 else ""
            text += f"; last reload rejected: {first}{more}"
        return text

    async def _reload_loop(self) -> None:
        while True:
            await self._reloads.get()
            await self._reload()

    async def _reload(self) -> None:
        assert self.engine is not None
        self.notifier.reloading()
        log.info("reload_started", config=str(self.config_path))
        try:
            new = await asyncio.to_thread(config_mod.load, self.config_path, self.env)
            logs.add_secrets(new.secrets)  # the log masks them from now on, as the API does
            await self.engine.reload(new)
            self.engine.reload_error = None
            log.info("reload_done", schedules=len(self.engine.schedules))
        except ConfigErrors as exc:
            self.engine.reload_error = str(exc)
            log.error("reload_rejected", errors=[str(e) for e in exc.errors])
        except Exception as exc:  # never let a reload take the daemon down
            self.engine.reload_error = repr(exc)
            log.exception("reload_failed")
        self.notifier.send("READY=1", f"STATUS={self._summary()}")

    def healthy(self) -> bool:
        """Every poller finished an attempt within max(3 × interval, 5 min) (SPEC §9)."""
        eng = self.engine
        if eng is None:
            return False
        now = self.clock.monotonic()
        for sid, st in eng.poll.items():
            s = eng.schedules.get(sid)
            if s is None or not isinstance(s.trigger, DatastoreTrigger):
                continue
            if eng.runner.queued(sid) >= eng.config.daemon.max_pending:
                continue  # paused by backpressure (SPEC §4): waiting, not stuck
            limit = max(3 * s.trigger.polling_interval, timedelta(minutes=5)).total_seconds()
            since = st.last_mono if st.last_mono is not None else eng.started_mono
            if now - since > limit:
                return False
        return True

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        if not interval:
            await asyncio.Event().wait()
        assert interval is not None
        while True:
            await asyncio.sleep(interval / 2)
            if self.healthy():
                self.notifier.watchdog()
                self.notifier.status(self._summary())
            else:
                log.error("watchdog_withheld", reason="a poller has not finished a poll attempt")

    async def _retention(self) -> None:
        assert self.engine is not None
        store = self.engine.store
        while True:
            cfg = self.engine.config
            before = self.clock.now() - cfg.daemon.retention
            try:
                n = await store.prune(before)
                if n:
                    log.info("runs_pruned", count=n)
            except StateError as exc:
                log.error("prune_failed", error=str(exc))
            await self.clock.sleep(3600)


async def run_daemon(
    config_path: Path,
    env: Mapping[str, str],
    *,
    cfg: Config | None = None,
    shutdown_trigger: ShutdownTrigger | None = None,
    clock: Clock | None = None,
) -> int:
    """Run a daemon until a signal (or `shutdown_trigger`); returns the exit code."""
    from watcherd.dispatch.process import set_child_subreaper

    set_child_subreaper()  # orphans of runs stay ours: stoppable (#11.18) and reaped (#17)
    cfg = cfg or config_mod.load(config_path, env)
    return await Daemon(config_path, env, clock=clock).run(cfg, shutdown_trigger=shutdown_trigger)
