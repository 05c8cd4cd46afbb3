"""Submits a run to an Azure ML published pipeline's REST endpoint with an Azure AD token.

The endpoint is the published pipeline's `endpoint` (`.../PipelineRuns/PipelineSubmit/<id>`).
The body is SPEC §5's azureml body; the answer is a PipelineRun whose `Id` becomes the run's
`remote_id`. Status rules are the http target's (`JsonPoster`). A token that cannot be had is
a Failed run with the reason, not a crash; only a network error reaching Azure AD is retried.

`ContinueRunOnStepFailure` is sent only when it was set: when the schedule sets
`continue_on_step_failure` (true or false), or else when the pipeline's default is true (false
is the default, so a pipeline saying false is indistinguishable from one saying nothing, and
the published pipeline's own setting applies).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from watcherd.core.errors import DispatchRejected, DispatchUnavailable, TransientError
from watcherd.core.models import AzureMLTarget, RunStatus
from watcherd.core.redact import make_redactor, redact_url, url_secrets
from watcherd.dispatch.http import (
    JsonPoster,
    data_path_assignments,
    describe,
    parameter_assignments,
    trigger_time_text,
)
from watcherd.engine.ports import Outcome, RunContext

if TYPE_CHECKING:
    from azure.identity.aio import DefaultAzureCredential

__all__ = [
    "REQUEST_TIMEOUT",
    "AzureMLDispatcher",
    "AzureTokens",
    "TokenProvider",
    "azureml_body",
]

log = structlog.get_logger(__name__)

TokenProvider = Callable[[str], Awaitable[str]]
"""Returns an Azure AD access token for a scope (DefaultAzureCredential by default)."""

REQUEST_TIMEOUT = timedelta(seconds=30)


def _continue_on_step_failure(ctx: RunContext) -> bool | None:
    """The explicit setting, or None when neither the schedule nor the pipeline set it."""
    if ctx.schedule is not None and ctx.schedule.continue_on_step_failure is not None:
        return ctx.schedule.continue_on_step_failure
    return True if ctx.pipeline.continue_on_step_failure else None


def azureml_body(ctx: RunContext) -> dict[str, Any]:
    """SPEC §5's azureml body: Azure ML's PipelineSubmit request, with watcherd tags."""
    body: dict[str, Any] = {
        "ExperimentName": ctx.run.experiment_name,
        "Description": describe(ctx),
        "ParameterAssignments": parameter_assignments(ctx),
    }
    paths = data_path_assignments(ctx)
    if paths is not None:
        body["DataPathAssignments"] = paths
    continue_on_failure = _continue_on_step_failure(ctx)
    if continue_on_failure is not None:
        body["ContinueRunOnStepFailure"] = continue_on_failure
    body["RunSource"] = "API"
    schedule_id = ctx.schedule.id if ctx.schedule else ctx.run.schedule_id
    tags = {"watcherd_run_id": ctx.run.id}
    if schedule_id:  # a pipeline submit has none
        tags["watcherd_schedule_id"] = schedule_id
    tags["watcherd_trigger_time"] = trigger_time_text(ctx.trigger_time)
    body["tags"] = tags
    return body


def _short(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextmanager
def _map_token_errors(scope: str) -> Iterator[None]:
    """Translate a token provider's failure: network → DispatchUnavailable, else Rejected."""
    where = f"Azure AD token for scope {scope}"
    try:
        yield
    except TransientError:
        raise
    except Exception as exc:
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        detail = _short(str(exc)) or type(exc).__name__
        if isinstance(exc, (ServiceRequestError, ServiceResponseError, TimeoutError)):
            raise DispatchUnavailable(f"{where}: {detail}") from exc
        raise DispatchRejected(f"{where}: {detail}") from exc


def _remote_id(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    ident = data.get("Id") if isinstance(data, dict) else None
    return str(ident) if ident else None


class AzureTokens:
    """Azure AD access tokens for the Azure ML dispatchers (azureml, batch_endpoint).

    Args:
        provider: returns a token for a scope; by default one
            `azure.identity.aio.DefaultAzureCredential`, created on first use (azure-identity
            caches and refreshes its tokens).
    """

    def __init__(self, provider: TokenProvider | None = None) -> None:
        self._provider = provider
        self._credential: DefaultAzureCredential | None = None

    async def _default_token(self, scope: str) -> str:
        if self._credential is None:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = DefaultAzureCredential()
        return (await self._credential.get_token(scope)).token

    async def token(self, scope: str) -> str:
        """A token for `scope`.

        Raises:
            DispatchUnavailable: Azure AD could not be reached (retryable).
            DispatchRejected: no credential works (the message says why).
        """
        provider = self._provider or self._default_token
        with _map_token_errors(scope):
            return await provider(scope)

    async def aclose(self) -> None:
        """Close the default credential, if one was made."""
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()


class AzureMLDispatcher:
    """Dispatcher for `azureml` pipelines.

    Args:
        token_provider: returns an Azure AD token for a scope (see `AzureTokens`).
    """

    def __init__(self, token_provider: TokenProvider | None = None) -> None:
        self._tokens = AzureTokens(token_provider)
        self._poster = JsonPoster()

    async def dispatch(self, ctx: RunContext) -> Outcome:
        """Submit the run; 2xx → Submitted with the PipelineRun's Id as remote_id.

        Raises:
            DispatchUnavailable: retryable (connection error, timeout, 408, 429, 5xx, or Azure
                AD unreachable).
        """
        target = ctx.pipeline.target
        if not isinstance(target, AzureMLTarget):
            raise TypeError(f"pipeline {ctx.pipeline.name!r} is not an azureml pipeline")
        bound = log.bind(run_id=ctx.run.id, endpoint=redact_url(target.endpoint))
        try:
            token = await self._tokens.token(target.scope)
        except DispatchRejected as exc:
            bound.warning("azureml_token_failed", error=str(exc))
            return Outcome(status=RunStatus.FAILED, error=str(exc))
        scrub = make_redactor([token, *url_secrets(target.endpoint)])
        headers = {"Authorization": f"Bearer {token}"}
        try:
            answer = await self._poster.post(
                target.endpoint, azureml_body(ctx), headers, REQUEST_TIMEOUT, scrub
            )
        except DispatchRejected as exc:
            return Outcome(status=RunStatus.FAILED, error=str(exc))
        remote_id = _remote_id(answer.body) if 200 <= answer.status < 300 else None
        if 200 <= answer.status < 300 and remote_id is None:
            bound.warning("azureml_no_run_id", status=answer.status)
        bound.debug("azureml_answered", status=answer.status, remote_id=remote_id)
        return answer.outcome(scrub, remote_id)

    async def aclose(self) -> None:
        """Close the HTTP session and the default credential."""
        await self._poster.aclose()
        await self._tokens.aclose()
