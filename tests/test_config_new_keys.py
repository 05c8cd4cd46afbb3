"""The config keys of this round (SPEC §2, §4, §12, §13): symlinks, Azure ML datastore names,
blob events, listing pages, batch endpoints, and the replica settings of [daemon]."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from watcherd.config import load, parse_schedule, schedule_to_dict
from watcherd.core.errors import ConfigErrors
from watcherd.core.models import (
    BatchEndpointTarget,
    BlobDatastore,
    BlobEvents,
    Config,
    DatastoreTrigger,
    LocalDatastore,
    Source,
)
from watcherd.core.redact import redact

BASE = """\
[daemon]
state_dir = "st"

[datastores.inbox]
kind = "local"
root = "inbox"

[datastores.blob]
kind = "azure_blob"
container = "data"
connection_string = "UseDevelopmentStorage=true"

[pipelines.train]
kind = "command"
steps = [["python", "train.py"]]

[pipelines.batch]
kind = "batch_endpoint"
endpoint = "https://ep.westeurope.inference.ml.azure.com/jobs"
"""

SCHEDULE = """
[[schedules]]
name = "S"
pipeline = "train"
experiment_name = "E"
"""

CONN = (
    "DefaultEndpointsProtocol=https;AccountName=acct;"
    "AccountKey=c2VjcmV0LWtleS1ub3Qtc2hvd24=;EndpointSuffix=core.windows.net"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load(write(tmp_path, text), env or {})


def problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as exc:
        load_text(tmp_path, text, env)
    return [str(e) for e in exc.value.errors]


# ── datastores ────────────────────────────────────────────────────────────────


def test_follow_symlinks(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE)
    inbox = cfg.datastores["inbox"]
    assert isinstance(inbox, LocalDatastore) and inbox.follow_symlinks == "within_root"
    cfg = load_text(
        tmp_path, BASE.replace('root = "inbox"', 'root = "inbox"\nfollow_symlinks = "always"')
    )
    assert cfg.datastores["inbox"].follow_symlinks == "always"  # type: ignore[union-attr]
    assert problems(tmp_path, BASE.replace('root = "inbox"', 'root = "inbox"\nfollow_symlinks = "never"')) == [  # noqa: E501
        "datastores.inbox.follow_symlinks: invalid value 'never', expected one of within_root, always"  # noqa: E501
    ]  # fmt: skip
    assert problems(tmp_path, BASE.replace('root = "inbox"', 'root = "inbox"\nfollow_symlink = true')) == [  # noqa: E501
        "datastores.inbox.follow_symlink: unknown key 'follow_symlink', did you mean "
        "'follow_symlinks'?"
    ]  # fmt: skip
    blob = BASE.replace('container = "data"', 'container = "data"\nfollow_symlinks = "always"')
    assert problems(tmp_path, blob) == [
        "datastores.blob.follow_symlinks: 'follow_symlinks' is a key of local datastores, not "
        "of azure_blob datastores"
    ]


def test_azureml_datastore(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE.replace('container = "data"',
                                           'container = "data"\nazureml_datastore = "workspaceblobstore"'))  # fmt: skip  # noqa: E501
    blob = cfg.datastores["blob"]
    assert isinstance(blob, BlobDatastore) and blob.azureml_datastore == "workspaceblobstore"
    assert load_text(tmp_path, BASE).datastores["blob"].azureml_datastore is None  # type: ignore[union-attr]
    assert problems(tmp_path, BASE.replace('container = "data"',
                                           'container = "data"\nazureml_datastore = "a/b"')) == [
        "datastores.blob.azureml_datastore: invalid Azure ML datastore name 'a/b': up to 255 "
        "characters from A-Z a-z 0-9 _ - (not starting with -)"
    ]  # fmt: skip
    assert problems(tmp_path, BASE.replace('root = "inbox"', 'root = "inbox"\nazureml_datastore = "x"')) == [  # noqa: E501
        "datastores.inbox.azureml_datastore: 'azureml_datastore' is a key of azure_blob "
        "datastores, not of local datastores"
    ]  # fmt: skip


# ── datastore triggers: events, list_page_size ────────────────────────────────


def blob_schedule(extra: str) -> str:
    return BASE + SCHEDULE + 'datastore = "blob"\n' + extra


def test_local_events_are_a_boolean(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE + SCHEDULE + 'datastore = "inbox"\nevents = false\n')
    trigger = cfg.schedules[0].trigger
    assert isinstance(trigger, DatastoreTrigger) and trigger.events is False
    cfg = load_text(tmp_path, BASE + SCHEDULE + 'datastore = "inbox"\n')
    assert cfg.schedules[0].trigger.events is None  # type: ignore[union-attr]
    assert problems(tmp_path, BASE + SCHEDULE + 'datastore = "inbox"\nevents = { queue = "q1q" }\n') == [  # noqa: E501
        "schedules[0].events: expected true or false, got a table (a local datastore: inotify "
        "on or off)"
    ]  # fmt: skip


def test_blob_events_table(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, blob_schedule('events = { queue = "blob-events" }\n'))
    trigger = cfg.schedules[0].trigger
    assert isinstance(trigger, DatastoreTrigger)
    assert trigger.events == BlobEvents(queue="blob-events")
    assert isinstance(trigger.events, BlobEvents) and trigger.events.poison == "blob-events-poison"
    assert trigger.list_page_size == 5000
    cfg = load_text(tmp_path, blob_schedule(
        'events = { queue = "evq", queue_account_url = "https://acct.queue.core.windows.net", '
        'poison_queue = "ev-bad" }\nlist_page_size = 2\n'))  # fmt: skip
    trigger = cfg.schedules[0].trigger
    assert isinstance(trigger, DatastoreTrigger) and trigger.list_page_size == 2
    assert trigger.events == BlobEvents(
        queue="evq", queue_account_url="https://acct.queue.core.windows.net", poison_queue="ev-bad"
    )
    cfg = load_text(tmp_path, blob_schedule("events = false\n"))
    assert cfg.schedules[0].trigger.events is None  # type: ignore[union-attr]
    d = schedule_to_dict(cfg.schedules[0], cfg)
    assert d["events"] is None and d["list_page_size"] == 5000


@pytest.mark.parametrize(
    ("events", "line"),
    [
        ('{ queue = "Bad_Name" }', "schedules[0].events.queue: invalid queue name 'Bad_Name': "
         "3-63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit"),  # noqa: E501
        ('{ queue = "ab" }', "schedules[0].events.queue: invalid queue name 'ab': 3-63 lowercase "
         "letters, digits and single hyphens, starting and ending with a letter or digit"),
        ('{ queue = "a--b" }', "schedules[0].events.queue: invalid queue name 'a--b': 3-63 "
         "lowercase letters, digits and single hyphens, starting and ending with a letter or digit"),  # noqa: E501
        ("{ poison_queue = \"pq1\" }", "schedules[0].events.queue: required"),
        ('{ queu = "abc" }', "schedules[0].events.queu: unknown key 'queu', did you mean 'queue'?"),
        (f'{{ queue = "abc", queue_account_url = "https://a.queue.core.windows.net", '
         f'queue_connection_string = "{CONN}" }}',
         "schedules[0].events.queue_connection_string: give either queue_account_url or "
         "queue_connection_string, not both"),
        ('{ queue = "abc", queue_account_url = "ftp://x" }',
         "schedules[0].events.queue_account_url: invalid URL 'ftp://x': expected https://…"),
        (f'{{ queue = "abc", poison_queue = "{"p" * 64}" }}',
         f"schedules[0].events.poison_queue: the poison queue name '{'p' * 64}' is longer than 63 "
         "characters"),
        (f'{{ queue = "{"q" * 57}" }}',
         f"schedules[0].events.queue: the poison queue name '{'q' * 57}-poison' is longer than 63 "
         "characters (the default <queue>-poison): set poison_queue"),
        ('{ queue = "abc", poison_queue = "abc" }', "schedules[0].events.poison_queue: must differ from queue"),  # noqa: E501
        ("true", "schedules[0].events: an azure_blob datastore ('blob') takes its events from a "
         'Storage Queue: events = { queue = "blob-events" }, got true'),
        ('"q"', "schedules[0].events: an azure_blob datastore ('blob') takes its events from a "
         "Storage Queue: events = { queue = \"blob-events\" }, got string 'q'"),
    ],
)  # fmt: skip
def test_blob_events_problems(tmp_path: Path, events: str, line: str) -> None:
    lines = problems(tmp_path, blob_schedule(f"events = {events}\n"))
    assert lines[0] == line
    assert lines[1:] == (["schedules[0].events.queue: required"] if "queu " in events else [])


def test_queue_names_up_to_63_are_fine(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, blob_schedule(f'events = {{ queue = "{"q" * 56}" }}\n'))
    assert cfg.schedules[0].trigger.events.poison == "q" * 56 + "-poison"  # type: ignore[union-attr]
    cfg = load_text(tmp_path, blob_schedule(
        f'events = {{ queue = "{"q" * 63}", poison_queue = "{"p" * 63}" }}\n'))  # fmt: skip
    assert cfg.schedules[0].trigger.events.poison == "p" * 63  # type: ignore[union-attr]


def test_queue_connection_string_is_a_secret(tmp_path: Path) -> None:
    text = blob_schedule(f'events = {{ queue = "abc", queue_connection_string = "{CONN}" }}\n')
    cfg = load_text(tmp_path, text)
    assert CONN in cfg.secrets and "c2VjcmV0LWtleS1ub3Qtc2hvd24=" in cfg.secrets
    assert cfg.schedules[0].trigger.events.queue_connection_string == CONN  # type: ignore[union-attr]
    # A broken file never echoes it, nor its key.
    bad = text.replace('queue = "abc"', 'queue = "A"').replace("abc", "A")
    lines = problems(tmp_path, bad + "bogus = 1\n")
    assert not any("c2VjcmV0" in line or "AccountName" in line for line in lines)
    assert (
        redact("the key c2VjcmV0LWtleS1ub3Qtc2hvd24= leaked", cfg.secrets) == "the key *** leaked"
    )
    sas = "https://acct.queue.core.windows.net/?sv=2024&sig=abcdEFGH"
    cfg = load_text(
        tmp_path, blob_schedule(f'events = {{ queue = "abc", queue_account_url = "{sas}" }}\n')
    )
    assert "sv=2024&sig=abcdEFGH" in cfg.secrets


def test_list_page_size(tmp_path: Path) -> None:
    assert problems(tmp_path, blob_schedule("list_page_size = 0\n")) == [
        "schedules[0].list_page_size: must be at least 1, got 0"
    ]
    assert problems(tmp_path, blob_schedule("list_page_size = 5001\n")) == [
        "schedules[0].list_page_size: must be at most 5000, got 5001"
    ]
    assert problems(tmp_path, BASE + SCHEDULE + 'datastore = "inbox"\nlist_page_size = 10\n') == [
        "schedules[0].list_page_size: only for azure_blob datastores ('inbox' is local)"
    ]
    assert problems(tmp_path, BASE + SCHEDULE + 'cron = "* * * * *"\nlist_page_size = 10\n') == [
        "schedules[0].list_page_size: 'list_page_size' is a key of datastore schedules, not of "
        "cron schedules"
    ]


# ── batch_endpoint pipelines ──────────────────────────────────────────────────


def test_batch_endpoint_pipeline(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BASE)
    target = cfg.pipelines["batch"].target
    assert target == BatchEndpointTarget(
        endpoint="https://ep.westeurope.inference.ml.azure.com/jobs"
    )
    assert (target.deployment, target.input_name, target.request_timeout) == (
        None, "input_data", timedelta(seconds=30))  # fmt: skip
    full = BASE.replace(
        'kind = "batch_endpoint"\n',
        """kind = "batch_endpoint"
deployment = "blue"
input_name = "heart_data"
request_timeout = "2m"
description = "scores"
parameters = { mode = "append" }
retry = { attempts = 3 }
timeout = "1h"
""",
    )
    p = load_text(tmp_path, full).pipelines["batch"]
    assert p.target == BatchEndpointTarget(
        endpoint="https://ep.westeurope.inference.ml.azure.com/jobs",
        deployment="blue", input_name="heart_data", request_timeout=timedelta(minutes=2),
    )  # fmt: skip
    assert (p.kind, p.description, dict(p.parameters)) == (
        "batch_endpoint",
        "scores",
        {"mode": "append"},
    )


@pytest.mark.parametrize(
    ("table", "line"),
    [
        ('kind = "batch_endpoint"\n', "pipelines.b.endpoint: required"),
        ('kind = "batch_endpoint"\nendpoint = "ep"\n',
         "pipelines.b.endpoint: invalid URL 'ep': expected https or http://…"),
        ('kind = "batch_endpoint"\nendpoint = "https://h/x"\nscope = "s"\n',
         "pipelines.b.scope: 'scope' is a key of azureml pipelines, not of batch_endpoint pipelines"),  # noqa: E501
        ('kind = "batch_endpoint"\nendpoint = "https://h/x"\ndeploymnt = "s"\n',
         "pipelines.b.deploymnt: unknown key 'deploymnt', did you mean 'deployment'?"),
        ('kind = "batch_endpoint"\nendpoint = "https://h/x"\nrequest_timeout = "0s"\n',
         "pipelines.b.request_timeout: duration '0s' must be more than 0"),
        ('kind = "batch_endpoint"\nendpoint = "https://h/x"\nsteps = [["x"]]\n',
         "pipelines.b.steps: 'steps' is a key of command pipelines, not of batch_endpoint pipelines"),  # noqa: E501
    ],
)  # fmt: skip
def test_batch_endpoint_problems(tmp_path: Path, table: str, line: str) -> None:
    assert problems(tmp_path, "[pipelines.b]\n" + table) == [line]


def test_batch_endpoint_cannot_take_a_local_datastore(tmp_path: Path) -> None:
    text = BASE + SCHEDULE.replace('"train"', '"batch"') + 'datastore = "inbox"\n'
    assert problems(tmp_path, text) == [
        "schedules[0].pipeline: pipeline 'batch' is a batch_endpoint, which reads its input "
        "from Azure storage: local datastore 'inbox' cannot feed it (use an azure_blob datastore)"
    ]
    ok = BASE + SCHEDULE.replace('"train"', '"batch"') + 'datastore = "blob"\n'
    ok += SCHEDULE.replace('"train"', '"batch"').replace('"S"', '"T"') + 'cron = "0 4 * * *"\n'
    cfg = load_text(tmp_path, ok)
    assert [s.name for s in cfg.schedules] == ["S", "T"]
    body = {"name": "A", "pipeline": "batch", "experiment_name": "E", "datastore": "inbox"}
    with pytest.raises(ConfigErrors) as exc:
        parse_schedule(body, config=cfg, key_prefix="body", source=Source.API)
    assert [e.key_path for e in exc.value.errors] == ["body.pipeline"]


# ── [daemon]: database, replica_id, lease_ttl ─────────────────────────────────

DB_URL = "postgresql://watcherd:Pa55word-xyz@db.internal:5432/watcherd?sslmode=verify-full"


def daemon(extra: str) -> str:
    return BASE.replace('state_dir = "st"\n', 'state_dir = "st"\n' + extra)


def test_database_settings(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, daemon(f'database = "{DB_URL}"\ntoken = "tok-shared-1"\n'
                                     'replica_id = "${POD_NAME:-}"\nlease_ttl = "3s"\n'),
                    env={"POD_NAME": "watcherd-0"})  # fmt: skip
    d = cfg.daemon
    assert (d.database, d.replica_id, d.lease_ttl) == (DB_URL, "watcherd-0", timedelta(seconds=3))
    assert {DB_URL, "Pa55word-xyz", "sslmode=verify-full"} <= cfg.secrets
    defaults = load_text(tmp_path, BASE).daemon
    assert (defaults.database, defaults.replica_id, defaults.lease_ttl) == (
        "", "", timedelta(seconds=15))  # fmt: skip
    conninfo = "host=db.internal dbname=watcherd user=w password='se cr\\'et'"
    cfg = load_text(tmp_path, daemon(f'database = "{conninfo.replace(chr(92), chr(92) * 2)}"\n'
                                     'token = "t"\nlease_ttl = "5m"\n'))  # fmt: skip
    assert cfg.daemon.database == conninfo and cfg.daemon.lease_ttl == timedelta(minutes=5)
    assert "'se cr\\'et'" in cfg.secrets and conninfo in cfg.secrets


@pytest.mark.parametrize(
    ("extra", "line"),
    [
        (f'database = "{DB_URL}"\n', "daemon.token: required with database: every replica must "
         "use the same API token"),
        (f'database = "{DB_URL}"\ntoken = ""\n', "daemon.token: required with database: every "
         "replica must use the same API token"),
        ('database = "mysql://root:Pa55word-xyz@h/db"\ntoken = "t"\n',
         "daemon.database: expected a libpq URL (postgresql://user@host:5432/db) or a conninfo "
         "string (host=… dbname=…); its value is not shown"),
        ('database = "postgresql://u:Pa55word-xyz@h:99999/db"\ntoken = "t"\n',
         "daemon.database: not a valid PostgreSQL URL (its value is not shown)"),
        ("database = 5\n", "daemon.database: expected a string, got an integer"),
        ('lease_ttl = "2s"\n', "daemon.lease_ttl: lease_ttl '2s' must be between 3s and 5m"),
        ('lease_ttl = "301s"\n', "daemon.lease_ttl: lease_ttl '301s' must be between 3s and 5m"),
        ('lease_ttl = 15\n', 'daemon.lease_ttl: expected a duration string like "30s", got int 15'),
        ('lease_tll = "15s"\n', "daemon.lease_tll: unknown key 'lease_tll', did you mean 'lease_ttl'?"),  # noqa: E501
        ('replica_id = "a b"\n', "daemon.replica_id: invalid replica_id 'a b': up to 256 characters "  # noqa: E501
         "from A-Z a-z 0-9 . _ : - (starting with a letter or digit)"),
        ('databse = "x"\n', "daemon.databse: unknown key 'databse', did you mean 'database'?"),
    ],
)  # fmt: skip
def test_daemon_problems(tmp_path: Path, extra: str, line: str) -> None:
    lines = problems(tmp_path, daemon(extra))
    assert lines == [line]
    assert not any("Pa55word-xyz" in x for x in lines)


def test_database_never_echoed_by_a_sibling_error(tmp_path: Path) -> None:
    """Errors are redacted with every secret of the file, the database URL's password too."""
    text = daemon(f'database = "{DB_URL}"\ntoken = "tok-1"\n') + (
        SCHEDULE + 'cron = "Pa55word-xyz"\n'
    )
    lines = problems(tmp_path, text)
    assert lines and all("Pa55word-xyz" not in x for x in lines)
    assert "schedules[0].cron: Invalid cron expression '***'" in lines[0]
