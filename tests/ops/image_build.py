"""Builds the watcherd image with Debian's podman, the way issue #17 runs it on these machines.

- podman runs with the `runc` runtime and the `cgroupfs` cgroup manager (crun refuses the
  hybrid cgroups here), a containers.conf with `default_ulimits = []` and explicit ulimits
  on every `run` (podman's default ulimits cannot be set here).
- No registry is reachable: the base image `localhost/watcherd-base:bookworm` is made with
  debootstrap from the Debian mirror apt uses, once; later runs find it by its tag.
- The build has no usable package index: watcherd and the installed versions of its
  dependencies are turned into a wheelhouse on the host (`pip wheel`), and the Dockerfile
  installs from it offline (`--build-arg WHEELS=wheels`).

Missing podman (or debootstrap, when the base is not cached yet): skipped on a developer
machine, a failure under CI (CI=true), as for the other external tools (tests/ops/helpers.py).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.ops.helpers import require_tool

__all__ = [
    "BASE_TAG",
    "IMAGE_TAG",
    "Podman",
    "build_image",
    "build_wheelhouse",
    "debian_mirror",
    "ensure_base",
    "require_podman",
]

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
BASE_TAG = "localhost/watcherd-base:bookworm"
IMAGE_TAG = f"watcherd:{VERSION}"  # podman stores it as localhost/watcherd:<version>
SUITE = "bookworm"
APT_HINT = "apt-get install -y podman runc debootstrap"
APT_LEFTOVERS = ("var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/lib/apt/lists/*")
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
# What the build context holds besides the wheelhouse (the Dockerfile's .dockerignore
# filters it again).
CONTEXT = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "watcherd")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason}; CI is set, so the image test must run", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class Podman:
    """`podman --runtime runc --cgroup-manager=cgroupfs …` with its own containers.conf."""

    executable: str
    containers_conf: Path

    @property
    def argv(self) -> list[str]:
        return [self.executable, "--runtime", "runc", "--cgroup-manager=cgroupfs"]

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.containers_conf)}

    def __call__(
        self, *args: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args[:3])}… exited {res.returncode}:\n"
                f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )
        return res

    def image_exists(self, tag: str) -> bool:
        return self("image", "exists", tag, check=False).returncode == 0


def require_podman(workdir: Path) -> Podman:
    """A Podman that can run containers here, or skip (fail under CI) saying why not."""
    exe = require_tool("podman", APT_HINT)
    require_tool("runc", APT_HINT)
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "containers.conf"
    conf.write_text("[containers]\ndefault_ulimits = []\n")
    podman = Podman(exe, conf)
    info = podman("info", "--format", "{{.Host.OCIRuntime.Name}}", check=False, timeout=60)
    if info.returncode != 0:
        _unavailable(f"podman cannot run here: {info.stderr.strip()[-500:]}")
    return podman


# ── the base image ───────────────────────────────────────────────────────────────────────


def _apt_sources() -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source apt is configured with, one-line and deb822."""
    etc = Path("/etc/apt")
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*.list"))]
    for f in files:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                yield m.group(1), [m.group(2)]
    for f in sorted((etc / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" in fields.get("types", "").split() and fields.get("enabled") != "no":
                for uri in fields.get("uris", "").split():
                    yield uri, fields.get("suites", "").split()


def debian_mirror() -> str:
    """The Debian mirror apt uses for the main `bookworm` suite (not -security/-updates)."""
    for uri, suites in _apt_sources():
        if SUITE in suites and "security" not in uri:
            return uri
    raise AssertionError(f"apt has no source for {SUITE!r} (/etc/apt/sources.list*)")


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Two test sessions never debootstrap at once (the second one waits, then finds the tag)."""
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_base(podman: Podman, workdir: Path) -> str:
    """`localhost/watcherd-base:bookworm`: Debian minbase + python3 + python3-venv, made with
    debootstrap and `podman import` unless an image of that tag exists already."""
    with _lock(Path("/tmp/watcherd-base-image.lock")):
        if podman.image_exists(BASE_TAG):
            return BASE_TAG
        debootstrap = require_tool("debootstrap", APT_HINT)
        if os.geteuid() != 0:
            _unavailable(f"making {BASE_TAG} with debootstrap needs root")
        root = workdir / "rootfs"
        res = subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv"]
            + [SUITE, str(root), debian_mirror()],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        assert res.returncode == 0, f"debootstrap failed:\n{res.stdout[-3000:]}{res.stderr[-2000:]}"
        # apt's caches and lists are of no use in the image (its index is not reachable there)
        for pattern in APT_LEFTOVERS:
            for p in root.glob(pattern):
                if p.is_file():
                    p.unlink()
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [*podman.argv, "import", "-", BASE_TAG],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                env=podman.env,
                timeout=600,
            )
        assert tar.returncode == 0 and imported.returncode == 0, imported.stderr[-3000:]
        shutil.rmtree(root, ignore_errors=True)
        return BASE_TAG


# ── the wheelhouse and the image ─────────────────────────────────────────────────────────


def _installed_dependencies(name: str) -> dict[str, str]:
    """The installed version of every distribution `name` needs (markers and extras
    evaluated for this interpreter), `name` itself excluded."""
    seen: dict[str, tuple[str, frozenset[str]]] = {}
    todo: list[tuple[str, frozenset[str]]] = [(name, frozenset())]
    while todo:
        dist_name, extras = todo.pop()
        dist = metadata.distribution(dist_name)
        key = canonicalize_name(dist.metadata["Name"])
        known = seen.get(key)
        if known is not None and extras <= known[1]:
            continue
        extras |= known[1] if known else frozenset()
        seen[key] = (dist.version, extras)
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                continue
            todo.append((req.name, frozenset(req.extras)))
    seen.pop(canonicalize_name(name))
    return {k: v for k, (v, _) in sorted(seen.items())}


def _pip(*args: str, timeout: float = 600) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, f"pip {args[0]} failed:\n{res.stdout[-2000:]}{res.stderr[-3000:]}"


def build_wheelhouse(context: Path) -> Path:
    """A build context in `context`: the repository's files for the image plus `wheels/`,
    wheels of this checkout of watcherd and of the installed versions of its dependencies.
    (The package is built from a copy, so no build/ or egg-info appears in the checkout.)"""
    context.mkdir(parents=True, exist_ok=True)
    for name in CONTEXT:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, context / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, context / name)
    wheels = context / "wheels"
    _pip("wheel", "--no-deps", "-q", "-w", str(wheels), str(context))
    pins = [f"{n}=={v}" for n, v in _installed_dependencies("watcherd").items()]
    _pip("wheel", "--no-deps", "-q", "--only-binary=:all:", "-w", str(wheels), *pins)
    return context


def build_image(podman: Podman, context: Path, base: str, tag: str = IMAGE_TAG) -> str:
    """`podman build` of the Dockerfile on `base`, offline from the context's wheelhouse.

    `--format docker` keeps the HEALTHCHECK; `--pull=never`: the base is local; `--network
    none`: nothing may come from the network; `--layers=false`: no intermediate images pile
    up from one session to the next. The image this tag named before is removed.
    """
    before = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    podman(
        "build", "--format", "docker", "--pull=never", "--network", "none", "--layers=false",
        "--build-arg", f"BASE_IMAGE={base}", "--build-arg", "WHEELS=wheels",
        "-t", tag, str(context),
        timeout=600,
    )  # fmt: skip
    after = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if before and before != after:
        podman("rmi", before, check=False)  # still in use elsewhere: left alone
    return tag
