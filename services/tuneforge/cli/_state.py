"""Global options shared by every command and the lazily opened SDK client."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from tuneforge.cli._output import Output
from tuneforge.client import Client, ClientConfig


@dataclass
class State:
    """What the root callback parsed; ``client`` connects on first use."""

    output: Output = Output.table
    address: str | None = None
    profile: str | None = None
    tls: bool | None = None
    ca_file: Path | None = None
    token_file: Path | None = None
    timeout: float | None = None
    _client: Client | None = field(default=None, repr=False)

    def config(self) -> ClientConfig:
        """The resolved client configuration (flags > environment > profile > local stack)."""
        return ClientConfig.load(address=self.address, profile=self.profile, tls=self.tls, ca_file=self.ca_file,
                                 token_file=self.token_file, timeout_s=self.timeout)

    @property
    def client(self) -> Client:
        """The SDK client (opened once)."""
        if self._client is None:
            self._client = Client(self.config())
        return self._client

    def close(self) -> None:
        """Close the client's channels, if opened."""
        if self._client is not None:
            self._client.close()
            self._client = None


def state(ctx: typer.Context) -> State:
    """The State of the running command."""
    obj: Any = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj
