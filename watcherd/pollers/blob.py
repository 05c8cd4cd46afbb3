"""Polls the blobs directly under an Azure Blob prefix and reports new or modified ones.

One `BlobPoller` serves one datastore schedule (SPEC §4). Each poll lists the prefix with
`walk_blobs(delimiter="/")`, so sub-prefixes (subdirectories) are never entered, and compares
each blob's ETag with the persisted snapshot. A new or changed ETag is one `FileChange`;
deletions only leave the snapshot. The Azure SDK is imported lazily: a daemon without blob
datastores never loads it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import structlog

from watcherd.core.errors import PollRejected, PollUnavailable, WatcherdError
from watcherd.core.matching import NameMatcher
from watcherd.core.models import BlobDatastore, DatastoreTrigger, Schedule
from watcherd.core.redact import connection_string_secrets, make_redactor
from watcherd.core.snapshot import Snapshot
from watcherd.core.snapshot import baseline_key as snapshot_key
from watcherd.engine.clock import Clock
from watcherd.engine.metrics import Metrics
from watcherd.engine.ports import ChangeSink, FileChange, PollHealth
from watcherd.engine.retry import backoff_delay

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.storage.blob.aio import ContainerClient

__all__ = ["BlobPoller", "baseline_key", "blob_prefix", "blob_url", "container_url"]

log = structlog.get_logger(__name__)

# Our own backoff is the retry loop (each attempt logged and reported to PollHealth), so the
# SDK's retry policy is switched off: its default waits 15 s, 45 s, ... before we hear anything.
_CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 0}
_BACKOFF_CAP = timedelta(minutes=5)
_DEV_ENDPOINT = "http://127.0.0.1:10000/devstoreaccount1"


# ── naming ────────────────────────────────────────────────────────────────────


def blob_prefix(path_on_datastore: str) -> str:
    """The listing prefix for a watched path: "" for the container root, else "path/"."""
    path = path_on_datastore.strip("/")
    return f"{path}/" if path else ""


def _parse_connection_string(conn: str) -> dict[str, str]:
    pairs = (item.partition("=") for item in conn.split(";"))
    return {key.strip().lower(): value.strip() for key, sep, value in pairs if sep}


def _strip_secrets(url: str) -> str:
    """A URL without userinfo, query or fragment (a SAS lives in the query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _account_endpoint(datastore: BlobDatastore) -> str:
    if datastore.account_url:
        return _strip_secrets(datastore.account_url).rstrip("/")
    fields = _parse_connection_string(datastore.connection_string or "")
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return _DEV_ENDPOINT
    if "blobendpoint" in fields:
        return _strip_secrets(fields["blobendpoint"]).rstrip("/")
    protocol = fields.get("defaultendpointsprotocol", "https")
    suffix = fields.get("endpointsuffix", "core.windows.net")
    return f"{protocol}://{fields.get('accountname', '')}.blob.{suffix}"


def container_url(datastore: BlobDatastore) -> str:
    """The container's URL, without any credential."""
    return f"{_account_endpoint(datastore)}/{quote(datastore.container, safe='')}"


def blob_url(datastore: BlobDatastore, name: str | bytes) -> str:
    """A blob's URL without credentials (`{name.url}`, WATCHERD_BLOB_URL).

    Args:
        datastore: the blob datastore holding the blob.
        name: the blob name (bytes are UTF-8, as listed).
    """
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name
    return f"{container_url(datastore)}/{quote(text, safe='/~', errors='surrogateescape')}"


def baseline_key(datastore: BlobDatastore, trigger: DatastoreTrigger) -> str:
    """Hash of what decides which blobs are watched: a change means a new baseline."""
    return snapshot_key(
        "azure_blob",
        container_url(datastore),
        blob_prefix(trigger.path_on_datastore),
        json.dumps(list(trigger.pattern)),
        json.dumps(list(trigger.ignore_globs)),
    )


# ── errors ────────────────────────────────────────────────────────────────────


def _first_line(text: object, limit: int = 300) -> str:
    return str(text).strip().splitlines()[0][:limit] if str(text).strip() else ""


def _code(exc: Exception) -> str:
    """The storage error code (e.g. ContainerNotFound), which the SDK sets on its errors."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


@contextmanager
def _map_azure_errors(container: str, prefix: str, scrub: Callable[[str], str]) -> Iterator[None]:
    """Translate azure.core (and transport) exceptions into PollUnavailable / PollRejected."""
    from azure.core import exceptions as az

    where = f"container {container!r} prefix {prefix!r}"
    try:
        yield
    except az.ResourceNotFoundError as exc:
        raise PollRejected(f"{where}: container not found ({_code(exc)})") from exc
    except az.ClientAuthenticationError as exc:  # 401/403 and credential failures
        detail = scrub(_first_line(exc.message))
        raise PollRejected(f"{where}: access denied: {detail}") from exc
    except az.HttpResponseError as exc:
        status = exc.status_code
        detail = scrub(f"HTTP {status} {_code(exc)}: {_first_line(exc.message)}")
        if status is None or status in (408, 429) or status >= 500:
            raise PollUnavailable(f"{where}: {detail}") from exc
        denied = "access denied: " if status in (401, 403) else ""
        raise PollRejected(f"{where}: {denied}{detail}") from exc
    except az.AzureError as exc:  # ServiceRequestError, ServiceResponseError, timeouts
        detail = scrub(_first_line(exc.message))
        raise PollUnavailable(f"{where}: cannot reach storage: {detail}") from exc
    except (TimeoutError, OSError) as exc:
        raise PollUnavailable(f"{where}: {type(exc).__name__}: {scrub(str(exc))}") from exc
    except ValueError as exc:  # malformed connection string or URL, found by the SDK
        raise PollRejected(f"{where}: invalid datastore settings: {scrub(str(exc))}") from exc


def _is_folder(metadata: dict[str, str] | None) -> bool:
    """ADLS Gen2 (hierarchical namespace) marks a directory's blob with hdi_isfolder=true."""
    return metadata is not None and str(metadata.get("hdi_isfolder", "")).lower() == "true"


# ── the poller ────────────────────────────────────────────────────────────────


class BlobPoller:
    """Polls one datastore schedule's blob prefix on a fixed cadence until cancelled."""

    def __init__(
        self,
        *,
        schedule: Schedule,
        datastore: BlobDatastore,
        sink: ChangeSink,
        health: PollHealth,
        clock: Clock,
        max_pending: int = 10000,
        metrics: Metrics | None = None,
    ) -> None:
        if not isinstance(schedule.trigger, DatastoreTrigger):
            raise TypeError(f"schedule {schedule.name!r} has no datastore trigger")
        self._schedule = schedule
        self._trigger: DatastoreTrigger = schedule.trigger
        self._datastore = datastore
        self._sink = sink
        self._health = health
        self._clock = clock
        self._max_pending = max_pending
        self._metrics = metrics
        self._prefix = blob_prefix(self._trigger.path_on_datastore)
        self._key = baseline_key(datastore, self._trigger)
        self._match = NameMatcher(self._trigger.pattern, self._trigger.ignore_globs)
        secrets = [s for s in (datastore.sas_token, datastore.account_key) if s]
        if datastore.connection_string:
            secrets += connection_string_secrets(datastore.connection_string)
        self._scrub = make_redactor(secrets)
        self._interval = max(self._trigger.polling_interval.total_seconds(), 0.001)
        self._snapshot: Snapshot | None = None  # None: not loaded yet, or no baseline
        self._client: ContainerClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._log = log.bind(
            schedule=schedule.name,
            datastore=datastore.name,
            container=datastore.container,
            prefix=self._prefix,
        )

    async def run(self) -> None:
        """Poll until cancelled. Poll failures are logged, reported and retried with backoff."""
        try:
            failures = 0
            while True:
                await self._respect_backpressure()
                started = self._clock.now()
                retry_in = await self._attempt(failures + 1)
                if retry_in is None:
                    if failures:
                        self._log.info("poll_recovered", failures=failures)
                    failures = 0
                    await self._wait_next(started)
                else:
                    failures += 1
                    await self._clock.sleep(retry_in)
        finally:
            await self.aclose()

    # ── one attempt ──

    async def _attempt(self, attempt: int) -> float | None:
        """One poll; None on success, else the seconds to back off before the next try."""
        t0 = self._clock.monotonic()
        try:
            files, _ = await self.poll_once()
        except WatcherdError as exc:
            error = str(exc)
        except Exception as exc:  # a bug or a sink failure must not stop this schedule
            error = self._scrub(f"{type(exc).__name__}: {exc}")
        else:
            duration = self._clock.monotonic() - t0
            self._health.poll_finished(
                self._schedule.id, ok=True, duration=duration, files=files, error=None
            )
            if self._metrics is not None:
                self._metrics.poll_duration.labels(self._schedule.name).observe(duration)
                self._metrics.poll_files.labels(self._schedule.name).set(files)
            return None
        duration = self._clock.monotonic() - t0
        delay = self._backoff(attempt)
        self._log.warning("poll_failed", error=error, attempt=attempt, retry_in=round(delay, 3))
        self._health.poll_finished(
            self._schedule.id, ok=False, duration=duration, files=0, error=error
        )
        if self._metrics is not None:
            self._metrics.poll_errors.labels(self._schedule.name).inc()
        return delay

    async def poll_once(self) -> tuple[int, int]:
        """List, diff and commit once. Returns (matching blobs seen, changes committed).

        Raises:
            PollUnavailable: storage unreachable, timed out or answered 408/429/5xx.
            PollRejected: container missing, access denied, or invalid settings.
        """
        if self._snapshot is None:
            versions = await self._sink.load_snapshot(self._schedule.id, self._key)
            if versions is not None:
                self._snapshot = Snapshot.from_versions(versions)
        listed = await self._list()
        snapshot = self._snapshot
        deletes: list[bytes] = []
        if snapshot is None:  # the first poll: a baseline
            upserts = [(name, version) for name, version, _ in listed]
            fire_all = self._trigger.initial == "fire"
            changes = [FileChange(n, v, m) for n, v, m in listed] if fire_all else []
        else:
            diff = snapshot.diff((name, version) for name, version, _ in listed)
            upserts, deletes = diff.upserts, diff.deletes
            modified = {name: when for name, _, when in listed} if upserts else {}
            changes = [FileChange(n, v, modified[n]) for n, v in upserts]
        if snapshot is None or upserts or deletes:
            await self._sink.commit(self._schedule.id, self._key, upserts, deletes, changes)
        if snapshot is None:
            self._snapshot = Snapshot.from_versions(dict(upserts))
            self._log.info("baseline_taken", files=len(upserts), fire=len(changes))
        else:
            snapshot.apply(upserts, deletes)
        for change in changes:
            path = change.name.decode("utf-8", "backslashreplace")
            self._log.info("file_changed", path=path, version=change.version)
        self._observe_lag(changes)
        return len(listed), len(changes)

    async def _list(self) -> list[tuple[bytes, str, datetime | None]]:
        """(name, etag, last_modified) of each matching blob directly under the prefix."""
        from azure.storage.blob import BlobProperties

        client = self._open_client()
        skip = len(self._prefix.encode("utf-8"))
        match = self._match
        out: list[tuple[bytes, str, datetime | None]] = []
        with _map_azure_errors(self._datastore.container, self._prefix, self._scrub):
            pages = client.walk_blobs(
                name_starts_with=self._prefix or None, delimiter="/", include=["metadata"]
            )
            async for item in pages:
                if not isinstance(item, BlobProperties):  # a BlobPrefix: a subdirectory
                    continue
                name: str = item.name
                # A directory marker: "dir/" (flat namespace tools) or hdi_isfolder (ADLS Gen2).
                if name.endswith("/") or _is_folder(item.metadata):
                    continue
                raw = name.encode("utf-8")
                if not match(raw[skip:]):
                    continue
                # etag, not last_modified: Last-Modified has one-second resolution, and two
                # uploads in the same second would look identical. Listings give it bare,
                # headers quoted: store it bare.
                out.append((raw, str(item.etag).strip('"'), item.last_modified))
        return out

    def _observe_lag(self, changes: Sequence[FileChange]) -> None:
        if self._metrics is None or not changes:
            return
        now = self._clock.now()
        hist = self._metrics.detection_lag.labels(self._schedule.name)
        for change in changes:
            if change.modified is not None:
                hist.observe(max(0.0, (now - change.modified).total_seconds()))

    # ── cadence and backpressure ──

    async def _wait_next(self, started: datetime) -> None:
        """Sleep to the next slot of the fixed cadence; a poll that overran skips slots."""
        interval = timedelta(seconds=self._interval)
        due = started + interval
        now = self._clock.now()
        if now > due:
            missed = int((now - started) / interval)
            due = started + interval * (missed + 1)
            self._log.warning(
                "poll_overrun",
                duration=round((now - started).total_seconds(), 3),
                interval=self._interval,
            )
            if self._metrics is not None:
                self._metrics.poll_overruns.labels(self._schedule.name).inc()
        await self._clock.sleep_until(due)

    async def _respect_backpressure(self) -> None:
        queued = self._sink.pending(self._schedule.id)
        if queued <= self._max_pending:
            return
        self._log.warning("poll_paused", pending=queued, max_pending=self._max_pending)
        await self._sink.wait_below(self._schedule.id, self._max_pending)
        self._log.info("poll_resumed")

    def _backoff(self, failures: int) -> float:
        cap = min(_BACKOFF_CAP, max(self._trigger.polling_interval, timedelta(seconds=30)))
        return backoff_delay(failures, cap)

    # ── the client ──

    def _open_client(self) -> ContainerClient:
        if self._client is not None:
            return self._client
        from azure.storage.blob.aio import ContainerClient

        ds = self._datastore
        with _map_azure_errors(ds.container, self._prefix, self._scrub):
            if ds.connection_string:
                client = ContainerClient.from_connection_string(
                    ds.connection_string, ds.container, **_CLIENT_OPTIONS
                )
            else:
                client = ContainerClient(
                    _strip_secrets(ds.account_url or ""),
                    ds.container,
                    credential=self._credential_for(ds),
                    **_CLIENT_OPTIONS,
                )
        self._client = client
        return client

    def _credential_for(self, ds: BlobDatastore) -> Any:
        if ds.sas_token:
            from azure.core.credentials import AzureSasCredential

            return AzureSasCredential(ds.sas_token.lstrip("?"))
        if ds.account_key:
            return ds.account_key  # the SDK pairs it with the account name from the URL
        from azure.identity.aio import DefaultAzureCredential

        self._credential = DefaultAzureCredential()
        return self._credential

    async def aclose(self) -> None:
        """Close the storage client and credential (run() does this when it ends)."""
        client, self._client = self._client, None
        credential, self._credential = self._credential, None
        for closable in (client, credential):
            if closable is None:
                continue
            try:
                await closable.close()
            except Exception as exc:  # closing must not mask why run() ended
                self._log.debug("blob_client_close_failed", error=self._scrub(str(exc)))
