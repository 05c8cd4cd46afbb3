"""The sidecar image, built and run for real with Debian's podman (SPEC §9, issue #17).

The image is built from the Dockerfile on a local Debian base (debootstrap, cached by tag)
and offline from a wheelhouse made here; then config/sidecar.toml, plus three command
schedules, runs in it as it would in the pod of config/k8s-pod.yaml: read-only root, state
on a volume, the API on a published port, watcherd as PID 1. Skipped where podman cannot run
(a failure under CI=true). See tests/ops/image_build.py for how podman is invoked here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with kubernetes-validate

from tests.ops.image_build import (
    BASE_TAG,
    IMAGE_TAG,
    ULIMITS,
    Podman,
    build_image,
    build_wheelhouse,
    ensure_base,
    require_podman,
)

ROOT = Path(__file__).resolve().parents[2]
SIDECAR = ROOT / "config" / "sidecar.toml"
POD = ROOT / "config" / "k8s-pod.yaml"
API_PORT = 8765  # config/sidecar.toml: api = "0.0.0.0:8765"
TOKEN = "image-test-token"
SPAWN_RUNS = 100
SHUTDOWN_TIMEOUT = 20  # config/sidecar.toml: shutdown_timeout = "20s"
STOP_TIMEOUT = 40  # podman stop -t: above shutdown_timeout + 10s, as the pod's grace period

# The first debootstrap takes minutes; later sessions reuse the base image by its tag.
pytestmark = pytest.mark.timeout(1200)

# Three command schedules on top of the sidecar's own (which stay idle: no file in the inbox,
# a nightly cron). `Hello` fires once when it is created (a recurrence without start_time,
# SPEC §3.1); `Spawn` and `Slow` have no creation fire and are triggered through the API.
# Spawn's command leaves a background child behind: when `sh` exits, `sleep` is an orphan of
# PID 1. Slow's run is in flight when the container is stopped.
EXTRA_CONFIG = """
[pipelines.hello]
kind = "command"
description = "Says who it runs as"
steps = [["sh", "-c", "echo uid=$(id -u) gid=$(id -g)"]]

[pipelines.spawn]
kind = "command"
description = "Leaves a short-lived background child behind, for PID 1 to reap"
steps = [["sh", "-c", "sleep 0.1 &"]]

[pipelines.slow]
kind = "command"
description = "Still running when the container is stopped"
steps = [["sleep", "3"]]

[[schedules]]
name = "Hello"
pipeline = "hello"
experiment_name = "ImageTest"
recurrence = { frequency = "Hour", interval = 1 }

[[schedules]]
name = "Spawn"
pipeline = "spawn"
experiment_name = "ImageTest"
cron = "0 0 1 1 *"

[[schedules]]
name = "Slow"
pipeline = "slow"
experiment_name = "ImageTest"
cron = "0 0 1 1 *"
"""

# Lists every process of the container's PID namespace as [pid, ppid, state, uid, comm].
PROCS = r"""
import json, os
out = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        status = open(f"/proc/{pid}/status").read()
    except OSError:
        continue
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
    uid = next(l.split()[1] for l in status.splitlines() if l.startswith("Uid:"))
    out.append([int(pid), int(ppid), state, int(uid), comm])
print(json.dumps(out))
"""

T = TypeVar("T")


def _wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, why: Callable[[], str] = str
) -> T:
    """Poll an outside process (a container) until `probe` answers, or fail naming `what`
    (and what `why` says about the container)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = probe()
        except (httpx.HTTPError, OSError) as exc:
            last, got = exc, None
        if got is not None:
            return got
        time.sleep(0.2)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last}){why()}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ── the image ────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True)
class Built:
    podman: Podman
    tag: str


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("image")
    podman = require_podman(work / "podman")
    base = ensure_base(podman, work / "base")
    context = build_wheelhouse(work / "context")
    return Built(podman, build_image(podman, context, base))


def test_image_builds_from_the_wheelhouse_on_the_local_base(built: Built) -> None:
    podman = built.podman
    cfg = json.loads(podman("image", "inspect", built.tag).stdout)[0]["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"] == ["watcherd", "run"]
    assert "STATE_DIRECTORY=/var/lib/watcherd" in cfg["Env"]
    health = json.loads(podman("image", "inspect", built.tag).stdout)[0].get("Healthcheck") or {}
    assert health.get("Test", [None])[0] == "CMD"  # kept by --format docker
    # the Debian base (Python 3.11 from bookworm, no pip on the system), watcherd in the venv
    probe = (
        "import json, os, sys, importlib.util, watcherd; print(json.dumps([sys.version_info[:2],"
        " sys.prefix, watcherd.__file__, open('/etc/debian_version').read().strip(),"
        " importlib.util.find_spec('pip') is not None, os.getuid()]))"
    )
    res = podman(
        "run", "--rm", "--read-only", "--network", "none", *ULIMITS,
        "--entrypoint", "python3", built.tag, "-c", probe,
    )  # fmt: skip
    version, prefix, module, debian, has_pip, uid = json.loads(res.stdout.splitlines()[-1])
    assert version == [3, 11] and debian.startswith("12.")
    assert prefix == "/opt/watcherd" and module.startswith("/opt/watcherd/lib/")
    assert uid == 10001
    base_layers = json.loads(podman("image", "inspect", BASE_TAG).stdout)[0]["RootFS"]["Layers"]
    image_layers = json.loads(podman("image", "inspect", built.tag).stdout)[0]["RootFS"]["Layers"]
    assert image_layers[: len(base_layers)] == base_layers, "not built on the debootstrap base"


def test_pod_manifest_names_the_image_that_was_run() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all(POD.read_text()) if d}
    (c,) = [c for c in docs["Pod"]["spec"]["initContainers"] if c["name"] == "watcherd"]
    assert c["image"] == IMAGE_TAG  # podman resolves the short name to localhost/
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert (get["path"], ports.get(get["port"], get["port"])) == (path, API_PORT)
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert docs["Pod"]["spec"]["securityContext"]["runAsUser"] == 10001


# ── the sidecar in it ────────────────────────────────────────────────────────────────────


@dataclass
class Sidecar:
    """One running container of the image, its API published on 127.0.0.1:port."""

    podman: Podman
    name: str
    port: int
    log_path: Path

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=10,
        )

    def describe(self) -> str:
        """The container's state and its last log lines, for a failure message."""
        res = self.podman("inspect", "--format", "{{json .State}}", self.name, check=False)
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        return f"\ncontainer state: {res.stdout.strip() or res.stderr.strip()}\nlog:\n{tail}"

    def ready(self, api: httpx.Client, path: str = "/readyz", timeout: float = 60) -> None:
        _wait_for(f"{path} 200", lambda: _status_200(api, path), timeout, self.describe)

    def exec_python(self, code: str) -> Any:
        res = self.podman("exec", self.name, "python3", "-c", code)
        return json.loads(res.stdout)

    def processes(self) -> list[list[Any]]:
        return list(self.exec_python(PROCS))

    def log_lines(self) -> list[tuple[str, str]]:
        """(stream, line) from the k8s-file log; partial (P) records are joined."""
        out: list[tuple[str, str]] = []
        pending = ""
        for raw in self.log_path.read_text(errors="replace").splitlines():
            m = re.match(r"\S+ (stdout|stderr) ([PF]) ?(.*)$", raw)
            assert m, f"unexpected k8s-file record: {raw!r}"
            pending += m.group(3)
            if m.group(2) == "F":
                out.append((m.group(1), pending))
                pending = ""
        return out

    def events(self) -> list[str]:
        return [str(doc.get("event")) for doc in _json_docs(self)]


def _json_docs(sidecar: Sidecar) -> list[dict[str, Any]]:
    """The JSON objects logged on stdout (other lines are skipped here)."""
    docs = []
    for stream, line in sidecar.log_lines():
        if stream == "stdout":
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                docs.append(doc)
    return docs


def _runs(client: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    res = client.get("/api/v1/runs", params={"schedule_id": schedule_id, "limit": 1000})
    res.raise_for_status()
    return list(res.json()["items"])


def _schedule_id(client: httpx.Client, name: str) -> str:
    res = client.get("/api/v1/schedules")
    res.raise_for_status()
    (sched,) = [s for s in res.json()["items"] if s["name"] == name]
    return str(sched["id"])


@pytest.fixture(scope="module")
def sidecar(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sidecar]:
    podman = built.podman
    work = tmp_path_factory.mktemp("sidecar")
    config = work / "watcherd.toml"
    config.write_text(SIDECAR.read_text() + EXTRA_CONFIG)
    config.chmod(0o644)
    inbox = work / "inbox"  # the app's emptyDir, read-only for watcherd as in the pod
    inbox.mkdir(mode=0o755)
    name = f"watcherd-image-test-{uuid.uuid4().hex[:8]}"
    volume = f"{name}-state"
    podman("volume", "create", volume)
    side = Sidecar(podman, name, _free_port(), work / "container.log")
    podman(
        "run", "--detach", "--name", name, "--read-only", *ULIMITS,
        "--log-driver", "k8s-file", "--log-opt", f"path={side.log_path}",
        "--publish", f"127.0.0.1:{side.port}:{API_PORT}",
        "--volume", f"{volume}:/var/lib/watcherd",
        "--volume", f"{config}:/etc/watcherd/watcherd.toml:ro",
        "--volume", f"{inbox}:/inbox:ro",
        "--env", f"WATCHERD_TOKEN={TOKEN}", "--env", "HOOK_TOKEN=image-test-hook",
        "--env", "INBOX_DIR=/inbox", "--env", "WATCHERD_STATE_DIR=/var/lib/watcherd",
        built.tag, "--config", "/etc/watcherd/watcherd.toml",
    )  # fmt: skip
    try:
        yield side
    finally:
        if not os.environ.get("WATCHERD_KEEP_CONTAINER"):  # kept to look into a failure
            podman("rm", "--force", "--time", "0", name, check=False)
            podman("volume", "rm", "--force", volume, check=False)


def _status_200(client: httpx.Client, path: str) -> bool | None:
    return client.get(path).status_code == 200 or None


def test_probes_answer(sidecar: Sidecar) -> None:
    with sidecar.client() as api:
        sidecar.ready(api, "/healthz")
        sidecar.ready(api, "/readyz")
    # the Dockerfile's HEALTHCHECK works in the image too
    res = sidecar.podman("healthcheck", "run", sidecar.name, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_schedule_runs_a_command(sidecar: Sidecar) -> None:
    with sidecar.client() as api:
        sidecar.ready(api)
        hello = _schedule_id(api, "Hello")

        def finished() -> dict[str, Any] | None:
            runs = _runs(api, hello)
            done = [r for r in runs if r["status"] not in ("Queued", "Running")]
            return done[0] if done else None

        run = _wait_for("the creation run of Hello", finished, 60, sidecar.describe)
        assert run["status"] == "Completed", run
        assert run["trigger"]["kind"] == "time"
        log = api.get(f"/api/v1/runs/{run['id']}/log")
        assert log.status_code == 200 and "uid=10001 gid=10001" in log.text, log.text


def test_runs_as_uid_10001_not_root(sidecar: Sidecar) -> None:
    status = sidecar.exec_python(
        "import json; print(json.dumps({k: v.split() for k, v in"
        " (l.split(':', 1) for l in open('/proc/1/status')) if k in ('Uid', 'Gid', 'CapEff')}))"
    )
    assert status["Uid"] == ["10001"] * 4 and status["Gid"] == ["10001"] * 4
    assert int(status["CapEff"][0], 16) == 0  # no effective capability left
    procs = sidecar.processes()
    assert [p[4] for p in procs if p[0] == 1] == ["watcherd"], procs  # PID 1 is watcherd
    assert all(p[3] == 10001 for p in procs), procs
    top = sidecar.podman("top", sidecar.name, "pid", "user", "huser", "args").stdout
    assert "root" not in top, top


def test_no_zombies_after_100_runs_that_leave_children(sidecar: Sidecar) -> None:
    with sidecar.client() as api:
        sidecar.ready(api)
        spawn = _schedule_id(api, "Spawn")
        ids = set()
        for _ in range(SPAWN_RUNS):
            res = api.post(f"/api/v1/schedules/{spawn}/trigger")
            assert res.status_code == 202, res.text
            ids.add(res.json()["id"])
        assert len(ids) == SPAWN_RUNS

        def all_done() -> list[dict[str, Any]] | None:
            runs = [r for r in _runs(api, spawn) if r["id"] in ids]
            done = [r for r in runs if r["status"] not in ("Queued", "Running")]
            return done if len(done) == SPAWN_RUNS else None

        runs = _wait_for(f"{SPAWN_RUNS} Spawn runs to finish", all_done, 120, sidecar.describe)
        assert {r["status"] for r in runs} == {"Completed"}, [r for r in runs if r["error"]][:3]

    def settled() -> list[list[Any]] | None:
        # every `sleep 0.1` has ended by now; a zombie left means PID 1 did not reap it
        procs = sidecar.processes()
        alive = [p for p in procs if p[4] == "sleep" and p[2] != "Z"]
        zombies = [p for p in procs if p[2] == "Z"]
        return procs if not alive and not zombies else None

    try:
        _wait_for("the orphans to be reaped", settled, 10)
        return
    except AssertionError:
        pass
    zombies = [p for p in sidecar.processes() if p[2] == "Z"]
    pytest.fail(
        f"{len(zombies)} zombies in the container after {SPAWN_RUNS} runs, e.g. "
        f"{zombies[:5]} ([pid, ppid, state, uid, comm]): PID 1 (watcherd) does not reap "
        "the orphaned children of its commands",
        pytrace=False,
    )


def test_sighup_reloads(sidecar: Sidecar) -> None:
    with sidecar.client() as api:  # alone (-k), the container may still be starting: a
        sidecar.ready(api)  # SIGHUP before the handler is installed is lost on PID 1
    before = sidecar.events().count("reload_done")
    sidecar.podman("kill", "--signal", "HUP", sidecar.name)
    _wait_for(
        "reload_done",
        lambda: sidecar.events().count("reload_done") > before or None,
        30,
        sidecar.describe,
    )
    with sidecar.client() as api:
        assert api.get("/healthz").status_code == 200


def test_stop_drains_and_exits_0_with_json_logs(sidecar: Sidecar) -> None:
    """Last in this module: it stops the container while a run is in flight."""
    with sidecar.client() as api:
        sidecar.ready(api)
        res = api.post(f"/api/v1/schedules/{_schedule_id(api, 'Slow')}/trigger")
        assert res.status_code == 202, res.text
        slow = res.json()["id"]

        def running() -> bool | None:
            return api.get(f"/api/v1/runs/{slow}").json()["status"] == "Running" or None

        _wait_for("the Slow run to start", running, 30, sidecar.describe)
    started = time.monotonic()
    sidecar.podman("stop", "--time", str(STOP_TIMEOUT), sidecar.name, timeout=STOP_TIMEOUT + 30)
    took = time.monotonic() - started
    state = json.loads(sidecar.podman("inspect", sidecar.name).stdout)[0]["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0), state
    assert took < SHUTDOWN_TIMEOUT, f"podman stop took {took:.0f}s: SIGTERM was not honoured"
    # the run in flight was let finish (drained), not stopped and re-queued
    finished = [
        doc
        for doc in _json_docs(sidecar)
        if doc.get("event") == "run_finished" and doc.get("run_id") == slow
    ]
    assert [d.get("status") for d in finished] == ["Completed"], finished
    lines = sidecar.log_lines()
    stdout = [line for stream, line in lines if stream == "stdout"]
    assert stdout, lines
    bad = []
    for line in stdout:
        try:
            doc = json.loads(line)
        except ValueError:
            bad.append(line)
            continue
        if not (isinstance(doc, dict) and isinstance(doc.get("event"), str)):
            bad.append(line)
    assert bad == [], f"{len(bad)} of {len(stdout)} stdout lines are not JSON with `event`"
    events = sidecar.events()
    assert "daemon_stopped" in events, events[-5:]
    assert TOKEN not in "\n".join(stdout)  # the API token is never logged
