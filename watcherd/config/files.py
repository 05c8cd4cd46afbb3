"""Datastore triggers (SPEC §2, §4): the keys of a change-based schedule into a DatastoreTrigger.

Some keys depend on the datastore's kind: `events` is a boolean for a local datastore (inotify
on or off) and a Storage Queue table for an azure_blob one (Event Grid BlobCreated events);
`list_page_size` only pages a blob listing. Those are checked once the datastore is known.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from watcherd.config.limits import GLOBS_MAX, PATH_MAX, URL_MAX
from watcherd.config.schema import (
    At,
    Converter,
    EnvStr,
    Field,
    Invalid,
    as_bool,
    as_choice,
    as_duration,
    as_int,
    as_name,
    as_secret,
    as_str,
    as_str_list,
    as_text,
    describe,
    did_you_mean,
    read_table,
    url_problem,
)
from watcherd.core.durations import parse_polling_interval
from watcherd.core.models import (
    BlobDatastore,
    BlobEvents,
    Config,
    Datastore,
    DatastoreTrigger,
    LocalDatastore,
)

__all__ = ["DATASTORE_KEYS", "datastore_fields", "datastore_trigger"]

DATASTORE_KEYS = (
    "datastore", "path_on_datastore", "polling_interval", "data_path_parameter_name",
    "pattern", "ignore", "ignore_defaults", "settle", "initial", "events", "list_page_size",
)  # fmt: skip
# Azure's queue rule: 3-63 lowercase letters, digits and single hyphens, not at either end.
_QUEUE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]", re.ASCII)
_QUEUE_MAX = 63
# Relative segments without separators, dots-only names or backslashes: already normal.
_PLAIN_PATH = re.compile(r"(?!\.\.?(?:/|$))[^/\\]+(?:/(?!\.\.?(?:/|$))[^/\\]+)*")
_PAGE_MAX = 5000  # Azure's own limit on one listing page


def _as_datastore_ref(datastores: Mapping[str, Datastore], broken: frozenset[str]) -> Converter:
    def convert(value: object, at: At) -> Datastore:
        name = as_name(value, at)
        store = datastores.get(name)
        if store is not None:
            return store
        if name in broken:
            raise Invalid(None)
        known = [*datastores, *broken]
        raise Invalid(f"unknown datastore {name!r}" + did_you_mean(name, known))

    return convert


_as_path_text = as_text(PATH_MAX)


def _as_path_on_datastore(value: object, at: At) -> str:
    text = _as_path_text(value, at)
    if _PLAIN_PATH.fullmatch(text):
        return text  # the common case, without PurePosixPath's parse (issue #14)
    if "\\" in text:
        raise Invalid(f"use / as the separator, got {text!r}")
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts:
        raise Invalid(f"must be a relative path without '..', got {text!r}")
    return "" if str(path) == "." else str(path)


def _as_polling_interval(value: object, at: At) -> object:
    if isinstance(value, EnvStr):
        try:
            value = float(value) if "." in value else int(value)
        except ValueError:
            pass  # a duration string
    try:
        return parse_polling_interval(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


_as_glob = as_text(1024, empty=False)


def _as_pattern(value: object, at: At) -> tuple[str, ...]:
    patterns: tuple[str, ...] = as_str_list(_as_glob, allow_str=True, most=GLOBS_MAX)(value, at)
    if not patterns:
        raise Invalid('needs at least one glob (all files: "*")')
    return patterns


def _as_is(value: object, at: At) -> object:
    return value


def datastore_fields(
    datastores: Mapping[str, Datastore], broken: frozenset[str]
) -> dict[str, Field]:
    """The converters of a datastore trigger's keys (`events` is judged with its datastore)."""
    return {
        "datastore": Field(_as_datastore_ref(datastores, broken), required=True),
        "path_on_datastore": Field(_as_path_on_datastore),
        "polling_interval": Field(_as_polling_interval),
        "data_path_parameter_name": Field(as_name),
        "pattern": Field(_as_pattern),
        "ignore": Field(as_str_list(_as_glob, most=GLOBS_MAX)),
        "ignore_defaults": Field(as_bool),
        "settle": Field(as_duration()),
        "initial": Field(as_choice("skip", "fire")),
        "events": Field(_as_is),
        "list_page_size": Field(as_int(1, _PAGE_MAX)),
    }


# ── events ────────────────────────────────────────────────────────────────────


def _as_queue(value: object, at: At) -> str:
    text = as_str(value, at)
    if not _QUEUE.fullmatch(text):
        raise Invalid(
            f"invalid queue name {text[:80]!r}: 3-63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit"
        )
    return text


_as_url_text = as_text(URL_MAX, empty=False)


def _as_queue_url(value: object, at: At) -> str:
    text = _as_url_text(value, at)
    if (why := url_problem(text, ("https", "http"), "https://…")) is not None:
        raise Invalid(why)
    return text


_EVENT_FIELDS = {
    "queue": Field(_as_queue, required=True),
    "queue_account_url": Field(_as_queue_url),
    "queue_connection_string": Field(as_secret),
    "poison_queue": Field(as_str),
}


def _blob_events(value: object, at: At, store: BlobDatastore) -> BlobEvents | None | bool:
    """`events` of an azure_blob trigger; False when already reported."""
    if value is False:
        return None  # no queue: listing alone
    if not isinstance(value, Mapping):
        example = '{ queue = "blob-events" }'
        at.error(
            f"an azure_blob datastore ({store.name!r}) takes its events from a Storage Queue: "
            f"events = {example}, got {describe(value) if value is not True else 'true'}"
        )
        return False
    before = len(at.problems.errors)
    values = read_table(value, at, _EVENT_FIELDS)
    if values is None or len(at.problems.errors) > before or "queue" not in values:
        return False
    if "queue_account_url" in values and "queue_connection_string" in values:
        (at / "queue_connection_string").error(
            "give either queue_account_url or queue_connection_string, not both"
        )
        return False
    events = BlobEvents(**values)
    poison = events.poison
    if len(poison) > _QUEUE_MAX:
        where = "poison_queue" if events.poison_queue else "queue"
        (at / where).error(
            f"the poison queue name {poison[:80]!r} is longer than {_QUEUE_MAX} characters"
            + ("" if events.poison_queue else " (the default <queue>-poison): set poison_queue")
        )
        return False
    if events.poison_queue is not None and not _QUEUE.fullmatch(poison):
        (at / "poison_queue").error(f"invalid queue name {poison!r}: 3-63 lowercase letters, "
                                    "digits and single hyphens")  # fmt: skip
        return False
    if poison == events.queue:
        (at / "poison_queue").error("must differ from queue")
        return False
    return events


def datastore_trigger(values: dict[str, Any], at: At, config: Config) -> DatastoreTrigger | None:
    """The trigger from converted `values`, with the keys that depend on the datastore's kind."""
    store: Datastore = values["datastore"]
    args = {k: values[k] for k in DATASTORE_KEYS[1:] if k in values}
    ok = True
    if "events" in values:
        raw = values["events"]
        if isinstance(store, LocalDatastore):
            try:
                args["events"] = as_bool(raw, at / "events")
            except Invalid as exc:
                (at / "events").error(f"{exc.reason} (a local datastore: inotify on or off)")
                ok = False
        else:
            events = _blob_events(raw, at / "events", store)
            ok = events is not False
            args["events"] = events if events is not False else None
    if "list_page_size" in values and isinstance(store, LocalDatastore):
        (at / "list_page_size").error(f"only for azure_blob datastores ({store.name!r} is local)")
        ok = False
    if not ok:
        return None
    return DatastoreTrigger(datastore=store.name, **args)
