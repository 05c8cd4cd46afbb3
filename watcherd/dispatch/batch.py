"""Invokes an Azure ML batch endpoint (SPEC §13): Azure ML v2's way to run a pipeline from outside.

The request is the documented invoke call (Azure ML, "Create jobs and input data for batch
endpoints", REST tab): `POST <invocation URI>` with `Authorization: Bearer <token>` for
`https://ml.azure.com/.default`, `azureml-model-deployment: <deployment>` when a deployment is
named (else the endpoint's default deployment runs), and the body

    {"properties": {"InputData": {
        "<input_name>": {"JobInputType": "UriFile", "Uri": "azureml://datastores/<ds>/paths/<blob>"},
        "<param>": {"JobInputType": "Literal", "Value": "<string>"}}}}

watcherd adds `x-ms-client-request-id: <run id>` (the same on every retry of a run, so a
request can be traced on Azure's side). The answer is the created job; its `name` (else `id`)
becomes the run's `remote_id`. Status rules are the http target's (`JsonPoster`), except that
401/403 fail at once with a message saying the token was refused. The token code is the Azure
ML dispatcher's (`AzureTokens`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import quote

import structlog

from watcherd.core.errors import DispatchRejected
from watcherd.core.models import BatchEndpointTarget, RunStatus
from watcherd.core.redact import make_redactor, redact_url, url_secrets
from watcherd.dispatch.azureml import AzureTokens, TokenProvider
from watcherd.dispatch.http import JsonPoster
from watcherd.dispatch.urls import encode_path
from watcherd.engine.ports import Outcome, RunContext

__all__ = ["BatchEndpointDispatcher", "batch_body", "input_uri"]

log = structlog.get_logger(__name__)


def input_uri(ctx: RunContext) -> str | None:
    """The `Uri` of a file run's input, or None for a run without a file.

    `azureml://datastores/<azureml_datastore>/paths/<blob name>` when the blob datastore names
    its Azure ML datastore (`ctx.azureml_datastore`), else the blob's https URL; each path
    segment percent-encoded.

    Raises:
        DispatchRejected: the file is not a blob (a local datastore cannot feed an endpoint).
    """
    f = ctx.file
    if f is None:
        return None
    datastore = getattr(ctx, "azureml_datastore", None)
    name = f.relative_path.decode("utf-8", "surrogateescape")
    if f.url is None:
        raise DispatchRejected(
            f"datastore {f.datastore!r} is not a blob datastore: a batch endpoint reads its "
            "input from Azure storage"
        )
    if datastore:
        return f"azureml://datastores/{quote(datastore, safe='')}/paths/{encode_path(name)}"
    return f.url  # pollers.blob.blob_url: already percent-encoded per segment


def batch_body(ctx: RunContext, target: BatchEndpointTarget) -> dict[str, Any]:
    """SPEC §13's invoke body: the file as a UriFile input, every parameter a Literal."""
    inputs: dict[str, dict[str, str]] = {}
    uri = input_uri(ctx)
    if uri is not None:
        inputs[target.input_name] = {"JobInputType": "UriFile", "Uri": uri}
    for key, value in ctx.parameters.items():
        if uri is not None and key in (target.input_name, ctx.data_path_parameter_name):
            continue  # the file takes that input
        inputs[key] = {"JobInputType": "Literal", "Value": str(value)}
    return {"properties": {"InputData": inputs}}


def _job_name(body: bytes) -> str | None:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    ident = data.get("name") or data.get("id")
    return str(ident) if ident else None


class BatchEndpointDispatcher:
    """Dispatcher for `batch_endpoint` pipelines: one invoke per attempt.

    Args:
        token_provider: returns an Azure AD token for a scope (see `AzureTokens`).
    """

    def __init__(self, token_provider: TokenProvider | None = None) -> None:
        self._tokens = AzureTokens(token_provider)
        self._poster = JsonPoster()

    async def dispatch(self, ctx: RunContext) -> Outcome:
        """Invoke the endpoint; 2xx → Submitted with the job's name as remote_id.

        Raises:
            DispatchUnavailable: retryable (connection error, timeout, 408, 429, 5xx, or Azure
                AD unreachable).
        """
        target = ctx.pipeline.target
        if not isinstance(target, BatchEndpointTarget):
            raise TypeError(f"pipeline {ctx.pipeline.name!r} is not a batch_endpoint pipeline")
        bound = log.bind(run_id=ctx.run.id, endpoint=redact_url(target.endpoint))
        try:
            body = batch_body(ctx, target)
            token = await self._tokens.token(target.scope)
        except DispatchRejected as exc:
            bound.warning("batch_not_sent", error=str(exc))
            return Outcome(status=RunStatus.FAILED, error=str(exc))
        scrub = make_redactor([token, *url_secrets(target.endpoint)])
        headers = {"Authorization": f"Bearer {token}", "x-ms-client-request-id": ctx.run.id}
        if target.deployment:
            headers["azureml-model-deployment"] = target.deployment
        try:
            answer = await self._poster.post(
                target.endpoint, body, headers, target.request_timeout, scrub
            )
        except DispatchRejected as exc:
            return Outcome(status=RunStatus.FAILED, error=str(exc))
        ok = 200 <= answer.status < 300
        remote_id = _job_name(answer.body) if ok else None
        if ok and remote_id is None:
            bound.warning("batch_no_job_name", status=answer.status)
        bound.debug("batch_answered", status=answer.status, remote_id=remote_id)
        outcome = answer.outcome(scrub, remote_id)
        if answer.status in (401, 403):
            why = (
                f"the endpoint refused the Azure AD token for {target.scope} (the identity "
                "needs a role that may invoke it, e.g. AzureML Data Scientist)"
            )
            outcome = dataclasses.replace(outcome, error=f"{outcome.error} — {why}")
        return outcome

    async def aclose(self) -> None:
        """Close the HTTP session and the default credential."""
        await self._poster.aclose()
        await self._tokens.aclose()
