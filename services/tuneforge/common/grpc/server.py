"""Build, run and gracefully stop a tuneforge gRPC server.

Every server gets the ``ObservingInterceptor`` (metrics, a trace span, log correlation) then the
``ServiceInterceptor`` (auth, errors, access logs), grpc.health.v1, server reflection and, when
``TUNEFORGE_METRICS_PORT`` is set, a ``/metrics`` endpoint on the service's host. ``RunningServer.stop`` first flips health to NOT_SERVING (so load balancers stop
routing), then lets in-flight calls drain for the grace period.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tuneforge.common.auth import TokenAuthenticator
from tuneforge.common.errors import Unavailable
from tuneforge.common.grpc.interceptors import Admission, ServiceInterceptor
from tuneforge.common.grpc.observe import ObservingInterceptor
from tuneforge.common.logging import register_secret
from tuneforge.common.metrics import MetricsEndpoint, ServiceMetrics, start_endpoint
from tuneforge.common.public_text import register_private_path
from tuneforge.common.settings import ServiceSettings
from tuneforge.common.tracing import configure_tracing

log = logging.getLogger(__name__)

# How long a stop waits for handlers that outlive the grace period (every stream notices a
# cancelled call within a second, so this is a bound for handlers stuck in I/O, not a normal wait).
_HANDLER_EXIT_S = 30.0

Registration = tuple[Callable[[Any, grpc.Server], None], Any]


@dataclass
class RunningServer:
    """A started server. ``stop`` is idempotent and safe from signal handlers."""

    server: grpc.Server
    port: int
    address: str
    health: health.HealthServicer
    service_names: Sequence[str]
    grace_period_s: float
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Run as the stop begins, before in-flight calls drain: background work that must not go on for
    # the grace period (the training runs of this replica stop after their current step and are
    # handed back at once, not after every watch stream has drained).
    on_stopping: list[Callable[[], None]] = field(default_factory=list)
    handlers: futures.ThreadPoolExecutor | None = None
    metrics: ServiceMetrics | None = None
    metrics_endpoint: MetricsEndpoint | None = None
    _stopped: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    def stop(self, grace: float | None = None) -> None:
        """Mark NOT_SERVING, run the on_stopping hooks, drain in-flight calls for ``grace`` seconds, wait
        for the handler threads, then run the on_stop hooks (background work first, storage and database last).

        When it returns, no handler and no background work of this server touches storage any more,
        so storage may be torn down (a concurrent second call waits for the first to finish).
        """
        if self._stopped.is_set():
            self._done.wait(self.grace_period_s + _HANDLER_EXIT_S + 60)
            return
        self._stopped.set()
        try:
            self.health.enter_graceful_shutdown()
            for hook in self.on_stopping:
                try:
                    hook()
                except Exception:  # a failing hook must not block the stop
                    log.exception("stopping hook failed")
            self.server.stop(self.grace_period_s if grace is None else grace).wait()
            self._join_handlers()
            for hook in reversed(self.on_stop):
                try:
                    hook()
                except Exception:  # a failing hook must not block the others (logged below)
                    log.exception("shutdown hook failed")
            log.info("server on %s stopped", self.address)
        finally:
            self._done.set()

    def _join_handlers(self) -> None:
        """Wait (bounded) for handler threads: a call cancelled by the stop may still be running."""
        if self.handlers is None:
            return
        joiner = threading.Thread(target=self.handlers.shutdown, kwargs={"wait": True, "cancel_futures": True},
                                  name="handler-join", daemon=True)
        joiner.start()
        joiner.join(_HANDLER_EXIT_S)
        if joiner.is_alive():
            log.warning("some request handlers were still running %.0fs after the stop", _HANDLER_EXIT_S)

    def wait(self) -> None:
        """Block until the server terminates."""
        self.server.wait_for_termination()

    def serve_forever(self) -> None:
        """Block, stopping gracefully on SIGTERM or SIGINT (what Kubernetes and Ctrl-C send)."""
        def _on_signal(signum: int, _frame: Any) -> None:
            log.info("received %s: draining for up to %.0fs", signal.Signals(signum).name, self.grace_period_s)
            threading.Thread(target=self.stop, daemon=True).start()
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
        self._stopped.wait()
        self._done.wait()  # not just the gRPC server: handlers, background runs and hooks have ended


def register_settings_secrets(settings: ServiceSettings) -> None:
    """Register every secret setting with the log redactor: auth tokens (comma- or newline-separated),
    S3 keys, and the database password. (Peer calls carry the caller's own token.)"""
    from urllib.parse import urlsplit

    secrets = [settings.s3_secret_key, settings.s3_access_key]
    values = [s.get_secret_value() for s in secrets]
    values += TokenAuthenticator.tokens_in(settings.auth_tokens.get_secret_value())
    with contextlib.suppress(ValueError):  # a malformed URL is reported by the database layer
        values.append(urlsplit(settings.database_url.get_secret_value()).password or "")
    for value in values:
        register_secret(value.strip())


def register_private_paths(settings: ServiceSettings) -> None:
    """Hide the service's folders and object-store root from every client message (by label)."""
    register_private_path(settings.data_dir, "data")
    register_private_path(settings.models_dir, "models")
    store = settings.resolved_object_store_uri()
    register_private_path(store, "store")
    register_private_path(store.partition("?")[0], "store")
    if store.startswith("file://"):
        register_private_path(store.removeprefix("file://"), "store")


def make_authenticator(settings: ServiceSettings) -> TokenAuthenticator | None:
    """The authenticator from settings; None only when auth is explicitly disabled."""
    spec = settings.auth_tokens.get_secret_value()
    register_settings_secrets(settings)
    if settings.auth_disabled:
        log.warning("authentication DISABLED (TUNEFORGE_AUTH_DISABLED=true): every caller is tenant 'default'")
        return None
    return TokenAuthenticator.parse(spec)


def build_server(settings: ServiceSettings, registrations: Sequence[Registration],
                 service_names: Sequence[str], metrics: ServiceMetrics | None = None) -> RunningServer:
    """Start a server with the given servicers on ``settings.host:settings.port``.

    Args:
        settings: the service's settings.
        registrations: ``(add_XServicer_to_server, servicer)`` pairs.
        service_names: full proto names of the services, for health and reflection.
        metrics: the service's metrics (domain series already registered); a new one when None.

    Raises:
        Unavailable: the port (or the metrics port) cannot be bound.
    """
    metrics = metrics or ServiceMetrics(settings.service_name)
    register_private_paths(settings)
    configure_tracing(settings.service_name, settings.otlp_endpoint)
    opts = [("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0)]
    handlers = futures.ThreadPoolExecutor(max_workers=settings.max_workers, thread_name_prefix=settings.service_name)
    server = grpc.server(handlers,
                         interceptors=[ObservingInterceptor(metrics, settings.service_name),
                                       ServiceInterceptor(make_authenticator(settings),
                                                          Admission(settings.call_limit(), settings.stream_limit(),
                                                                    settings.active_limit(),
                                                                    settings.queue_target_ms / 1000))],
                         options=opts,
                         # Past one call per handler thread, gRPC answers RESOURCE_EXHAUSTED at once
                         # instead of queueing calls for a thread: a saturated process (the GIL) would
                         # otherwise hold them until their deadline, before admission even saw them.
                         maximum_concurrent_rpcs=settings.max_workers)
    for add, servicer in registrations:
        add(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError as exc:
        raise Unavailable(f"cannot listen on {settings.host}:{settings.port}: {exc}; "
                          "choose another TUNEFORGE_PORT") from exc
    try:
        endpoint = start_endpoint(metrics, settings.host, settings.metrics_port)
    except OSError as exc:
        server.stop(0)
        raise Unavailable(f"cannot serve metrics on {settings.host}:{settings.metrics_port}: {exc.strerror}; "
                          "choose another TUNEFORGE_METRICS_PORT") from exc
    server.start()
    for name in ("", *service_names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    address = f"{settings.host}:{port}"
    log.info("%s serving %s on %s", settings.service_name, ", ".join(service_names), address)
    running = RunningServer(server, port, address, health_servicer, list(service_names), settings.grace_period_s,
                            handlers=handlers, metrics=metrics, metrics_endpoint=endpoint)
    if endpoint is not None:
        running.on_stop.insert(0, endpoint.stop)  # hooks run in reverse: the endpoint closes last
    return running
