"""The real Azure ML packages, in a virtualenv of the tests, driven by subprocess.

`azureml-pipeline-core` (SDK v1) and `azure-ai-ml` (SDK v2) pin many dependencies, so they
never enter watcherd's environment: `ensure_azure_env()` builds a separate virtualenv once
(default `<repo>/.venv-azure`, or `$WATCHERD_AZURE_VENV`), and the scripts in `drivers/` run
inside it, one subprocess per batch of inputs (JSON on stdin, JSON on stdout), so the ~4 s of
imports are paid once per batch. watcherd never imports them.

The virtualenv is reused while its stamp file (`watcherd-stamp.json`: requirements, Python
version, installed versions, install time and size) matches `AZURE_REQUIREMENTS` and the running
Python; otherwise it is rebuilt. Building takes about two minutes and 365 MB on a cold pip
cache. A file lock beside it keeps parallel test processes from building it twice.

The `azure_env` session fixture skips, with the reason, when the virtualenv cannot be built
(no registry, no venv module), except under `CI=true`, where that is a failure.
`WATCHERD_AZURE_COMPAT=0` skips it on purpose. Tests that use it may pay the build in their
setup, so they carry `AZURE_TIMEOUT` (pytest-timeout counts fixture setup).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "AZURE_REQUIREMENTS",
    "AZURE_TIMEOUT",
    "AzureEnv",
    "AzureEnvUnavailable",
    "DriverOutput",
    "azure_env",
    "default_venv_dir",
    "ensure_azure_env",
]

# The newest 1.x of the v1 SDK (1.62.0 when written; it pulls azureml-core 1.61.0.post4), and the
# newest azure-ai-ml (1.35.2 when written). The stamp records what was installed.
AZURE_REQUIREMENTS: tuple[str, ...] = ("azureml-pipeline-core==1.62.*", "azure-ai-ml")
PROBED_PACKAGES = ("azureml-pipeline-core", "azureml-core", "azure-ai-ml", "marshmallow")
AZURE_TIMEOUT = pytest.mark.timeout(1800)
INSTALL_TIMEOUT_S = 1500.0
STAMP = "watcherd-stamp.json"
REPO = Path(__file__).resolve().parents[2]
DRIVERS = Path(__file__).resolve().parent / "drivers"
STAMP_VERSION = 1


class AzureEnvUnavailable(RuntimeError):
    """The Azure virtualenv could not be built or is broken (the reason is the message)."""


@dataclass(frozen=True)
class DriverOutput:
    """What a driver printed, plus the wall time of the whole subprocess."""

    results: list[dict[str, Any]]
    import_seconds: float
    run_seconds: float
    wall_seconds: float
    versions: dict[str, str]


@dataclass(frozen=True)
class AzureEnv:
    """A ready Azure virtualenv."""

    path: Path
    stamp: dict[str, Any] = field(default_factory=dict)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.stamp.get("versions", {}))

    def run_driver(
        self, name: str, inputs: Sequence[Any], *, jobs: int = 1, timeout: float = 600.0
    ) -> DriverOutput:
        """Run `drivers/<name>.py` on one batch; its results are in input order.

        `jobs` > 1 splits a large batch into that many subprocesses run at once (each pays the
        imports; worth it for azure-ai-ml, ~3 ms an input, on a machine with spare cores).

        Raises:
            RuntimeError: a driver exited non-zero or printed something that is not its JSON.
        """
        started = time.perf_counter()
        chunks = _chunks(list(inputs), jobs if len(inputs) >= 200 * jobs else 1)
        if len(chunks) == 1:
            outs = [self._run_one(name, chunks[0], timeout)]
        else:
            with ThreadPoolExecutor(len(chunks)) as pool:
                outs = list(pool.map(lambda c: self._run_one(name, c, timeout), chunks))
        return DriverOutput(
            results=[r for out in outs for r in out["results"]],
            import_seconds=max(out["import_seconds"] for out in outs),
            run_seconds=max(out["run_seconds"] for out in outs),
            wall_seconds=round(time.perf_counter() - started, 3),
            versions=outs[0]["versions"],
        )

    def _run_one(self, name: str, inputs: list[Any], timeout: float) -> dict[str, Any]:
        script = DRIVERS / f"{name}.py"
        proc = subprocess.run(
            # -I: no PYTHON* variables, no user site, no script directory on sys.path.
            [str(self.python), "-I", str(script)],
            input=json.dumps(inputs),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=_clean_env(),
            cwd=self.path,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"driver {name} exited {proc.returncode}:\n{proc.stderr[-4000:]}")
        try:
            out: dict[str, Any] = json.loads(proc.stdout)
        except ValueError as exc:
            raise RuntimeError(f"driver {name} printed no JSON: {proc.stdout[:500]!r}") from exc
        if len(out["results"]) != len(inputs):
            raise RuntimeError(f"driver {name}: {len(out['results'])} results for {len(inputs)}")
        return out


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    size = -(-len(items) // max(n, 1)) or 1
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def default_venv_dir() -> Path:
    return Path(os.environ.get("WATCHERD_AZURE_VENV") or REPO / ".venv-azure")


def _clean_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _read_stamp(path: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((path / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fresh = (
        isinstance(stamp, dict)
        and stamp.get("stamp_version") == STAMP_VERSION
        and stamp.get("requirements") == list(AZURE_REQUIREMENTS)
        and stamp.get("python") == _python_tag()
        and (path / "bin" / "python").exists()
    )
    return stamp if fresh else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                pass
    return total


def _run(cmd: list[str], log: Path, timeout: float) -> None:
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, env=_clean_env()
        )
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()
        lines = [line for line in tail if "is ignored: it is neither" not in line][-15:]
        raise AzureEnvUnavailable(
            f"`{' '.join(cmd[:4])} …` exited {proc.returncode}; last lines:\n" + "\n".join(lines)
        )


def _probe_versions(python: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m, azureml.pipeline.core, azure.ai.ml;"
        f"print(json.dumps({{n: m.version(n) for n in {PROBED_PACKAGES!r}}}))"
    )
    proc = subprocess.run(
        [str(python), "-I", "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=_clean_env(),
    )
    if proc.returncode != 0:
        raise AzureEnvUnavailable(f"the Azure packages do not import:\n{proc.stderr[-2000:]}")
    versions: dict[str, str] = json.loads(proc.stdout)
    return versions


def _looks_ours(path: Path) -> bool:
    """Only an empty folder, a virtualenv or a half-built one of ours is ever deleted."""
    return not any(path.iterdir()) or any(
        (path / name).exists() for name in ("pyvenv.cfg", STAMP, "install.log")
    )


def _build(path: Path, log_line: Callable[[str], None]) -> dict[str, Any]:
    if path.exists():
        if not path.is_dir() or not _looks_ours(path):
            raise AzureEnvUnavailable(f"{path} exists and is not a virtualenv; not touching it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    log = path / "install.log"
    started = time.perf_counter()
    log_line(f"building the Azure virtualenv at {path} (about 2 minutes, 365 MB)")
    try:
        _run([sys.executable, "-m", "venv", str(path)], log, 300)
        python = path / "bin" / "python"
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run([*pip, *AZURE_REQUIREMENTS], log, INSTALL_TIMEOUT_S)
        versions = _probe_versions(python)
    except subprocess.TimeoutExpired as exc:
        raise AzureEnvUnavailable(f"timed out after {exc.timeout:.0f}s: {exc.cmd}") from exc
    except OSError as exc:
        raise AzureEnvUnavailable(f"cannot build the Azure virtualenv: {exc}") from exc
    stamp = {
        "stamp_version": STAMP_VERSION,
        "requirements": list(AZURE_REQUIREMENTS),
        "python": _python_tag(),
        "versions": versions,
        "install_seconds": round(time.perf_counter() - started, 1),
        "size_bytes": _dir_size(path),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (path / STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    log_line(
        f"Azure virtualenv ready in {stamp['install_seconds']}s, "
        f"{stamp['size_bytes'] / 1e6:.0f} MB: {versions}"
    )
    return stamp


def ensure_azure_env(
    path: Path | None = None, *, log_line: Callable[[str], None] | None = None
) -> AzureEnv:
    """The Azure virtualenv at `path`, built first when missing or stale.

    Raises:
        AzureEnvUnavailable: it cannot be built (the message says why).
    """
    path = (path or default_venv_dir()).resolve()
    emit = log_line or (lambda line: print(line, file=sys.stderr))
    with _locked(path):
        stamp = _read_stamp(path)
        if stamp is None:
            stamp = _build(path, emit)
    return AzureEnv(path=path, stamp=stamp)


@pytest.fixture(scope="session")
def azure_env() -> AzureEnv:
    """The Azure virtualenv; skips when it cannot be built, fails instead under CI=true."""
    if os.environ.get("WATCHERD_AZURE_COMPAT") == "0":
        pytest.skip("WATCHERD_AZURE_COMPAT=0: differential tests against Azure's packages off")
    try:
        return ensure_azure_env()
    except AzureEnvUnavailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the Azure virtualenv cannot be built: {exc}")
        pytest.skip(f"the Azure virtualenv cannot be built: {exc}")
