"""config/k8s-replicas.yaml: three replicas on PostgreSQL (SPEC §12), validated with
kubernetes-validate like the sidecar pod, and its config accepted by `watcherd check-config`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with kubernetes-validate

from tests.ops.helpers import require_tool

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "config" / "k8s-replicas.yaml"


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


@pytest.mark.parametrize("version", ["1.29.0", None])
def test_replicas_manifest_validates(version: str | None) -> None:
    tool = require_tool("kubernetes-validate", "pip install kubernetes-validate")
    args = [tool, "--strict", "--quiet", *(["-k", version] if version else []), str(MANIFEST)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_three_replicas_with_the_database_from_a_secret(tmp_path: Path) -> None:
    docs = _docs()
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] == 3
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    for name in ("WATCHERD_DATABASE", "PGPASSWORD", "WATCHERD_TOKEN"):
        assert "secretKeyRef" in env[name]["valueFrom"]  # never a literal value
    text = docs["ConfigMap"]["data"]["watcherd.toml"]
    text = text.replace("/var/lib/watcherd", str(tmp_path / "state"))
    text = text.replace("/shared/inbox", str(tmp_path / "inbox"))
    config = tmp_path / "watcherd.toml"
    config.write_text(text)
    run_env = {
        **os.environ,
        "WATCHERD_DATABASE": "postgresql://watcherd:s3cret-pw@db:5432/w?sslmode=verify-full",
        "POD_NAME": "watcherd-7d9f-abcde",
        "WATCHERD_TOKEN": "t" * 32,
    }
    res = subprocess.run(
        [sys.executable, "-m", "watcherd", "check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=run_env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 schedules" in res.stdout
    assert "s3cret-pw" not in res.stdout + res.stderr
