"""Channels and stub wrappers shared by the sync and asyncio clients.

One retry policy for the whole SDK: gRPC's own service-config ``retryPolicy`` (exponential backoff
with jitter, UNAVAILABLE only) on the calls that are safe to repeat: reads, cancels, alias/pin
moves, and creates, which always carry an idempotency key (the wrapper fills an empty one with a
fresh UUID before the first attempt, so every retry repeats the same key and the server returns
the first result). Deletes are not retried. On the same calls (unary requests), RESOURCE_EXHAUSTED
with reason OVERLOADED (a service or its tuneforge-gate past capacity) is retried by the SDK itself,
after the server's RetryInfo or a jittered backoff, within the call's deadline; other
RESOURCE_EXHAUSTED (quotas, limits) is not.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from tuneforge.client.config import ClientConfig
from tuneforge.client.errors import ApiError, from_rpc_error
from tuneforge.common.grpc import overload

_RETRIED: dict[str, tuple[str, ...]] = {
    "tuneforge.datasets.v1.DatasetService": (
        "UploadDataset", "RegisterDataset", "CurateDataset", "WatchCurationRun", "GetCurationRun", "GetDataset",
        "ListDatasets", "GetDatasetVersion", "ListDatasetVersions", "PreviewRows", "GetDatasetStats",
        "GetRejectedRows", "CreateMixture", "AcquireVersionLease", "ReleaseVersionLease"),
    "tuneforge.training.v1.TrainingService": (
        "CreateJob", "GetJob", "ListJobs", "CancelJob", "StreamJobEvents", "ListJobCheckpoints",
        "DownloadJobMetrics"),
    "tuneforge.evaluation.v1.EvaluationService": (
        "CreateEvaluation", "GetEvaluation", "ListEvaluations", "StreamEvaluationProgress", "CancelEvaluation",
        "CompareModels", "ExportPairs", "GetWinRates", "ListEvaluationSamples"),
    "tuneforge.checkpoints.v1.CheckpointService": (
        "RegisterCheckpoint", "ListCheckpoints", "GetManifest", "SetAlias", "ListAliases", "DownloadFile",
        "GetDownloadUrl", "ExportCheckpoint", "PinCheckpoint", "UnpinCheckpoint", "GetLatestCompleteCheckpoint"),
}
# Idempotency-key field per create RPC; filled with a UUID when the caller left it empty.
KEYED: dict[str, str] = {"CreateJob": "idempotency_key", "CurateDataset": "request_id",
                         "CreateEvaluation": "request_id", "CreateMixture": "request_id",
                         "RegisterDataset": "request_id"}
RETRY_POLICY = {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s", "backoffMultiplier": 2.0,
                "retryableStatusCodes": ["UNAVAILABLE"]}
# A service (or the tuneforge-gate in front of it) past capacity answers RESOURCE_EXHAUSTED with
# reason OVERLOADED and, from the gate, a RetryInfo. gRPC's retry policy cannot tell that from a
# quota refusal (same code), so the SDK retries it itself: the same retried methods, unary requests
# only, up to OVERLOAD_ATTEMPTS in all, waiting the server's RetryInfo or an exponential backoff
# with full jitter, and never past the call's own deadline.
OVERLOAD_ATTEMPTS = overload.OVERLOAD_ATTEMPTS
_RETRIED_NAMES = frozenset(m for methods in _RETRIED.values() for m in methods)
MAX_MESSAGE_BYTES = 16 << 20


def service_config() -> str:
    """The channel's service config (JSON): the retry policy for the idempotent calls."""
    names = [{"service": svc, "method": m} for svc, methods in _RETRIED.items() for m in methods]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}]})


def channel_options() -> list[tuple[str, Any]]:
    """Options shared by sync and aio channels."""
    return [("grpc.enable_retries", 1), ("grpc.service_config", service_config()),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def credentials(config: ClientConfig) -> grpc.ChannelCredentials | None:
    """TLS credentials (system roots, or the CA file) or None for plaintext."""
    if not config.tls:
        return None
    roots = config.ca_file.read_bytes() if config.ca_file else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def open_channel(address: str, config: ClientConfig) -> grpc.Channel:
    """A sync channel with the retry policy, TLS when configured."""
    creds = credentials(config)
    if creds is None:
        return grpc.insecure_channel(address, options=channel_options())
    return grpc.secure_channel(address, creds, options=channel_options())


def open_aio_channel(address: str, config: ClientConfig) -> grpc.aio.Channel:
    """An asyncio channel with the retry policy, TLS when configured."""
    creds = credentials(config)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=channel_options())
    return grpc.aio.secure_channel(address, creds, options=channel_options())


def with_key(method: str, request: Any) -> Any:
    """A copy of a create request with its idempotency key set (kept if the caller set one)."""
    key_field = KEYED.get(method)
    if key_field and not getattr(request, key_field):
        request = type(request).FromString(request.SerializeToString())
        setattr(request, key_field, uuid.uuid4().hex)
    return request


def _upload_with_key(messages: Iterator[Any]) -> Iterator[Any]:
    for i, msg in enumerate(messages):
        if i == 0 and msg.WhichOneof("payload") == "metadata" and not msg.metadata.request_id:
            msg = type(msg).FromString(msg.SerializeToString())
            msg.metadata.request_id = uuid.uuid4().hex
        yield msg


class Service:
    """A stub whose methods add the token and the default deadline, fill idempotency keys and raise
    typed :mod:`tuneforge.client.errors` instead of ``grpc.RpcError``. Same call signature as the
    generated stub (``request, timeout=..., metadata=...``)."""

    def __init__(self, stub: Any, token: str | None, timeout: float) -> None:
        self._stub, self._timeout = stub, timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raw = getattr(self._stub, name)
        streaming = _is_response_streaming(raw)

        def call(request: Any, timeout: float | None = None, metadata: Any = (), **kw: Any) -> Any:
            request = _upload_with_key(request) if name == "UploadDataset" else with_key(name, request)
            args = {"timeout": timeout or self._timeout, "metadata": (*self._metadata, *metadata), **kw}
            if streaming:
                return _stream(raw(request, **args), name)
            deadline = time.monotonic() + args["timeout"]
            for attempt in range(OVERLOAD_ATTEMPTS):
                try:
                    return raw(request, **args)
                except grpc.RpcError as exc:
                    err = from_rpc_error(exc, name)
                pause = _overload_pause(err, attempt, deadline) if _retries_overload(name, request) else None
                if pause is None:
                    raise err from None
                time.sleep(pause)
                args["timeout"] = max(0.001, deadline - time.monotonic())
            raise AssertionError("unreachable: the last attempt raises")

        call.__name__ = name
        return call


def _overload_pause(err: ApiError, attempt: int, deadline: float) -> float | None:
    """How long to wait before trying ``err``'s call again, or None when it must not be retried
    (not OVERLOADED, attempts used up, or the pause would end past the call's deadline)."""
    retry_after = (err.retry_delay_s or 0.0) if err.reason == "OVERLOADED" else None
    return overload.overload_pause(retry_after, attempt, deadline, OVERLOAD_ATTEMPTS)


def _retries_overload(name: str, request: Any) -> bool:
    return name in _RETRIED_NAMES and hasattr(request, "SerializeToString")


def _stream(it: Any, name: str) -> Iterator[Any]:
    try:
        yield from it
    except grpc.RpcError as exc:
        raise from_rpc_error(exc, name) from None
    finally:
        it.cancel()


class AsyncService(Service):
    """:class:`Service` for ``grpc.aio`` stubs: unary calls are coroutines, streams async iterators."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        raw = getattr(self._stub, name)
        streaming = isinstance(raw, grpc.aio.UnaryStreamMultiCallable)

        def call(request: Any, timeout: float | None = None, metadata: Any = (), **kw: Any) -> Any:
            request = _upload_with_key(request) if name == "UploadDataset" else with_key(name, request)
            args = {"timeout": timeout or self._timeout, "metadata": (*self._metadata, *metadata), **kw}
            if streaming:
                return _astream(raw(request, **args), name)
            return _aunary(raw, request, args, name)

        call.__name__ = name
        return call


async def _aunary(raw: Any, request: Any, args: dict[str, Any], name: str) -> Any:
    deadline = time.monotonic() + args["timeout"]
    for attempt in range(OVERLOAD_ATTEMPTS):
        try:
            return await raw(request, **args)
        except grpc.RpcError as exc:
            err = from_rpc_error(exc, name)
        pause = _overload_pause(err, attempt, deadline) if _retries_overload(name, request) else None
        if pause is None:
            raise err from None
        await asyncio.sleep(pause)
        args = {**args, "timeout": max(0.001, deadline - time.monotonic())}
    raise AssertionError("unreachable: the last attempt raises")


async def _astream(call: Any, name: str) -> AsyncIterator[Any]:
    try:
        async for item in call:
            yield item
    except grpc.RpcError as exc:
        raise from_rpc_error(exc, name) from None
    finally:
        call.cancel()


def _is_response_streaming(multi_callable: Any) -> bool:
    return isinstance(multi_callable, grpc.UnaryStreamMultiCallable | grpc.StreamStreamMultiCallable)
