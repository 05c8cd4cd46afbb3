"""The files the daemon keeps in state_dir beside the store: the API token, `config.json`
(for the CLI and SDK to find it) and the replica id's suffix — each written privately, never
through a planted symlink (SPEC §7, README "Security")."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
from pathlib import Path

import structlog

from watcherd.core.models import Config

__all__ = ["os_error", "replica_id", "token", "write_private"]

log = structlog.get_logger(__name__)


def token(cfg: Config) -> tuple[str, Path]:
    """The API token: from the config, else generated once into state_dir/token (0600)."""
    path = cfg.daemon.state_dir / "token"
    kept = _read_token(path)
    if cfg.daemon.token:
        # Kept (0600) in the private state dir too, so the CLI and the SDK find it by
        # config.json's token_file, as they do for a generated token. Written only when it
        # changed: a start on a full disk must not fail on it (the config has the token).
        if kept != cfg.daemon.token:
            try:
                write_private(path, cfg.daemon.token + "\n", 0o600)
            except OSError as exc:
                log.warning("token_file_not_written", path=str(path), error=os_error(exc))
        return cfg.daemon.token, path
    if kept:
        return kept, path
    tok = secrets.token_urlsafe(32)
    write_private(path, tok + "\n", 0o600)
    return tok, path


def _read_token(path: Path) -> str | None:
    """The kept token, its file's mode made 0600 if it was not (never through a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd) as f:
            if os.fstat(fd).st_mode & 0o777 != 0o600:
                os.fchmod(fd, 0o600)
            return f.read().strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink was planted there; never read through it
        log.warning("token_file_replaced", path=str(path), error=os_error(exc))
        return None


def os_error(exc: OSError) -> str:
    """One line for an OSError, e.g. "[Errno 98] address already in use"."""
    return f"[Errno {exc.errno}] {exc.strerror}" if exc.strerror else str(exc)


def write_private(path: Path, text: str, mode: int) -> None:
    """Write `text` to `path` with exactly `mode`: a fresh temp file (O_EXCL|O_NOFOLLOW, so a
    planted symlink is never followed) renamed over the target, which replaces a symlink
    rather than writing through it and drops whatever mode the old file had."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def replica_id(cfg: Config) -> str:
    """`[daemon] replica_id`, else the host name and a random suffix kept in state_dir."""
    if cfg.daemon.replica_id:
        return cfg.daemon.replica_id
    path = cfg.daemon.state_dir / "replica_id"
    try:
        suffix = path.read_text().strip()
    except OSError:
        suffix = ""
    if not suffix:
        suffix = secrets.token_hex(3)
        with contextlib.suppress(OSError):
            write_private(path, suffix + "\n", 0o600)
    return f"{socket.gethostname()}-{suffix}"
