"""The /metrics endpoint of a bare server: off by default, on the service's host when set, closed on
stop, and a busy port is a start-up error naming the setting."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from tuneforge.common.errors import Unavailable
from tuneforge.common.grpc.server import build_server
from tuneforge.common.settings import ServiceSettings, load_settings

pytestmark = [pytest.mark.integration]


def _settings(tmp_path, **values) -> ServiceSettings:
    return load_settings(ServiceSettings, environ={}, auth_disabled=True, data_dir=tmp_path, **values)


def test_no_endpoint_unless_a_port_is_set(tmp_path):
    server = build_server(_settings(tmp_path), [], [])
    try:
        assert server.metrics_endpoint is None and server.metrics is not None
    finally:
        server.stop(0)


def test_endpoint_serves_until_the_server_stops(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = build_server(_settings(tmp_path, metrics_port=port), [], [])
    try:
        assert server.metrics_endpoint.address == f"127.0.0.1:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
            assert b"# TYPE grpc_server_handled_total counter" in response.read()
    finally:
        server.stop(0)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30)


def test_a_busy_metrics_port_is_a_start_up_error_naming_the_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(Unavailable, match="TUNEFORGE_METRICS_PORT"):
            build_server(_settings(tmp_path, metrics_port=busy.getsockname()[1]), [], [])
