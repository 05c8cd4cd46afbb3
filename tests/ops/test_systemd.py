"""systemd/watcherd.service: it verifies, scores ≤ 2.0, and keeps what commands need (SPEC §9).

`systemd-analyze` comes with Debian's `systemd` package; CI installs it
(`apt-get install -y systemd`). Without it these tests skip locally and fail under CI.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ops.helpers import require_tool
from watcherd.core.durations import parse_duration

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "watcherd.service"
DROP_IN = ROOT / "systemd" / "watcherd.conf.example"
HINT = "apt-get install -y systemd"
MAX_EXPOSURE = 2.0


def _settings(path: Path) -> dict[str, list[str]]:
    """KEY → every value assigned in the [Service] section (systemd keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _one(settings: dict[str, list[str]], key: str) -> str:
    values = settings.get(key)
    assert values, f"{key}= is not set in {UNIT.name}"
    return values[-1]


@pytest.fixture
def unit_dir(tmp_path: Path) -> Path:
    """The unit and its example drop-in in a unit directory, ExecStart pointing at an
    executable that exists here (verify checks it), everything else untouched."""
    watcherd = shutil.which("watcherd") or str(Path(sys.executable).parent / "watcherd")
    assert Path(watcherd).exists(), "the watcherd console script is not installed"
    text = UNIT.read_text().replace("/usr/local/bin/watcherd", watcherd)
    (tmp_path / "watcherd.service").write_text(text)
    drop = tmp_path / "watcherd.service.d"
    drop.mkdir()
    (drop / "local.conf").write_text(DROP_IN.read_text())
    return tmp_path


def _analyze(tool: str, unit_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # SYSTEMD_UNIT_PATH with a trailing ":" = our directory first, then the built-in paths;
    # systemd-analyze then loads the drop-in from watcherd.service.d/ too.
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SYSTEMD_UNIT_PATH": f"{unit_dir}:"}
    return subprocess.run(
        [tool, *args], cwd=unit_dir, env=env, capture_output=True, text=True, timeout=60
    )


def test_unit_verifies_with_its_drop_in(unit_dir: Path) -> None:
    tool = require_tool("systemd-analyze", HINT)
    res = _analyze(tool, unit_dir, "verify", "watcherd.service")
    assert res.returncode == 0, res.stderr
    complaints = [ln for ln in res.stderr.splitlines() if "watcherd" in ln or "local.conf" in ln]
    assert not complaints, "\n".join(complaints)


def test_verify_would_catch_a_broken_drop_in(unit_dir: Path) -> None:
    """The verify test above really reads the drop-in (a typo there is reported)."""
    tool = require_tool("systemd-analyze", HINT)
    conf = unit_dir / "watcherd.service.d" / "local.conf"
    conf.write_text(conf.read_text() + "\nReadWritePath=/srv/typo\n")
    res = _analyze(tool, unit_dir, "verify", "watcherd.service")
    assert "ReadWritePath" in res.stderr


def _exposure(output: str) -> float:
    m = re.search(r"Overall exposure level for watcherd\.service:\s*([0-9.]+)", output)
    assert m, f"no overall exposure in:\n{output[-2000:]}"
    return float(m.group(1))


def test_security_exposure_at_most_2(unit_dir: Path) -> None:
    tool = require_tool("systemd-analyze", HINT)
    res = _analyze(tool, unit_dir, "security", "--offline=true", "--no-pager", "watcherd.service")
    assert res.returncode == 0, res.stderr
    score = _exposure(res.stdout + res.stderr)
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE, res.stdout


def test_security_exposure_of_the_shipped_file(tmp_path: Path) -> None:
    """Scored as shipped too (by path, no drop-in, the real /usr/local/bin ExecStart)."""
    tool = require_tool("systemd-analyze", HINT)
    res = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert _exposure(res.stdout + res.stderr) <= MAX_EXPOSURE, res.stdout


def test_unit_contract() -> None:
    """What SPEC §9 asks of the unit, and what commands must keep despite the sandbox."""
    s = _settings(UNIT)
    assert _one(s, "Type") == "notify"
    assert _one(s, "NotifyAccess") == "main"
    exec_start = _one(s, "ExecStart").split()
    assert exec_start[0].endswith("/watcherd") and exec_start[1] == "run"
    assert "--config" in exec_start
    assert _one(s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert parse_duration(_one(s, "WatchdogSec")).total_seconds() >= 10
    assert _one(s, "StateDirectory") == "watcherd"
    assert _one(s, "RuntimeDirectory") == "watcherd"
    assert _one(s, "DynamicUser") == "yes"
    # commands keep the network, GPUs, /home and /opt to read, JITs
    assert _one(s, "PrivateDevices") == "no"
    assert _one(s, "ProtectHome") == "read-only"
    assert _one(s, "MemoryDenyWriteExecute") == "no"
    assert s.get("PrivateNetwork", ["no"])[-1] == "no"
    assert "IPAddressDeny" not in s
    families = _one(s, "RestrictAddressFamilies").split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)
    assert _one(s, "ProtectSystem") == "strict"  # /opt readable, not writable
    assert "InaccessiblePaths" not in s
    assert "ProcSubset" not in s or _one(s, "ProcSubset") == "all"  # /proc/driver/nvidia
    # SIGTERM reaches watcherd only, and systemd waits out its drain
    assert _one(s, "KillMode") == "mixed"
    stop = parse_duration(_one(s, "TimeoutStopSec")).total_seconds()
    assert stop > 25 + 10, "TimeoutStopSec must exceed shutdown_timeout (25s) + 10s"


def test_drop_in_gives_writable_paths() -> None:
    s = _settings(DROP_IN)
    paths = _one(s, "ReadWritePaths").split()
    assert paths and all(p.lstrip("-").startswith("/") for p in paths)
