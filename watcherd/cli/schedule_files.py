"""`watcherd schedules create --file` and `schedules export`: schedules as files.

`create` sends an Azure ML v2 schedule YAML file to the daemon as it is (the daemon parses it,
SPEC §13); `export` prints API-created schedules as `[[schedules]]` TOML, or as v2 YAML
(`--format yaml`, written by the config layer), with control characters escaped the way both
formats read them back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from watcherd.cli.output import UsageError, config_text
from watcherd.cli.output import dump as _dump
from watcherd.cli.output import out as _out
from watcherd.client import Client, WatcherdError

__all__ = ["export_toml", "export_yaml", "schedules_create", "schedules_export"]

JSON = dict[str, Any]
_YAML = "application/yaml"
_MAX_YAML = 1024 * 1024  # the daemon's limit per schedule (SPEC §13)
_MAX_FILE = 16 * _MAX_YAML  # an export of many schedules
# Keys `schedules export` leaves out: the read-only ones of SPEC §8.
_EXPORT_SKIP = frozenset(
    {"source", "created_at", "updated_at", "next_fire_times", "trigger_words", "last_run", "error"}
)


def _read_file(name: str) -> str:
    try:
        if name == "-":
            data = sys.stdin.buffer.read(_MAX_FILE + 1)
        else:
            with Path(name).open("rb") as f:
                data = f.read(_MAX_FILE + 1)
    except OSError as exc:
        raise UsageError(f"{name}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE:
        raise UsageError(f"{name}: larger than {_MAX_FILE >> 20} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _documents(name: str, text: str) -> list[str]:
    """One text per YAML document: `schedules export --format yaml` writes several."""
    from watcherd.config.yaml import split_documents  # PyYAML, only when asked for
    from watcherd.core.errors import ConfigErrors

    try:
        docs = [d for d in split_documents(text) if d.strip()] or [text]
    except ConfigErrors as exc:
        raise UsageError(f"{name}: {exc.errors[0].reason if exc.errors else exc}") from None
    for i, doc in enumerate(docs):
        if len(doc.encode("utf-8", "surrogatepass")) > _MAX_YAML:
            where = f"document {i + 1} of " if len(docs) > 1 else ""
            raise UsageError(f"{where}{name}: larger than 1 MiB, the daemon's limit per schedule")
    return docs


def schedules_create(client: Client, ns: argparse.Namespace) -> int:
    """POST each Azure ML v2 schedule YAML document of a file (SPEC §13); the daemon parses
    them. One document prints one schedule, several (an export) print each, in order; the
    first refused one stops the command, naming its document."""
    docs = _documents(ns.file, _read_file(ns.file))
    created: list[JSON] = []
    for i, doc in enumerate(docs):
        try:
            created.append(
                client.call(
                    "POST", "/schedules", content=doc.encode(), headers={"Content-Type": _YAML}
                )
            )
        except WatcherdError as exc:
            if len(docs) > 1:
                done = f" ({i} created before it)" if i else ""
                what = f"{exc.key_path}: {exc.message}" if exc.key_path else exc.message
                exc.message, exc.key_path = f"document {i + 1} of {ns.file}{done}: {what}", None
            raise
        if not ns.json:
            s = created[-1]
            _out(f"created schedule {s['name']} ({s['id']}): {s['status']}")
    if ns.json:
        _dump(created[0] if len(docs) == 1 else created)
    return 0


def export_toml(schedules: Sequence[JSON]) -> str:
    """API-created schedules as `[[schedules]]` tables the config loader accepts."""
    from watcherd.config.export import toml_key, toml_value

    blocks = []
    for s in schedules:
        lines = ["[[schedules]]"]
        for key, value in s.items():
            if value is None or key in _EXPORT_SKIP:
                continue
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def export_yaml(schedules: Sequence[JSON]) -> str:
    """API-created schedules as Azure ML v2 schedule YAML (SPEC §13), by the config layer."""
    from watcherd.config.yaml import export_yaml as write  # PyYAML, only when asked for

    return write(schedules)


def schedules_export(client: Client, ns: argparse.Namespace) -> int:
    items = [s for s in client.schedules() if s.get("source") == "api"]
    items.sort(key=lambda s: s["name"])
    if ns.json:
        _dump(items)
    elif ns.format == "yaml":
        text = export_yaml(items) if items else "# no API-created schedules\n"
        sys.stdout.write(config_text(text, bidi=False))
    elif items:
        sys.stdout.write(config_text(export_toml(items), bidi=True))
    else:
        _out("# no API-created schedules")
    return 0
