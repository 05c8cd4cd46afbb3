"""The public surface and the layering rule (STYLE.md §2): the core imports no I/O stack."""

from __future__ import annotations

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
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"core modules pulled in: {out}"


def test_daemon_start_does_not_import_azure_without_blob_datastores() -> None:
    code = (
        "import sys\n"
        "import watcherd.daemon, watcherd.engine.engine\n"
        "print('azure' in sys.modules or any(m.startswith('azure.') for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
