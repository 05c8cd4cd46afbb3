"""`PipelineRun` (import it from `watcherd.sdk`): one run, its status, log and waiting.

`wait_for_completion` has Azure ML's signature and output (azureml-pipeline-core 1.62,
`PipelineRun.wait_for_completion`): `PipelineRunId:` and a link first; with `show_output`, each
status change as `PipelineRun Status: <s>`, the run's log as it grows, and an execution summary;
after `timeout_seconds` it stops waiting without raising and returns the status at that time.
`raise_on_error` raises `ActivityFailedException` when the run ends Failed or Canceled
(SPEC §7). One deliberate difference: Azure ML ignores `timeout_seconds` when `show_output` is
false; watcherd honours it in both modes.
"""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from watcherd.client import AuthenticationError, WatcherdError, quote_id

if TYPE_CHECKING:
    from watcherd.sdk.objects import Workspace

__all__ = ["TERMINAL_STATUSES", "ActivityFailedException", "PipelineRun", "page_link"]

JSON = dict[str, Any]
TERMINAL_STATUSES = frozenset({"Completed", "Failed", "Submitted", "Canceled", "Skipped"})
FAILED_STATUSES = frozenset({"Failed", "Canceled"})
_POLL_MAX = 1.0  # Azure ML polls every second; the first polls come sooner


class ActivityFailedException(WatcherdError):  # noqa: N818 - Azure ML's name
    """The run ended Failed or Canceled (`wait_for_completion(raise_on_error=True)`)."""

    def __init__(self, run_id: str, status: str, error: Any) -> None:
        detail = error if isinstance(error, str) or error is None else json.dumps(error)
        super().__init__(
            f"run {run_id} ended {status}" + (f": {detail}" if detail else ""),
            code="run_failed",
        )
        self.run_id = run_id
        self.run_status = status
        self.error = error


def page_link(url: str, run_id: str | None = None) -> str | None:
    """The web page's address for a run (None for a unix socket: no browser reaches it)."""
    if not url.startswith(("http://", "https://")):
        return None
    return f"{url.rstrip('/')}/" + (f"#run-{run_id}" if run_id else "")


class PipelineRun:
    """One run of a pipeline, for a schedule or submitted by hand."""

    def __init__(self, workspace: Workspace, data: JSON) -> None:
        self._ws = workspace
        self._load(data)

    def _load(self, data: JSON) -> None:
        self._data = data
        self.id: str = data["id"]
        self.status: str = data["status"]
        self.schedule_id: str | None = data.get("schedule_id")
        self.pipeline_id: str | None = data.get("pipeline_id")
        self.experiment_name: str | None = data.get("experiment_name")

    def _path(self, suffix: str = "") -> str:
        return f"/runs/{quote_id(self.id)}{suffix}"

    def refresh(self) -> PipelineRun:
        self._load(self._ws._client.get(self._path()))
        return self

    def get_status(self) -> str:
        """The current status (asks the daemon)."""
        return self.refresh().status

    def get_details(self) -> JSON:
        """Everything the daemon knows about the run: trigger, attempts, error, times…"""
        return dict(self.refresh()._data)

    def get_log(self) -> str:
        """The run's kept output (needs the token)."""
        return self._ws._client.log(self.id).decode("utf-8", "replace")

    def cancel(self) -> None:
        self._load(self._ws._client.post(self._path("/cancel")))

    def retry(self) -> None:
        self._load(self._ws._client.post(self._path("/retry")))

    def wait_for_completion(
        self,
        show_output: bool = True,
        timeout_seconds: float = sys.maxsize,
        raise_on_error: bool = True,
    ) -> str:
        """Wait until the run is terminal or `timeout_seconds` have passed; return the status.

        Raises:
            ActivityFailedException: `raise_on_error` and the run ended Failed or Canceled.
        """
        out = sys.stdout
        out.write(f"PipelineRunId: {self.id}\n")
        link = page_link(self._ws.url, self.id)
        if link:
            out.write(f"Link to the watcherd page: {link}\n")
        stream = _LogStream(self, out) if show_output else None
        started = time.monotonic()
        delay, last = 0.1, None
        status = self.get_status()
        while True:
            if stream is not None:
                if status != last:
                    out.write(f"PipelineRun Status: {status}\n")
                stream.poll()
            last = status
            if status in TERMINAL_STATUSES:
                break
            elapsed = time.monotonic() - started
            if elapsed >= timeout_seconds:
                if show_output:
                    out.write(f"Timed out of waiting. Elapsed time: {elapsed:.1f}\n")
                break
            time.sleep(min(delay, max(timeout_seconds - elapsed, 0.0)))
            delay = min(delay * 1.5, _POLL_MAX)
            status = self.get_status()
        out.flush()
        failed = raise_on_error and status in FAILED_STATUSES
        if show_output:
            self._summary(out, status, show_error=not failed)
        if failed:
            raise ActivityFailedException(self.id, status, self._data.get("error"))
        if show_output:
            out.write(f"{self._data}\n")
        return status

    def _summary(self, out: TextIO, status: str, *, show_error: bool) -> None:
        out.write("\nPipelineRun Execution Summary\n==============================\n")
        out.write(f"PipelineRun Status: {status}\n")
        error = self._data.get("error")
        if error and show_error:
            out.write("\nError:\n" + json.dumps(error, indent=4) + "\n")
        out.flush()

    def __repr__(self) -> str:
        return f"PipelineRun(Id: {self.id}, Status: {self.status})"


class _LogStream:
    """Prints what a run's kept log gained since the last poll (the log needs the token)."""

    def __init__(self, run: PipelineRun, out: TextIO) -> None:
        self.run, self.out = run, out
        self.seen = 0
        self.pending = b""  # the last, unfinished line: printed once complete or at the end
        self.enabled = True
        self.started = False

    def poll(self) -> None:
        if not self.enabled or self.run.status == "Queued":
            return
        try:
            data = self.run._ws._client.log(self.run.id)
        except AuthenticationError:
            self.enabled = False
            self.out.write("(the run's log needs the API token; it is not shown)\n")
            return
        except WatcherdError:
            return  # a transient failure: the next poll tries again
        new = data[self.seen :] if len(data) >= self.seen else data  # the kept tail moved on
        self.seen = len(data)
        done = self.run.status in TERMINAL_STATUSES
        text = self.pending + new
        cut = len(text) if done else text.rfind(b"\n") + 1
        self.pending = text[cut:]
        if not text[:cut]:
            return
        if not self.started:
            self.out.write(f"\nStreaming the log of run {self.run.id}\n")
            self.started = True
        self.out.write(text[:cut].decode("utf-8", "replace"))
        if done and not text.endswith(b"\n"):
            self.out.write("\n")
        self.out.flush()
