"""What the blob poller and the blob-event queue consumer share about Azure Storage.

Names and URLs of a datastore (never with credentials), the account behind it, its
credential, the SDK client options (retries off: our backoff is the retry loop), and the one
function that maps azure.core exceptions onto watcherd's error tree. The Azure SDK is
imported lazily: a daemon without blob datastores never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from watcherd.core.errors import PollRejected, PollUnavailable
from watcherd.core.models import BlobDatastore, BlobEvents
from watcherd.core.redact import connection_string_secrets, make_redactor, url_secrets

__all__ = [
    "CLIENT_OPTIONS",
    "DEV_ACCOUNT",
    "QueueTarget",
    "account_name",
    "blob_prefix",
    "blob_url",
    "container_url",
    "datastore_credential",
    "datastore_redactor",
    "error_code",
    "is_folder",
    "map_azure_errors",
    "parse_connection_string",
    "queue_target",
    "strip_secrets",
]

# Our own backoff is the retry loop (each attempt logged and reported), so the SDK's retry
# policy is switched off: its default waits 15 s, 45 s, ... before we hear anything. It is the
# pipeline's only retry policy (ExponentialRetry(**kwargs) when no retry_policy is given).
CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 0}
DEV_ACCOUNT = "devstoreaccount1"
_DEV_BLOB_ENDPOINT = f"http://127.0.0.1:10000/{DEV_ACCOUNT}"


def blob_prefix(path_on_datastore: str) -> str:
    """The listing prefix for a watched path: "" for the container root, else "path/"."""
    path = path_on_datastore.strip("/")
    return f"{path}/" if path else ""


def parse_connection_string(conn: str) -> dict[str, str]:
    """The fields of an Azure connection string, keys lower-cased."""
    pairs = (item.partition("=") for item in conn.split(";"))
    return {key.strip().lower(): value.strip() for key, sep, value in pairs if sep}


def strip_secrets(url: str) -> str:
    """A URL without userinfo, query or fragment (a SAS lives in the query)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def _account_endpoint(datastore: BlobDatastore) -> str:
    if datastore.account_url:
        return strip_secrets(datastore.account_url).rstrip("/")
    fields = parse_connection_string(datastore.connection_string or "")
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return _DEV_BLOB_ENDPOINT
    if "blobendpoint" in fields:
        return strip_secrets(fields["blobendpoint"]).rstrip("/")
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


def account_name(datastore: BlobDatastore) -> str | None:
    """The storage account of a datastore, as blob events name it; None when unknown.

    From the connection string's AccountName, else the endpoint: the first label of
    `<account>.blob.<suffix>`, or the first path segment of a path-style URL (Azurite,
    `http://127.0.0.1:10000/<account>`).
    """
    if datastore.connection_string:
        fields = parse_connection_string(datastore.connection_string)
        if fields.get("usedevelopmentstorage", "").lower() == "true":
            return DEV_ACCOUNT
        if fields.get("accountname"):
            return fields["accountname"]
    parts = urlsplit(_account_endpoint(datastore))
    host = parts.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0] or None
    segment = parts.path.strip("/").split("/", 1)[0]
    return segment or None


def datastore_redactor(datastore: BlobDatastore, *extra: str | None) -> Callable[[str], str]:
    """Masks the datastore's key, SAS and connection string, and each `extra` connection
    string or URL (their keys, SAS and userinfo), in error text before it is logged."""
    secrets = [s for s in (datastore.sas_token, datastore.account_key) if s]
    if datastore.sas_token:
        secrets.append(datastore.sas_token.lstrip("?"))
    if datastore.connection_string:
        secrets += connection_string_secrets(datastore.connection_string)
    if datastore.account_url:
        secrets += url_secrets(datastore.account_url)
    for text in extra:
        if text and "://" in text and ";" not in text:
            secrets += url_secrets(text)
        elif text:
            secrets += connection_string_secrets(text)
    return make_redactor(secrets)


def datastore_credential(datastore: BlobDatastore) -> tuple[Any, Any]:
    """(credential for an account-URL client, the closable DefaultAzureCredential or None).

    A SAS token, else the account key (the SDK pairs it with the account name in the URL),
    else azure-identity's DefaultAzureCredential, which the caller closes.
    """
    if datastore.sas_token:
        from azure.core.credentials import AzureSasCredential

        return AzureSasCredential(datastore.sas_token.lstrip("?")), None
    if datastore.account_key:
        return datastore.account_key, None
    from azure.identity.aio import DefaultAzureCredential

    credential = DefaultAzureCredential()
    return credential, credential


def is_folder(metadata: dict[str, str] | None) -> bool:
    """ADLS Gen2 (hierarchical namespace) marks a directory's blob with hdi_isfolder=true."""
    return metadata is not None and str(metadata.get("hdi_isfolder", "")).lower() == "true"


# ── errors ────────────────────────────────────────────────────────────────────


def _first_line(text: object, limit: int = 300) -> str:
    return str(text).strip().splitlines()[0][:limit] if str(text).strip() else ""


def error_code(exc: BaseException) -> str:
    """The storage error code (e.g. ContainerNotFound), which the SDK sets on its errors."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _retry_after(exc: BaseException) -> float | None:
    """A 429/503's Retry-After header in seconds (the delta form), if the server sent one."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


@contextmanager
def map_azure_errors(
    where: str, scrub: Callable[[str], str], not_found: str = "container not found"
) -> Iterator[None]:
    """Translate azure.core (and transport) exceptions into PollUnavailable / PollRejected.

    Args:
        where: what was being accessed, for the message ("container 'c' prefix 'p/'").
        scrub: masks secrets in the SDK's error text.
        not_found: what a 404 means here.
    """
    from azure.core import exceptions as az

    try:
        yield
    except az.ResourceNotFoundError as exc:
        raise PollRejected(f"{where}: {not_found} ({error_code(exc)})") from exc
    except az.ClientAuthenticationError as exc:  # 401/403 and credential failures
        detail = scrub(_first_line(exc.message))
        raise PollRejected(f"{where}: access denied: {detail}") from exc
    except az.HttpResponseError as exc:
        status = exc.status_code
        detail = scrub(f"HTTP {status} {error_code(exc)}: {_first_line(exc.message)}")
        if status is None or status in (408, 429) or status >= 500:
            raise PollUnavailable(f"{where}: {detail}", _retry_after(exc)) from exc
        denied = "access denied: " if status in (401, 403) else ""
        raise PollRejected(f"{where}: {denied}{detail}") from exc
    except az.AzureError as exc:  # ServiceRequestError, ServiceResponseError, timeouts
        detail = scrub(_first_line(exc.message))
        raise PollUnavailable(f"{where}: cannot reach storage: {detail}") from exc
    except (TimeoutError, OSError) as exc:
        raise PollUnavailable(f"{where}: {type(exc).__name__}: {scrub(str(exc))}") from exc
    except ValueError as exc:  # malformed connection string or URL, found by the SDK
        raise PollRejected(f"{where}: invalid datastore settings: {scrub(str(exc))}") from exc


# ── the queue of a blob-events trigger ────────────────────────────────────────


_DEV_QUEUE_ENDPOINT = f"http://127.0.0.1:10001/{DEV_ACCOUNT}"


@dataclass(frozen=True, slots=True)
class QueueTarget:
    """Where a schedule's blob events are read: the queue, its poison queue, and how to open
    them (SPEC §4: the datastore's account unless `queue_account_url` /
    `queue_connection_string` say otherwise; credentials as for the datastore).

    `error` says why the queue cannot be used (its URL cannot be derived); `key` identifies
    the queue across schedules (no credentials in it).
    """

    queue: str
    poison: str
    endpoint: str  # the queue service URL, without credentials
    datastore: BlobDatastore
    connection_string: str | None = None
    account_url: str | None = None
    error: str | None = None
    scrub: Callable[[str], str] = field(compare=False, default=str)

    @property
    def key(self) -> str:
        return f"{self.endpoint}/{self.queue}"

    def open(self, name: str) -> tuple[Any, Any]:
        """(an async QueueClient for queue `name`, a credential to close or None)."""
        from azure.storage.queue.aio import QueueClient

        if self.connection_string:
            client = QueueClient.from_connection_string(
                self.connection_string, name, **CLIENT_OPTIONS
            )
            return client, None
        url = self.account_url or ""
        if urlsplit(url).query:  # a SAS in the URL itself
            return QueueClient(url, name, **CLIENT_OPTIONS), None
        credential, closable = datastore_credential(self.datastore)
        return QueueClient(url, name, credential=credential, **CLIENT_OPTIONS), closable


def _queue_endpoint(conn: str) -> tuple[str, str | None]:
    """(queue service URL, error) of a connection string, as the SDK derives it."""
    fields = parse_connection_string(conn)
    if fields.get("usedevelopmentstorage", "").lower() == "true":
        return _DEV_QUEUE_ENDPOINT, None
    if "queueendpoint" in fields:
        return strip_secrets(fields["queueendpoint"]).rstrip("/"), None
    protocol = fields.get("defaultendpointsprotocol", "https")
    suffix = fields.get("endpointsuffix", "core.windows.net")
    url = f"{protocol}://{fields.get('accountname', '')}.queue.{suffix}"
    if "blobendpoint" in fields:  # e.g. Azurite: the queue is not where the SDK would guess
        return url, "the connection string has a BlobEndpoint but no QueueEndpoint"
    return url, None


def queue_target(datastore: BlobDatastore, events: BlobEvents) -> QueueTarget:
    """The queue a blob datastore trigger's `events` names, with its credentials."""
    scrub = datastore_redactor(datastore, events.queue_connection_string, events.queue_account_url)
    common: dict[str, Any] = {
        "queue": events.queue, "poison": events.poison, "datastore": datastore, "scrub": scrub
    }  # fmt: skip
    hint = "set events.queue_connection_string or events.queue_account_url"
    if events.queue_connection_string:
        endpoint, error = _queue_endpoint(events.queue_connection_string)
        return QueueTarget(
            endpoint=endpoint, connection_string=events.queue_connection_string,
            error=f"queue_connection_string: {error}" if error else None, **common,
        )  # fmt: skip
    if events.queue_account_url:
        endpoint = strip_secrets(events.queue_account_url).rstrip("/")
        return QueueTarget(endpoint=endpoint, account_url=events.queue_account_url, **common)
    if datastore.connection_string:
        endpoint, error = _queue_endpoint(datastore.connection_string)
        return QueueTarget(
            endpoint=endpoint, connection_string=datastore.connection_string,
            error=f"the datastore's {error}: {hint}" if error else None, **common,
        )  # fmt: skip
    blob = urlsplit(strip_secrets(datastore.account_url or ""))
    host = blob.hostname or ""
    if ".blob." not in host:
        endpoint = urlunsplit(blob).rstrip("/")
        error = f"cannot tell the queue service of account_url {endpoint}: {hint}"
        return QueueTarget(endpoint=endpoint, error=error, **common)
    netloc = blob.netloc.replace(".blob.", ".queue.", 1)
    endpoint = urlunsplit((blob.scheme, netloc, blob.path, "", "")).rstrip("/")
    return QueueTarget(endpoint=endpoint, account_url=endpoint, **common)
