"""Prometheus metrics of one service: its own registry, the gRPC server series, domain series and
the ``/metrics`` HTTP endpoint (``TUNEFORGE_METRICS_PORT``).

prometheus_client rather than the OpenTelemetry metrics SDK: the deployment scrapes (a
ServiceMonitor), the client is one small pure-Python package with no exporter pipeline to run, and
its names and histograms are what Prometheus and Grafana dashboards expect. Tracing, if added, is a
separate concern (OpenTelemetry) and does not need the metrics to move.

Each server has its own ``ServiceMetrics`` (its own registry), so several services, or two
replicas of one, can run in one process (tests) without their series mixing. Domain code gets
families through ``counter``/``gauge``/``histogram``, which return the existing family when asked
twice (a service built again in one process keeps counting).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# No ``*_created`` series: a timestamp per label set doubles what is scraped and no panel reads it.
disable_created_metrics()

# Seconds: from a health check (sub-millisecond) to a slow upload or export (minutes).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 300.0)


class ServiceMetrics:
    """The registry of one service and the gRPC server families every service shares."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self._families: dict[str, Any] = {}
        self._lock = threading.Lock()
        labels = ("grpc_service", "grpc_method", "grpc_type")
        self.started = self.counter("grpc_server_started_total", "RPCs started on the server.", labels)
        self.handled = self.counter("grpc_server_handled_total", "RPCs completed on the server, by status code.",
                                    (*labels, "grpc_code"))
        self.latency = self.histogram("grpc_server_handling_seconds", "Time from the start of an RPC to its "
                                      "status, streams included.", labels, buckets=LATENCY_BUCKETS)
        self.in_flight = self.gauge("grpc_server_in_flight", "RPCs being handled now.", labels)
        self.open_streams = self.gauge("grpc_server_open_streams", "Streaming RPCs open now.", labels)

    def _family(self, kind: type, name: str, doc: str, labels: Sequence[str], **kwargs: Any) -> Any:
        with self._lock:
            family = self._families.get(name)
            if family is None:
                family = kind(name, doc, list(labels), registry=self.registry, **kwargs)
                self._families[name] = family
            return family

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """The counter family ``name`` (created once)."""
        return self._family(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """The gauge family ``name`` (created once)."""
        return self._family(Gauge, name, doc, labels)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Histogram:
        """The histogram family ``name`` (created once)."""
        return self._family(Histogram, name, doc, labels, buckets=tuple(buckets))

    def register(self, collector: Collector) -> None:
        """Add a collector computed at scrape time (e.g. counts read from the database)."""
        self.registry.register(collector)


class MetricsEndpoint:
    """The ``/metrics`` HTTP server of one service (a daemon thread); ``stop`` closes it."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int) -> None:
        self._httpd, self._thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.port: int = self._httpd.server_address[1]
        self.address = f"{host}:{self.port}"
        log.info("%s metrics on http://%s/metrics", metrics.service, self.address)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()


def start_endpoint(metrics: ServiceMetrics, host: str, port: int) -> MetricsEndpoint | None:
    """Serve ``/metrics`` on ``host:port``; None when ``port`` is 0 (``TUNEFORGE_METRICS_PORT`` unset).

    Raises:
        OSError: the port cannot be bound (the caller turns it into a start-up error).
    """
    if not port:
        return None
    return MetricsEndpoint(metrics, host, port)


def timed(histogram: Histogram, *labels: str) -> Callable[[], float]:
    """Start a timer; the returned function observes the elapsed seconds and returns them."""
    import time

    start = time.monotonic()

    def done() -> float:
        elapsed = time.monotonic() - start
        (histogram.labels(*labels) if labels else histogram).observe(elapsed)
        return elapsed
    return done
