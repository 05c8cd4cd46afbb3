"""Blob events from an Azure Storage Queue: parse one message, decide which watch it concerns.

Pure: no I/O, no asyncio, no Azure SDK. The queue consumer hands each message's text here
(received without a decode policy, see below) and fans the events out (SPEC §4 "Blob events").

A message is what an Event Grid subscription with a Storage Queue destination writes: one
event or a JSON array of events, in the Event Grid schema (`eventType`, `topic`, `eventTime`)
or CloudEvents 1.0 (`type`, `source`, `time`, `specversion`), as raw JSON text or base64 of
it. Event Grid writes base64 today (it wrote plain text before about 2022), and anyone may
write either by hand, so both are accepted, per message. The consumer must not use the SDK's
TextBase64DecodePolicy: one plain-text message would make a whole receive batch fail.

Only the location is taken from an event. The container and blob name come from `subject`
("/blobServices/default/containers/<c>/blobs/<name>", the name verbatim, not
percent-encoded), with `data.url` as a fallback ("https://<account>.blob.core.windows.net/
<c>/<name>", percent-decoded; Azurite's path-style "http://127.0.0.1:10000/<account>/<c>/
<name>" too). The account comes from `topic`/`source` (".../providers/Microsoft.Storage/
storageAccounts/<account>"), else from the URL's host. ETag, size and content type in `data`
are never used: the consumer reads the blob's properties from storage.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

__all__ = [
    "BLOB_CREATED",
    "IGNORED_APIS",
    "BlobEvent",
    "EventKind",
    "EventSchema",
    "ParseError",
    "WatchedDirectory",
    "account_from_topic",
    "event_matches",
    "keep_earliest",
    "parse_events",
    "parse_message",
    "skip_reason",
]

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
# ADLS Gen2 reports CreateFile before any data is written; its FlushWithClose is the completion.
IGNORED_APIS: frozenset[str] = frozenset({"CreateFile"})

_SUBJECT_PREFIX = "/blobServices/default/containers/"
_TOPIC_ACCOUNT = re.compile(r"/providers/Microsoft\.Storage/storageAccounts/([^/]+)", re.I)
_JSON_START = ("{", "[")
_MAX_REASON = 200  # characters of offending text quoted in a ParseError


class ParseError(ValueError):
    """A queue message that is not a blob event (or an array of them); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EventKind(enum.Enum):
    BLOB_CREATED = "BlobCreated"
    OTHER = "other"


class EventSchema(enum.Enum):
    EVENT_GRID = "EventGrid"
    CLOUD_EVENTS = "CloudEvents"


_KEYS = {  # the (type, topic, time) keys of each schema
    EventSchema.EVENT_GRID: ("eventType", "topic", "eventTime"),
    EventSchema.CLOUD_EVENTS: ("type", "source", "time"),
}


@dataclass(frozen=True, slots=True)
class BlobEvent:
    """One event of a message.

    For a BlobCreated event `container` and `name` are always set (otherwise the message is a
    ParseError); for other event types they are "" when the subject names no blob.

    Attributes:
        kind: BLOB_CREATED or OTHER.
        event_type: the type as written, e.g. "Microsoft.Storage.BlobDeleted".
        account: the storage account name, or None when neither topic nor URL says.
        container: the container (ADLS Gen2: file system) name.
        name: the blob name, the full path in the container.
        api: `data.api` ("PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose", ...), or "".
        time: the event time (UTC when the text had no offset), or None if absent.
        event_id: the event's `id`, or "".
        schema: which schema the event was written in.
    """

    kind: EventKind
    event_type: str
    account: str | None
    container: str
    name: str
    api: str
    time: datetime | None
    event_id: str
    schema: EventSchema

    @property
    def ignored_reason(self) -> str | None:
        """Why no schedule should look at this event, or None if one might."""
        if self.kind is not EventKind.BLOB_CREATED:
            return f"event type {self.event_type}"
        if self.api in IGNORED_APIS:
            return f"api {self.api} (the blob is created before it is written)"
        return None


@dataclass(frozen=True, slots=True)
class WatchedDirectory:
    """What one datastore schedule watches, for matching events against.

    Attributes:
        account: the storage account name (compared case-insensitively), or None to accept
            events of any account.
        container: the container name.
        prefix: the listing prefix: "" for the container root, else "dir/sub/" (as
            `watcherd.pollers.blob.blob_prefix` gives it).
        matches: `pattern`/`ignore` on the name relative to the prefix, as UTF-8 bytes
            (a `watcherd.core.matching.NameMatcher`).
    """

    account: str | None
    container: str
    prefix: str
    matches: Callable[[bytes], bool]


# ── parsing ───────────────────────────────────────────────────────────────────


def parse_message(text: str | bytes) -> list[BlobEvent]:
    """The events of one queue message.

    Args:
        text: the message content as received (raw JSON, or base64 of UTF-8 JSON).

    Returns:
        One BlobEvent per event, in message order (at least one).

    Raises:
        ParseError: the message is not JSON nor base64 of JSON, is not an event object or a
            non-empty array of them, or an event is malformed (a BlobCreated event without a
            blob location, fields of the wrong type, a bad time).
    """
    events, bad = parse_events(text)
    if bad:
        raise ParseError(bad[0])
    return events


def parse_events(text: str | bytes) -> tuple[list[BlobEvent], list[str]]:
    """The well-formed events of one queue message, and why each other one is malformed
    ("event <i>: <reason>"): one bad event in an array does not hide its siblings.

    Raises:
        ParseError: the message itself is unusable (not JSON nor base64 of JSON, an empty
            array, a lone event object that is malformed).
    """
    doc = _load(text)
    if not isinstance(doc, list):
        return [_parse_event(doc)], []
    if not doc:
        raise ParseError("an empty JSON array: no events")
    events, bad = [], []
    for i, item in enumerate(doc):
        try:
            events.append(_parse_event(item))
        except ParseError as exc:
            bad.append(f"event {i}: {exc.reason}")
    return events, bad


def _load(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("not UTF-8 text") from None
    body = text.strip().lstrip("\ufeff").strip()
    if not body:
        raise ParseError("an empty message")
    how = "JSON"
    if not body.startswith(_JSON_START):
        body = _unbase64(body)
        how = "base64-decoded JSON"
    try:
        doc = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ParseError(f"invalid {how}: {exc.msg} at offset {exc.pos}") from None
    except RecursionError:
        raise ParseError(f"invalid {how}: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
        raise ParseError(f"invalid {how}: {_quote(str(exc))}") from None
    if not isinstance(doc, dict | list):
        raise ParseError(f"{how} is {_json_kind(doc)}, not an event object or array")
    return doc


def _unbase64(body: str) -> str:
    compact = "".join(body.split())  # MIME-style line breaks
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(f"not JSON, nor base64: {_quote(body)}") from None
    try:
        decoded = raw.decode("utf-8").lstrip("\ufeff").strip()
    except UnicodeDecodeError:
        raise ParseError(f"not JSON, and base64 of non-UTF-8 bytes: {_quote(body)}") from None
    if not decoded.startswith(_JSON_START):
        raise ParseError(f"not JSON, and base64 of text that is not JSON: {_quote(decoded)}")
    return decoded


def _parse_event(item: Any) -> BlobEvent:
    if not isinstance(item, dict):
        raise ParseError(f"{_json_kind(item)}, not an event object")
    if "eventType" in item:
        schema = EventSchema.EVENT_GRID
    elif "type" in item or "specversion" in item:
        schema = EventSchema.CLOUD_EVENTS
        version = _text(item, "specversion")
        if version and not version.startswith("1."):
            raise ParseError(f"CloudEvents specversion {_quote(version)} (1.0 expected)")
    else:
        raise ParseError("neither eventType (Event Grid schema) nor type (CloudEvents) in event")
    type_key, topic_key, time_key = _KEYS[schema]
    event_type = _text(item, type_key)
    if not event_type:
        raise ParseError(f"{type_key} is empty")
    data = item.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        raise ParseError(f"data is {_json_kind(data)}, not an object")
    url = _text(data, "url", "data.url")
    from_url = _from_url(url)
    location = _from_subject(_text(item, "subject")) or from_url
    kind = EventKind.BLOB_CREATED if event_type == BLOB_CREATED else EventKind.OTHER
    if location is None:
        if kind is EventKind.BLOB_CREATED:
            raise ParseError("BlobCreated event names no blob (subject and data.url)")
        location = (None, "", "")
    elif kind is EventKind.BLOB_CREATED and not _is_unicode(location[2]):
        raise ParseError("blob name is not valid Unicode (a lone surrogate)")
    _, container, name = location
    return BlobEvent(
        kind=kind,
        event_type=event_type,
        account=account_from_topic(_text(item, topic_key)) or (from_url[0] if from_url else None),
        container=container,
        name=name,
        api=_text(data, "api", "data.api"),
        time=_time(item, time_key),
        event_id=_text(item, "id"),
        schema=schema,
    )


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(obj: Mapping[str, Any], key: str, label: str | None = None) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError(f"{label or key} is {_json_kind(value)}, not a string")
    return value


def _time(item: Mapping[str, Any], key: str) -> datetime | None:
    text = _text(item, key)
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ParseError(f"{key} {_quote(text)} is not an ISO 8601 time") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _from_subject(subject: str) -> tuple[str | None, str, str] | None:
    """(None, container, name) from "/blobServices/default/containers/<c>/blobs/<name>"."""
    if not subject.startswith(_SUBJECT_PREFIX):
        return None
    container, sep, rest = subject[len(_SUBJECT_PREFIX) :].partition("/")
    if not container or not sep or not rest.startswith("blobs/"):
        return None
    name = rest[len("blobs/") :]
    return (None, container, name) if name else None


def _from_url(url: str) -> tuple[str | None, str, str] | None:
    """(account, container, name) from a blob or dfs URL; None if it is not one.

    The path is split by hand, not by urlsplit: a name may hold "?" or "#" unencoded.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2]
    hostname = host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0]
    path_style = _path_style(hostname)
    parts = path.split("/", 2 if path_style else 1)
    if path_style:
        if len(parts) < 3:
            return None
        account: str | None = unquote(parts[0]) or None
        container, name = parts[1], parts[2]
    else:
        if len(parts) < 2:
            return None
        account = hostname.split(".", 1)[0] or None
        container, name = parts[0], parts[1]
    container, name = unquote(container), unquote(name)
    return (account, container, name) if container and name else None


def _path_style(hostname: str) -> bool:
    """True for hosts whose URLs carry the account as the first path segment (Azurite)."""
    if hostname == "localhost" or "." not in hostname:
        return True
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def account_from_topic(topic: str) -> str | None:
    """The account name in an Event Grid topic or CloudEvents source, or None.

    >>> account_from_topic("/subscriptions/x/resourceGroups/rg/providers/"
    ...                    "Microsoft.Storage/storageAccounts/acct")
    'acct'
    """
    found = _TOPIC_ACCOUNT.search(topic)
    return found.group(1) if found else None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _quote(text: str) -> str:
    shown = text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "…"
    return json.dumps(shown, ensure_ascii=False)


# ── matching ──────────────────────────────────────────────────────────────────


def skip_reason(event: BlobEvent, watch: WatchedDirectory) -> str | None:
    """Why `event` starts nothing for `watch`, or None when it concerns a file there.

    A file directly in the watched directory (never in a subdirectory), of the same account
    and container, not a directory marker, accepted by `pattern`/`ignore`; BlobCreated only,
    and not ADLS Gen2's CreateFile.
    """
    reason = event.ignored_reason
    if reason is not None:
        return reason
    if watch.account is not None and (event.account or "").lower() != watch.account.lower():
        return f"account {event.account or '(unknown)'}"
    if event.container != watch.container:
        return f"container {event.container}"
    if not event.name.startswith(watch.prefix):
        return "outside the watched directory"
    rest = event.name[len(watch.prefix) :]
    if not rest or rest.endswith("/"):
        return "a directory marker"
    if "/" in rest:
        return "in a subdirectory"
    if not watch.matches(rest.encode("utf-8", "surrogatepass")):
        return "not matched by pattern/ignore"
    return None


def event_matches(event: BlobEvent, watch: WatchedDirectory) -> bool:
    """True when `event` concerns a file `watch` looks at (see skip_reason)."""
    return skip_reason(event, watch) is None


def keep_earliest(names: dict[str, datetime | None], name: str, when: datetime | None) -> None:
    """Note `when` for `name` unless an earlier time is noted (a blob named by several events
    keeps its first, so the event-to-run lag counts from it)."""
    old = names.get(name)
    names[name] = when if old is None or (when is not None and when < old) else old
