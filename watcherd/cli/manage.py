"""`watcherd schedules|pipelines|experiments|runs …`: manage a running daemon through its API.

Exit codes (SPEC §6): 0 ok; 1 runtime failure (daemon unreachable, 401, 404, 409, 421, 5xx);
2 usage error: bad arguments, found by argparse or refused by the daemon (400, 413, 422).
Lists print an aligned table (`--json`: one JSON document).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import os
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from watcherd.cli.output import UsageError
from watcherd.cli.output import details as _details
from watcherd.cli.output import dump as _dump
from watcherd.cli.output import err as _err
from watcherd.cli.output import out as _out
from watcherd.cli.output import table as _table
from watcherd.cli.schedule_files import schedules_create, schedules_export
from watcherd.client import (
    Client,
    Discovery,
    ValidationError,
    WatcherdError,
    find_daemon,
    quote_id,
)

__all__ = ["main"]

JSON = dict[str, Any]
Command = Callable[[Client, argparse.Namespace], int]


def _emit(ns: argparse.Namespace, data: Any, human: Callable[[], None]) -> int:
    if ns.json:
        _dump(data)
    else:
        human()
    return 0


def _when(run: JSON | None) -> str:
    if not run:
        return "never"
    at = run.get("finished_at") or run.get("started_at") or run.get("queued_at") or ""
    return f"{run.get('status')} {at}".strip()


# ── schedules ─────────────────────────────────────────────────────────────────


def _pipeline_names(client: Client) -> dict[str, str]:
    return {p["id"]: p["name"] for p in client.get("/pipelines")["items"]}


def schedules_list(client: Client, ns: argparse.Namespace) -> int:
    if ns.pipeline:
        pid = client.get(f"/pipelines/{quote_id(ns.pipeline)}")["id"]
        items = client.schedules(pipeline_id=pid)
    else:
        items = client.schedules(active_only=not ns.all)
    names = _pipeline_names(client) if items and not ns.json else {}
    rows = [
        [
            s["name"],
            s["status"],
            s.get("source"),
            names.get(s["pipeline"], s["pipeline"]),
            s.get("trigger_words"),
            (s.get("next_fire_times") or [None])[0],
            _when(s.get("last_run")),
            s["id"],
        ]
        for s in sorted(items, key=lambda s: s["name"])
    ]
    headers = ["NAME", "STATUS", "SOURCE", "PIPELINE", "TRIGGER", "NEXT", "LAST RUN", "ID"]
    hint = "no schedules" if ns.all or ns.pipeline else "no Active schedules (--all shows all)"
    return _emit(ns, items, lambda: _table(headers, rows, hint))


def _schedule(client: Client, ident: str) -> JSON:
    data: JSON = client.get(f"/schedules/{quote_id(ident)}")
    return data


def schedules_show(client: Client, ns: argparse.Namespace) -> int:
    data = _schedule(client, ns.id)
    return _emit(ns, data, lambda: _details(data))


def _zone_of(schedule: JSON) -> str:
    from watcherd.core.timezones import resolve_zone

    rec = schedule.get("recurrence") or {}
    try:
        return resolve_zone(rec.get("time_zone") or schedule.get("time_zone") or "UTC")
    except WatcherdError:
        return "UTC"


def schedules_next(client: Client, ns: argparse.Namespace) -> int:
    from watcherd.cli.checkconfig import fire_time_line

    s = _schedule(client, ns.id)
    times: list[str] = client.get(f"/schedules/{quote_id(s['id'])}/next", n=ns.n)["items"]

    def human() -> None:
        if not times:
            why = "it is Disabled" if s["status"] != "Active" else s.get("trigger_words")
            _out(f"{s['name']}: no upcoming fire times ({why})")
        zone = _zone_of(s)
        for t in times:
            _out(fire_time_line(datetime.fromisoformat(t.replace("Z", "+00:00")), zone))

    return _emit(ns, times, human)


def _set_status(kind: str, action: str) -> Command:
    def command(client: Client, ns: argparse.Namespace) -> int:
        data = client.post(f"/{kind}/{quote_id(ns.id)}/{action}")
        return _emit(ns, data, lambda: _out(f"{data['name']} ({data['id']}): {data['status']}"))

    return command


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _trigger_path(ns: argparse.Namespace) -> JSON:
    """`path`, or `path_b64` for a name that is not UTF-8 (argv holds its bytes as PEP 383
    surrogates) or was given as `--path-b64`."""
    if ns.path_b64 is not None:
        try:
            base64.b64decode(ns.path_b64, validate=True)
        except (binascii.Error, ValueError):
            raise UsageError(f"--path-b64: not base64: {ns.path_b64!r}") from None
        return {"path_b64": ns.path_b64}
    if ns.path is None:
        return {}
    raw = os.fsencode(ns.path)
    try:
        return {"path": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"path_b64": base64.b64encode(raw).decode("ascii")}


def schedules_trigger(client: Client, ns: argparse.Namespace) -> int:
    body: JSON = _trigger_path(ns)
    if ns.param:
        body["parameters"] = dict(ns.param)
    run = client.post(
        f"/schedules/{quote_id(ns.id)}/trigger", body, headers={"X-Watcherd-Client": "cli"}
    )
    return _emit(ns, run, lambda: _out(f"run {run['id']}: {run['status']}"))


def schedules_delete(client: Client, ns: argparse.Namespace) -> int:
    s = _schedule(client, ns.id)
    client.delete(f"/schedules/{quote_id(s['id'])}")
    result = {"deleted": s["id"], "name": s["name"]}
    return _emit(ns, result, lambda: _out(f"deleted schedule {s['name']} ({s['id']})"))


# ── pipelines, experiments ────────────────────────────────────────────────────


def pipelines_list(client: Client, ns: argparse.Namespace) -> int:
    items = client.get("/pipelines", active_only=not ns.all)["items"]
    rows = [
        [
            p["name"],
            p["status"],
            p.get("kind"),
            len(p.get("schedules") or []),
            _when(p.get("last_run")),
            p["id"],
            p.get("description"),
        ]
        for p in sorted(items, key=lambda p: p["name"])
    ]
    headers = ["NAME", "STATUS", "KIND", "SCHEDULES", "LAST RUN", "ID", "DESCRIPTION"]
    hint = "no pipelines" if ns.all else "no Active pipelines (--all shows all)"
    return _emit(ns, items, lambda: _table(headers, rows, hint))


def pipelines_show(client: Client, ns: argparse.Namespace) -> int:
    data = client.get(f"/pipelines/{quote_id(ns.id)}")
    return _emit(ns, data, lambda: _details(data))


def experiments_list(client: Client, ns: argparse.Namespace) -> int:
    items = client.get("/experiments")["items"]
    rows = [[e["name"]] for e in items]
    return _emit(ns, items, lambda: _table(["NAME"], rows, "no experiments"))


# ── runs ──────────────────────────────────────────────────────────────────────


def _trigger_text(run: JSON) -> str:
    t = run.get("trigger") or {}
    if t.get("kind") == "file":
        return f"file {t.get('path')}"
    if t.get("kind") == "time":
        return f"slot {t.get('slot')}"
    if t.get("kind") == "manual":
        return f"manual ({t.get('by')})"
    return str(t.get("kind") or "-")


def runs_list(client: Client, ns: argparse.Namespace) -> int:
    params: JSON = {"status": ns.status, "limit": ns.limit}
    if ns.schedule:
        params["schedule_id"] = _schedule(client, ns.schedule)["id"]
    if ns.pipeline:
        params["pipeline_id"] = client.get(f"/pipelines/{quote_id(ns.pipeline)}")["id"]
    items = client.get("/runs", **params)["items"]
    rows = [
        [
            r["id"],
            r["status"],
            r.get("schedule_name") or r.get("schedule_id"),
            _trigger_text(r),
            r.get("started_at") or r.get("queued_at"),
            None if r.get("duration") is None else f"{r['duration']:.1f}s",
            r.get("exit_code"),
            r.get("error"),
        ]
        for r in items
    ]
    headers = ["ID", "STATUS", "SCHEDULE", "TRIGGER", "STARTED", "DURATION", "EXIT", "ERROR"]
    return _emit(ns, items, lambda: _table(headers, rows, "no runs"))


def runs_show(client: Client, ns: argparse.Namespace) -> int:
    data = client.get(f"/runs/{quote_id(ns.id)}")
    return _emit(ns, data, lambda: _details(data))


def runs_logs(client: Client, ns: argparse.Namespace) -> int:
    data = client.log(ns.id)
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
    return 0


def _run_action(action: str) -> Command:
    def command(client: Client, ns: argparse.Namespace) -> int:
        run = client.post(f"/runs/{quote_id(ns.id)}/{action}")
        return _emit(ns, run, lambda: _out(f"run {run['id']}: {run['status']}"))

    return command


# ── replicas ──────────────────────────────────────────────────────────────────


def replicas_list(client: Client, ns: argparse.Namespace) -> int:
    """The live replicas (SPEC §12); one without a shared database."""
    items = client.get("/replicas")["items"]
    rows = [
        [
            r["id"],
            r.get("host"),
            r.get("started"),
            r.get("last_heartbeat"),
            len(r.get("schedules") or []),
            r.get("running"),
            (r.get("config_hash") or "")[:12],
        ]
        for r in sorted(items, key=lambda r: r["id"])
    ]
    headers = ["ID", "HOST", "STARTED", "LAST HEARTBEAT", "SCHEDULES", "RUNNING", "CONFIG"]
    return _emit(ns, items, lambda: _table(headers, rows, "no live replicas"))


# ── argv ──────────────────────────────────────────────────────────────────────


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", help="the daemon's URL (default: discovered as the SDK does)")
    p.add_argument("--token", help="the API token (default: $WATCHERD_TOKEN or the token file)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p


def _add(sub: Any, name: str, func: Command, help_: str, ident: str | None = None) -> Any:
    p = sub.add_parser(name, parents=[_common()], help=help_, description=help_)
    if ident:
        p.add_argument("id", metavar="ID", help=f"{ident} id or name")
    p.set_defaults(func=func)
    return p


def _schedules(sub: Any) -> None:
    g = sub.add_parser("schedules", help="schedules").add_subparsers(dest="action", required=True)
    p = _add(g, "list", schedules_list, "list schedules (Active ones unless --all)")
    p.add_argument("--all", action="store_true", help="include Disabled and removed schedules")
    p.add_argument("--pipeline", metavar="ID", help="only this pipeline's (all statuses)")
    _add(g, "show", schedules_show, "show one schedule", "schedule")
    p = _add(g, "next", schedules_next, "the next fire times", "schedule")
    p.add_argument("-n", type=int, default=5, choices=range(1, 101), metavar="N")
    _add(g, "enable", _set_status("schedules", "enable"), "enable a schedule", "schedule")
    _add(g, "disable", _set_status("schedules", "disable"), "disable a schedule", "schedule")
    p = _add(g, "trigger", schedules_trigger, "run a schedule now", "schedule")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--path", help="for a datastore schedule: a file in the watched directory")
    where.add_argument(
        "--path-b64", metavar="B64", help="the same, as base64 of the name's bytes (any bytes)"
    )
    p.add_argument("--param", action="append", type=_param, metavar="K=V", default=[])
    _add(g, "delete", schedules_delete, "delete a Disabled API-created schedule", "schedule")
    p = _add(g, "export", schedules_export, "print API-created schedules (TOML or v2 YAML)")
    p.add_argument("--format", choices=("toml", "yaml"), default="toml")
    p = _add(g, "create", schedules_create, "create a schedule from Azure ML v2 schedule YAML")
    p.add_argument("--file", required=True, metavar="SCHEDULE.yml", help="YAML file, - for stdin")


def _others(sub: Any) -> None:
    g = sub.add_parser("pipelines", help="pipelines").add_subparsers(dest="action", required=True)
    p = _add(g, "list", pipelines_list, "list pipelines (Active ones unless --all)")
    p.add_argument("--all", action="store_true")
    _add(g, "show", pipelines_show, "show one pipeline", "pipeline")
    _add(g, "enable", _set_status("pipelines", "enable"), "enable a pipeline", "pipeline")
    _add(g, "disable", _set_status("pipelines", "disable"), "disable a pipeline", "pipeline")
    g = sub.add_parser("experiments", help="experiments").add_subparsers(
        dest="action", required=True
    )
    _add(g, "list", experiments_list, "list experiments")
    g = sub.add_parser("runs", help="runs").add_subparsers(dest="action", required=True)
    p = _add(g, "list", runs_list, "list runs, newest first")
    p.add_argument("--schedule", metavar="ID")
    p.add_argument("--pipeline", metavar="ID")
    p.add_argument("--status", metavar="S")
    p.add_argument("--limit", type=int, default=20, metavar="N")
    _add(g, "show", runs_show, "show one run", "run")
    _add(g, "logs", runs_logs, "print a run's kept output", "run")
    _add(g, "retry", _run_action("retry"), "queue a finished run again", "run")
    _add(g, "cancel", _run_action("cancel"), "cancel a Queued or Running run", "run")
    g = sub.add_parser("replicas", help="replicas").add_subparsers(dest="action", required=True)
    _add(g, "list", replicas_list, "list the live replicas (SPEC §12)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="watcherd", description=__doc__)
    sub = parser.add_subparsers(dest="group", required=True)
    _schedules(sub)
    _others(sub)
    return parser


def _call(found: Discovery, ns: argparse.Namespace) -> int:
    try:
        client = Client.for_discovery(found)
    except WatcherdError as exc:  # a URL httpx cannot use: a usage error
        raise UsageError(exc.message) from None
    with client:
        result: int = ns.func(client, ns)
        return result


def main(argv: list[str]) -> int:
    """Run one management command; `argv` starts with the group, e.g. ["schedules", "list"]."""
    try:
        ns = _parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code in (0, None) else 2
    found = find_daemon(ns.url, ns.token)
    for path, reason in found.skipped:
        _err(f"warning: ignoring {path}: {reason}")
    try:
        return _call(found, ns)
    except UsageError as exc:
        _err(str(exc))
        return 2
    except ValidationError as exc:
        _err(f"{exc.key_path}: {exc.message}" if exc.key_path else exc.message)
        return 2
    except WatcherdError as exc:
        _err(exc.message)
        return 2 if exc.status in _BAD_ARGUMENTS else 1


# The daemon's answers to a request whose values came from the command line (a query value
# such as `--status`/`--limit`, a schedule YAML file) and are refused as such: usage errors
# (exit 2). 422 is a ValidationError; 401, 404, 409, 421 and 5xx are runtime failures (1).
_BAD_ARGUMENTS = frozenset({400, 413, 422})
