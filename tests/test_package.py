"""The public surface and the layering rule (STYLE.md §2): the core imports no I/O stack."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import watcherd

CORE = [
    "watcherd.core.models",
    "watcherd.core.errors",
    "watcherd.core.recurrence",
    "watcherd.core.cron",
    "watcherd.config",
    "watcherd.core.slots",
    "watcherd.core.timezones",
    "watcherd.core.durations",
    "watcherd.core.placeholders",
    "watcherd.core.redact",
]
HEAVY = ["asyncio", "aiohttp", "azure", "sqlite3", "watchdog"]


def _python(code: str) -> str:
    """The standard output of `code` run by a fresh interpreter (a clean sys.modules)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout


def test_exported_members() -> None:
    assert sorted(watcherd.__all__) == [
        "ConfigError",
        "ConfigErrors",
        "Conflict",
        "NotFound",
        "PermanentError",
        "RunStatus",
        "Source",
        "Status",
        "TransientError",
        "ValidationError",
        "WatcherdError",
        "__version__",
    ]


def test_core_modules_import_no_io_stack() -> None:
    code = (
        "import sys\n"
        f"for m in {CORE!r}: __import__(m)\n"
        f"bad = [h for h in {HEAVY!r} if h in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = _python(code).strip()
    assert out == "", f"core modules pulled in: {out}"


def test_daemon_start_does_not_import_azure_without_blob_datastores() -> None:
    code = (
        "import sys\n"
        "import watcherd.daemon, watcherd.engine.engine\n"
        "print('azure' in sys.modules or any(m.startswith('azure.') for m in sys.modules))\n"
    )
    out = _python(code).strip()
    assert out == "False"


def test_sdk_v2_surface() -> None:
    import watcherd.sdk.v2 as v2
    import watcherd.sdk.v2.constants as constants
    import watcherd.sdk.v2.entities as entities

    assert sorted(v2.__all__) == [
        "CronTrigger",
        "DatastoreTrigger",
        "JobSchedule",
        "LROPoller",
        "MLClient",
        "RecurrencePattern",
        "RecurrenceTrigger",
        "ScheduleListViewType",
        "ScheduleOperations",
        "ScheduleTriggerResult",
        "TimeZone",
    ]
    # azure.ai.ml.entities / azure.ai.ml.constants imports map one to one.
    for name in ("JobSchedule", "RecurrenceTrigger", "RecurrencePattern", "CronTrigger"):
        assert getattr(entities, name) is getattr(v2, name)
    assert constants.TimeZone is v2.TimeZone


def test_client_side_imports_no_daemon_side() -> None:
    """client.py and the SDKs never import the daemon side (STYLE.md §2)."""
    code = (
        "import sys\n"
        "import watcherd.client, watcherd.sdk, watcherd.sdk.v2\n"
        "bad = [m for m in sys.modules if m.startswith(('watcherd.engine', 'watcherd.state',"
        " 'watcherd.services', 'watcherd.api', 'watcherd.daemon', 'watcherd.pollers',"
        " 'watcherd.dispatch', 'watcherd.config'))]\n"
        "print(','.join(sorted(bad)))\n"
    )
    out = _python(code).strip()
    assert out == ""


def test_command_line_imports_structlog_without_its_optional_probes() -> None:
    """`rich`, `better_exceptions` and `greenlet` (~0.1 s of each start where installed) are not
    imported by the command line, and stay importable afterwards."""
    code = (
        "import importlib.util, sys\n"
        "import watcherd.cli\n"
        "probes = ('rich', 'better_exceptions', 'greenlet')\n"
        "print('structlog' in sys.modules, [m for m in probes if m in sys.modules])\n"
        "for m in probes:\n"
        "    if importlib.util.find_spec(m) is not None:\n"
        "        __import__(m)\n"
        "        print(m, 'importable')\n"
    )
    out = _python(code).splitlines()
    assert out[0] == "True []"
    probes = ("rich", "better_exceptions", "greenlet")
    installed = [m for m in probes if importlib.util.find_spec(m) is not None]
    assert out[1:] == [f"{m} importable" for m in installed]
