"""Blob event messages from a Storage Queue: the pure parser and matcher, and one round trip
through a real Azurite queue with the async client.

The sample events follow the shapes in Azure's "Azure Blob Storage as an Event Grid source"
documentation (Event Grid schema and CloudEvents 1.0, Blob REST and ADLS Gen2 REST APIs).
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.azurite import ACCOUNT
from watcherd.core.matching import NameMatcher
from watcherd.pollers.blob_events import (
    BlobEvent,
    EventKind,
    EventSchema,
    ParseError,
    WatchedDirectory,
    account_from_topic,
    event_matches,
    keep_earliest,
    parse_events,
    parse_message,
    skip_reason,
)

TOPIC = (
    "/subscriptions/5f2b7c1e-0000-4000-8000-00000000beef/resourceGroups/data-rg"
    "/providers/Microsoft.Storage/storageAccounts/lakeacct"
)
T0 = "2024-03-05T09:15:27.1234567Z"
WHEN = datetime(2024, 3, 5, 9, 15, 27, 123456, tzinfo=UTC)


def event_grid(
    name: str = "incoming/day1.csv",
    *,
    container: str = "raw",
    event_type: str = "Microsoft.Storage.BlobCreated",
    api: str = "PutBlockList",
    host: str = "lakeacct.blob.core.windows.net",
) -> dict[str, Any]:
    """A BlobCreated event in the Event Grid schema, as a storage account publishes it."""
    return {
        "topic": TOPIC,
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": event_type,
        "eventTime": T0,
        "id": "a1b2c3d4-001e-0042-1a2b-3c4d5e069631",
        "data": {
            "api": api,
            "clientRequestId": "0c6c6a8e-7d1b-4d8c-9a51-6b8d1f2f3a10",
            "requestId": "a1b2c3d4-001e-0042-1a2b-3c4d5e000000",
            "eTag": '"0x8DC3C5E1A2B3C4D"',
            "contentType": "text/csv",
            "contentLength": 1048576,
            "blobType": "BlockBlob",
            "url": f"https://{host}/{container}/{name}",
            "sequencer": "0000000000000000000000000002A7F40000000000000a1c",
            "storageDiagnostics": {"batchId": "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b"},
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


def cloud_event(name: str = "incoming/day1.csv", **kw: Any) -> dict[str, Any]:
    """The same event in the CloudEvents 1.0 schema."""
    eg = event_grid(name, **kw)
    return {
        "source": eg["topic"],
        "subject": eg["subject"],
        "type": eg["eventType"],
        "time": eg["eventTime"],
        "id": eg["id"],
        "data": eg["data"],
        "specversion": "1.0",
    }


def adls(api: str, schema: str = "eventgrid", name: str = "incoming/day2.csv") -> dict[str, Any]:
    """An ADLS Gen2 (hierarchical namespace) BlobCreated event: dfs URL, contentOffset."""
    maker = event_grid if schema == "eventgrid" else cloud_event
    event = maker(name, api=api, host="lakeacct.dfs.core.windows.net")
    event["data"]["contentOffset"] = 0
    if api == "CreateFile":
        event["data"]["contentLength"] = 0
    if schema == "eventgrid":
        event["dataVersion"] = "2"
    return event


def inventory_completed() -> dict[str, Any]:
    """A storage event that names no blob (its subject is not a blob path)."""
    return {
        "topic": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.EventGrid/topics/inv",
        "subject": "BlobDataManagement/BlobInventory",
        "eventType": "Microsoft.Storage.BlobInventoryPolicyCompleted",
        "eventTime": "2024-03-05T03:50:27Z",
        "id": "0d6c2a52-aaaa-4bbb-8ccc-0123456789ab",
        "data": {
            "scheduleDateTime": "2024-03-05T03:50:27Z",
            "accountName": "lakeacct",
            "ruleName": "Rule_1",
            "policyRunStatus": "Succeeded",
            "manifestBlobUrl": "https://lakeacct.blob.core.windows.net/inv/Rule_1.csv",
        },
        "dataVersion": "1.0",
        "metadataVersion": "1",
    }


def b64(doc: Any) -> str:
    return base64.b64encode(json.dumps(doc).encode("utf-8")).decode("ascii")


def raw(doc: Any) -> str:
    return json.dumps(doc)


def one(text: str | bytes) -> BlobEvent:
    events = parse_message(text)
    assert len(events) == 1
    return events[0]


# ── parsing: the documented shapes, both encodings ────────────────────────────


@pytest.mark.parametrize("encode", [raw, b64], ids=["raw", "base64"])
@pytest.mark.parametrize("array", [False, True], ids=["object", "array"])
@pytest.mark.parametrize(
    ("make", "schema"),
    [(event_grid, EventSchema.EVENT_GRID), (cloud_event, EventSchema.CLOUD_EVENTS)],
    ids=["eventgrid", "cloudevents"],
)
def test_blob_created(make: Any, schema: EventSchema, array: bool, encode: Any) -> None:
    doc = make()
    event = one(encode([doc] if array else doc))
    assert event == BlobEvent(
        kind=EventKind.BLOB_CREATED,
        event_type="Microsoft.Storage.BlobCreated",
        account="lakeacct",
        container="raw",
        name="incoming/day1.csv",
        api="PutBlockList",
        time=WHEN,
        event_id="a1b2c3d4-001e-0042-1a2b-3c4d5e069631",
        schema=schema,
    )
    assert event.ignored_reason is None


@pytest.mark.parametrize(
    ("doc", "kind", "api", "ignored"),
    [
        (event_grid(api="PutBlob"), EventKind.BLOB_CREATED, "PutBlob", None),
        (event_grid(api="CopyBlob"), EventKind.BLOB_CREATED, "CopyBlob", None),
        (adls("FlushWithClose"), EventKind.BLOB_CREATED, "FlushWithClose", None),
        (adls("FlushWithClose", "cloud"), EventKind.BLOB_CREATED, "FlushWithClose", None),
        (adls("CreateFile"), EventKind.BLOB_CREATED, "CreateFile", "api CreateFile"),
        (adls("CreateFile", "cloud"), EventKind.BLOB_CREATED, "CreateFile", "api CreateFile"),
        (
            event_grid(event_type="Microsoft.Storage.BlobDeleted", api="DeleteBlob"),
            EventKind.OTHER,
            "DeleteBlob",
            "event type Microsoft.Storage.BlobDeleted",
        ),
        (
            cloud_event(event_type="Microsoft.Storage.BlobTierChanged", api="SetBlobTier"),
            EventKind.OTHER,
            "SetBlobTier",
            "event type Microsoft.Storage.BlobTierChanged",
        ),
    ],
    ids=[
        "putblob",
        "copyblob",
        "adls-flush-eventgrid",
        "adls-flush-cloudevents",
        "adls-createfile-eventgrid",
        "adls-createfile-cloudevents",
        "deleted",
        "tier-changed",
    ],
)
def test_apis_and_kinds(
    doc: dict[str, Any], kind: EventKind, api: str, ignored: str | None
) -> None:
    event = one(b64(doc))
    assert (event.kind, event.api, event.account, event.container) == (kind, api, "lakeacct", "raw")
    if ignored is None:
        assert event.ignored_reason is None
    else:
        assert event.ignored_reason is not None and event.ignored_reason.startswith(ignored)


def test_event_without_a_blob_is_other_not_an_error() -> None:
    event = one(raw([inventory_completed()]))
    assert event.kind is EventKind.OTHER
    assert (event.account, event.container, event.name) == (None, "", "")
    assert event.ignored_reason == "event type Microsoft.Storage.BlobInventoryPolicyCompleted"


def test_array_of_mixed_events_keeps_order() -> None:
    docs = [event_grid("a/1.csv"), cloud_event("a/2.csv"), adls("CreateFile", name="a/3.csv")]
    events = parse_message(b64(docs))
    assert [(e.name, e.schema, e.api) for e in events] == [
        ("a/1.csv", EventSchema.EVENT_GRID, "PutBlockList"),
        ("a/2.csv", EventSchema.CLOUD_EVENTS, "PutBlockList"),
        ("a/3.csv", EventSchema.EVENT_GRID, "CreateFile"),
    ]


# ── names, accounts, times ────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "name",
    [
        "in/a b.csv",
        "in/100%.csv",
        "in/a%20b.csv",  # a literal "%20": the subject is not percent-decoded
        "in/q?x=1#frag.csv",
        "in/ünïcødé 💎.csv",
        "in/blobs/x.csv",  # "/blobs/" inside the name
        "in//double.csv",
        "top.csv",
    ],
)
def test_subject_name_is_taken_verbatim(name: str) -> None:
    doc = event_grid(name)
    doc["data"]["url"] = "https://lakeacct.blob.core.windows.net/raw/something-else.csv"
    assert one(b64(doc)).name == name


def test_subject_wins_over_url() -> None:
    # Azure's own sample has subject container "test-container" and url "testcontainer".
    doc = event_grid("new-file.txt", container="test-container")
    doc["data"]["url"] = "https://lakeacct.blob.core.windows.net/testcontainer/new-file.txt"
    assert (one(raw(doc)).container, one(raw(doc)).name) == ("test-container", "new-file.txt")


@pytest.mark.parametrize(
    ("url", "account", "container", "name"),
    [
        (
            "https://lakeacct.blob.core.windows.net/raw/in/a%20b.csv",
            "lakeacct",
            "raw",
            "in/a b.csv",
        ),
        ("https://lakeacct.dfs.core.windows.net/fs/in/x.csv", "lakeacct", "fs", "in/x.csv"),
        (
            "http://127.0.0.1:10000/devstoreaccount1/raw/in/x.csv",
            "devstoreaccount1",
            "raw",
            "in/x.csv",
        ),
        ("http://localhost:10000/devstoreaccount1/raw/x.csv", "devstoreaccount1", "raw", "x.csv"),
        ("http://[::1]:10000/devstoreaccount1/raw/x.csv", "devstoreaccount1", "raw", "x.csv"),
        ("http://azurite:10000/devstoreaccount1/raw/x.csv", "devstoreaccount1", "raw", "x.csv"),
        (
            "https://lakeacct.blob.core.windows.net/raw/in/q?x#y.csv",
            "lakeacct",
            "raw",
            "in/q?x#y.csv",
        ),
    ],
)
def test_url_fallback_without_subject(url: str, account: str, container: str, name: str) -> None:
    doc = cloud_event()
    del doc["subject"], doc["source"]
    doc["data"]["url"] = url
    event = one(b64(doc))
    assert (event.account, event.container, event.name) == (account, container, name)


@pytest.mark.parametrize(
    "subject",
    [
        "/blobServices/default/containers/raw",
        "/blobServices/default/containers/raw/blobs/",
        "/blobServices/default/containers//blobs/x.csv",
        "/blobServices/default/containers/raw/files/x.csv",
        "blobServices/default/containers/raw/blobs/x.csv",
    ],
)
def test_unusable_subject_falls_back_to_url(subject: str) -> None:
    doc = event_grid("x.csv")
    doc["subject"] = subject
    doc["data"]["url"] = "https://lakeacct.blob.core.windows.net/raw/from-url.csv"
    assert one(raw(doc)).name == "from-url.csv"


def test_account_from_topic_or_url_host() -> None:
    assert account_from_topic(TOPIC) == "lakeacct"
    assert account_from_topic(TOPIC.replace("storageAccounts", "STORAGEACCOUNTS")) == "lakeacct"
    assert account_from_topic("/subscriptions/x/resourceGroups/rg") is None
    doc = event_grid()
    del doc["topic"]
    doc["data"]["url"] = "https://otheracct.blob.core.windows.net/raw/incoming/day1.csv"
    assert one(raw(doc)).account == "otheracct"
    del doc["data"]["url"]
    assert one(raw(doc)).account is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05T09:15:27.1234567Z", WHEN),
        ("2024-03-05T09:15:27Z", datetime(2024, 3, 5, 9, 15, 27, tzinfo=UTC)),
        ("2024-03-05T09:15:27.1234567", WHEN),  # no offset: UTC
        ("2024-03-05T11:15:27.123456+02:00", WHEN),
    ],
)
def test_event_time(text: str, expected: datetime) -> None:
    doc = event_grid()
    doc["eventTime"] = text
    assert one(raw(doc)).time == expected


def test_missing_optional_fields() -> None:
    doc = cloud_event()
    for key in ("time", "id", "specversion"):
        del doc[key]
    del doc["data"]["api"]
    event = one(raw(doc))
    assert (event.time, event.event_id, event.api, event.schema) == (
        None,
        "",
        "",
        EventSchema.CLOUD_EVENTS,
    )


@pytest.mark.parametrize(
    "text",
    [
        "  \n" + raw(event_grid()) + "\n",
        "\ufeff" + raw(event_grid()),
        b64(event_grid()).rstrip("="),  # padding dropped
        "\n".join(b64(event_grid())[i : i + 76] for i in range(0, len(b64(event_grid())), 76)),
        base64.b64encode(("\ufeff" + raw(event_grid())).encode()).decode(),
    ],
    ids=["whitespace", "bom", "no-padding", "mime-wrapped", "base64-of-bom"],
)
def test_tolerated_encodings(text: str) -> None:
    assert one(text).name == "incoming/day1.csv"


def test_bytes_input() -> None:
    assert one(raw(event_grid()).encode()).name == "incoming/day1.csv"
    assert one(b64(event_grid()).encode()).name == "incoming/day1.csv"


# ── malformed messages: a ParseError with the reason (for the poison queue) ───


def _with(path: str, value: Any, make: Any = event_grid) -> dict[str, Any]:
    doc = copy.deepcopy(make())
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()


MALFORMED: list[tuple[str | bytes, str | None]] = [
    ("", "an empty message"),
    ("   \n", "an empty message"),
    ("hello world", "not JSON, and base64 of non-UTF-8 bytes"),
    ("hello, world", "not JSON, nor base64"),
    ("{not json", "invalid JSON"),
    ('[{"eventType": "x"', "invalid JSON"),
    (base64.b64encode(b"plain text").decode(), "not JSON, and base64 of text that is not JSON"),
    (base64.b64encode(b"{broken").decode(), "invalid base64-decoded JSON"),
    (base64.b64encode(b"\xff\xfe\x00").decode(), "not JSON, and base64 of non-UTF-8"),
    (b"\xff\xfe{}", "not UTF-8 text"),
    ("[]", "an empty JSON array"),
    ("[" * 100_000, "invalid JSON: nested too deeply"),
    ('{"eventType": "x", "n": ' + "9" * 5000 + "}", "invalid JSON"),
    ('"a string"', "not JSON, nor base64"),
    (b64("a string"), "not JSON, and base64 of text that is not JSON"),
    ("[1, 2]", "event 0: a number, not an event object"),
    ("[[]]", "event 0: an array, not an event object"),
    ('{"id": "x", "subject": "y"}', "neither eventType (Event Grid schema) nor type"),
    (raw(_with("eventType", 7)), "eventType is a number, not a string"),
    (raw(_with("eventType", "")), "eventType is empty"),
    (raw(_with("subject", ["x"])), "subject is an array, not a string"),
    (raw(_with("data", "x")), "data is a string, not an object"),
    (raw(_with("data.api", None)), None),  # null is absent: fine
    (raw(_with("data.api", 3)), "data.api is a number, not a string"),
    (raw(_with("data.url", {})), "data.url is an object, not a string"),
    (raw(_with("eventTime", "yesterday")), 'eventTime "yesterday" is not an ISO 8601 time'),
    (raw(_with("time", "05/03/2024", cloud_event)), "time"),
    (raw(_with("specversion", "0.3", cloud_event)), 'CloudEvents specversion "0.3"'),
    (
        raw(_with("data.url", _DELETE) | {"subject": "/elsewhere"}),
        "BlobCreated event names no blob (subject and data.url)",
    ),
    (
        raw([event_grid(), _with("data.url", "ftp://x/y/z") | {"subject": ""}]),
        "event 1: BlobCreated event names no blob",
    ),
    (
        raw(_with("subject", "/blobServices/default/containers/raw/blobs/a\ud800.csv")),
        "blob name is not valid Unicode",
    ),
]


@pytest.mark.parametrize(
    ("text", "reason"),
    MALFORMED,
    ids=[f"{i}-{reason or 'ok'}" for i, (_, reason) in enumerate(MALFORMED)],
)
def test_malformed(text: str | bytes, reason: str | None) -> None:
    if reason is None:
        parse_message(text)
        return
    with pytest.raises(ParseError) as info:
        parse_message(text)
    assert info.value.reason.startswith(reason), info.value.reason
    assert str(info.value) == info.value.reason


def test_parse_events_keeps_the_well_formed_events_of_an_array() -> None:
    good = [event_grid(name="incoming/a.csv"), event_grid(name="incoming/b.csv")]
    events, bad = parse_events(raw([good[0], {"eventType": 5}, good[1], [1]]))
    assert [e.name for e in events] == ["incoming/a.csv", "incoming/b.csv"]
    assert bad == [
        "event 1: eventType is a number, not a string",
        "event 3: an array, not an event object",
    ]
    events, bad = parse_events(raw([1, {}]))
    assert events == [] and [b.split(":")[0] for b in bad] == ["event 0", "event 1"]
    with pytest.raises(ParseError):  # a lone event object: the message is the event
        parse_events(raw({"eventType": 5}))


def test_parse_error_quotes_are_short() -> None:
    with pytest.raises(ParseError) as info:
        parse_message("x" * 10_000)
    assert len(info.value.reason) < 300


# ── matching a watched directory ──────────────────────────────────────────────


def watch(
    prefix: str = "incoming/",
    *,
    account: str | None = "lakeacct",
    container: str = "raw",
    pattern: tuple[str, ...] = ("*",),
    ignore: tuple[str, ...] = (".*", "*.tmp"),
) -> WatchedDirectory:
    return WatchedDirectory(account, container, prefix, NameMatcher(pattern, ignore))


def created(name: str, **kw: Any) -> BlobEvent:
    return one(b64(event_grid(name, **kw)))


@pytest.mark.parametrize(
    ("event", "target", "reason"),
    [
        (created("incoming/day1.csv"), watch(), None),
        (created("incoming/ünï 💎.csv"), watch(), None),
        (created("top.csv"), watch(""), None),
        (created("incoming/day1.csv"), watch(account="LAKEACCT"), None),
        (created("incoming/day1.csv"), watch(account=None), None),
        (one(b64(adls("FlushWithClose", name="incoming/f.csv"))), watch(), None),
        (one(b64(adls("CreateFile", name="incoming/f.csv"))), watch(), "api CreateFile"),
        (
            created("incoming/x.csv", event_type="Microsoft.Storage.BlobDeleted"),
            watch(),
            "event type Microsoft.Storage.BlobDeleted",
        ),
        (created("incoming/day1.csv"), watch(account="otheracct"), "account lakeacct"),
        (created("incoming/day1.csv", container="other"), watch(), "container other"),
        (created("incoming/sub/day1.csv"), watch(), "in a subdirectory"),
        (created("incoming/sub/"), watch(), "a directory marker"),
        (created("incoming/"), watch(), "a directory marker"),
        (created("incomingday1.csv"), watch(), "outside the watched directory"),
        (created("other/day1.csv"), watch(), "outside the watched directory"),
        (created("incoming/day1.csv"), watch(""), "in a subdirectory"),
        (created("incoming/.hidden"), watch(), "not matched by pattern/ignore"),
        (created("incoming/day1.tmp"), watch(), "not matched by pattern/ignore"),
        (created("incoming/day1.csv"), watch(pattern=("*.parquet",)), "not matched"),
        (created("incoming/day1.csv"), watch(pattern=("*.csv",)), None),
    ],
)
def test_skip_reason(event: BlobEvent, target: WatchedDirectory, reason: str | None) -> None:
    got = skip_reason(event, target)
    if reason is None:
        assert got is None
        assert event_matches(event, target)
    else:
        assert got is not None and got.startswith(reason), got
        assert not event_matches(event, target)


def test_unknown_account_never_matches_a_watch_with_an_account() -> None:
    doc = event_grid()
    del doc["topic"], doc["data"]["url"]
    event = one(raw(doc))
    assert skip_reason(event, watch()) == "account (unknown)"
    assert skip_reason(event, watch(account=None)) is None


def test_matcher_gets_the_relative_name_as_utf8() -> None:
    seen: list[bytes] = []

    def spy(name: bytes) -> bool:
        seen.append(name)
        return True

    target = WatchedDirectory("lakeacct", "raw", "incoming/", spy)
    assert event_matches(created("incoming/día.csv"), target)
    assert seen == ["día.csv".encode()]


def test_events_are_frozen_and_hashable() -> None:
    event = created("incoming/day1.csv")
    with pytest.raises(AttributeError):
        event.name = "x"  # type: ignore[misc]
    assert len({event, created("incoming/day1.csv")}) == 1


# ── a real queue: Azurite with the async client ───────────────────────────────


@pytest.mark.azurite
async def test_queue_round_trip(azurite_queue: str) -> None:  # noqa: F811
    """Base64 and raw messages through Azurite: receive one page, renew, parse, delete."""
    pytest.importorskip("azure.storage.queue", reason="azure-storage-queue is not installed")
    from azure.core import exceptions as az
    from azure.storage.queue.aio import QueueClient

    assert "BlobEndpoint=" in azurite_queue and "QueueEndpoint=" in azurite_queue
    topic = TOPIC.replace("lakeacct", ACCOUNT)
    sent_b64 = event_grid("in/one.csv") | {"topic": topic}
    sent_raw = [cloud_event("in/two.csv") | {"source": topic}, adls("CreateFile", "cloud")]
    name = f"events-{uuid.uuid4().hex[:12]}"
    # No decode policy: text comes back exactly as written, base64 or not; no SDK retries.
    async with QueueClient.from_connection_string(azurite_queue, name, retry_total=0) as queue:
        await queue.create_queue()
        with pytest.raises(az.ResourceExistsError):  # "create if missing" must catch this
            await queue.create_queue()
        await queue.send_message(b64(sent_b64))
        await queue.send_message(raw(sent_raw))

        pages = queue.receive_messages(messages_per_page=32, visibility_timeout=60).by_page()
        messages = [m async for m in await anext(pages)]
        assert len(messages) == 2
        assert [m.dequeue_count for m in messages] == [1, 1]

        # Renewal by id and pop receipt, without content: a new receipt; the old one is dead.
        first = messages[0]
        renewed = await queue.update_message(
            first.id, pop_receipt=first.pop_receipt, visibility_timeout=60
        )
        assert renewed.pop_receipt and renewed.pop_receipt != first.pop_receipt
        assert renewed.next_visible_on is not None
        with pytest.raises(az.HttpResponseError) as stale:
            await queue.delete_message(first.id, pop_receipt=first.pop_receipt)
        assert stale.value.status_code == 400  # PopReceiptMismatch

        events = [e for m in messages for e in parse_message(m.content)]
        assert [(e.schema, e.account, e.container, e.name, e.api) for e in events] == [
            (EventSchema.EVENT_GRID, ACCOUNT, "raw", "in/one.csv", "PutBlockList"),
            (EventSchema.CLOUD_EVENTS, ACCOUNT, "raw", "in/two.csv", "PutBlockList"),
            (EventSchema.CLOUD_EVENTS, "lakeacct", "raw", "incoming/day2.csv", "CreateFile"),
        ]
        target = WatchedDirectory(ACCOUNT, "raw", "in/", NameMatcher(["*.csv"]))
        assert [event_matches(e, target) for e in events] == [True, True, False]

        await queue.delete_message(first.id, pop_receipt=renewed.pop_receipt)
        await queue.delete_message(messages[1])
        with pytest.raises(az.ResourceNotFoundError):  # deleting twice: 404, already gone
            await queue.delete_message(messages[1])
        assert (await queue.get_queue_properties()).approximate_message_count == 0
        assert [m async for m in queue.receive_messages(max_messages=32)] == []
        await queue.delete_queue()


def test_a_blob_named_by_several_events_keeps_the_earliest_time() -> None:
    t1, t2 = datetime(2026, 1, 1, 10, 0, tzinfo=UTC), datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    names: dict[str, datetime | None] = {}
    keep_earliest(names, "a", t2)
    keep_earliest(names, "a", t1)
    keep_earliest(names, "a", t2)
    keep_earliest(names, "a", None)
    keep_earliest(names, "b", None)
    keep_earliest(names, "b", t2)
    assert names == {"a": t1, "b": t2}
