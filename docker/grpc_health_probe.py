"""Container health check: exit 0 when the local gRPC server's grpc.health.v1 answers SERVING.

Used by the image's HEALTHCHECK (Docker/Podman). Kubernetes does not need it: the chart uses the
kubelet's native ``grpc:`` probes. Health is exempt from authentication, so no token is needed.

Usage::

    python grpc_health_probe.py [--addr 127.0.0.1:50051] [--service NAME] [--timeout 3]

Exit codes: 0 SERVING; 1 NOT_SERVING, unknown service or no answer; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _parse(argv: list[str] | None) -> argparse.Namespace:
    port = os.environ.get("TUNEFORGE_PORT", "50051")
    parser = argparse.ArgumentParser(description="Check a gRPC server's health (grpc.health.v1).")
    parser.add_argument("--addr", default=f"127.0.0.1:{port}", help="host:port (default: 127.0.0.1:$TUNEFORGE_PORT)")
    parser.add_argument("--service", default="", help="service name to check; '' is the whole server")
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline of the check in seconds")
    return parser.parse_args(argv)


def check(addr: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """Ask ``addr`` for the health of ``service``.

    Args:
        addr: ``host:port`` of the gRPC server.
        service: the service name to check; the empty string is the server as a whole.
        timeout: deadline of the call in seconds.

    Returns:
        ``(serving, description)``; description names the status or the gRPC error code.
    """
    with grpc.insecure_channel(addr) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return False, f"no answer ({code.name if code else 'error'})"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, name


def main(argv: list[str] | None = None) -> int:
    """Run the check and print one line; see the module docstring for exit codes."""
    args = _parse(argv)
    serving, what = check(args.addr, args.service, args.timeout)
    print(f"{args.addr} {args.service or '(server)'}: {what}", file=sys.stdout if serving else sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
