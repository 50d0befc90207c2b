"""Where the services are and how to authenticate: from the environment, a profile file, or code.

Resolution, first match wins for each value:

1. explicit arguments (``ClientConfig.load(address=..., token=...)``, CLI flags);
2. the environment: ``TUNEFORGE_<SERVICE>_ADDRESS`` (``DATASETS``, ``TRAINING``, ``EVALUATION``,
   ``CHECKPOINTS``: the variables the services use for their peers), ``TUNEFORGE_ADDRESS`` (one
   address for all four, e.g. a gateway), ``TUNEFORGE_TOKEN`` / ``TUNEFORGE_TOKEN_FILE``,
   ``TUNEFORGE_TLS`` (``1``/``true``), ``TUNEFORGE_TLS_CA_FILE``, ``TUNEFORGE_TIMEOUT_S``;
3. the profile named by ``TUNEFORGE_PROFILE`` (or the file's ``default_profile``) in
   ``TUNEFORGE_CONFIG`` (default ``~/.config/tuneforge/config.yaml``)::

       default_profile: local
       profiles:
         local:
           base_port: 50051          # the `make up` stack: 50051-50054 in service order
           token_file: .run/token
         prod:
           address: tuneforge.example.com:443
           tls: true
           token_file: ~/.config/tuneforge/prod.token

4. the local stack (``make up``): 127.0.0.1:50051-50054, token from ``.run/token``.

A token is never read from the command line by default, so it stays out of shell history.

    >>> cfg = ClientConfig.load(environ={"TUNEFORGE_ADDRESS": "gw:443", "TUNEFORGE_TRAINING_ADDRESS": "tr:50052",
    ...                                  "TUNEFORGE_TOKEN": "t0k", "TUNEFORGE_TLS": "true"}, config_file=None)
    >>> cfg.addresses["datasets"], cfg.addresses["training"], cfg.tls, cfg.token
    ('gw:443', 'tr:50052', True, 't0k')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SERVICES = ("datasets", "training", "evaluation", "checkpoints")
DEFAULT_CONFIG_FILE = Path("~/.config/tuneforge/config.yaml")
LOCAL_BASE_PORT = 50051
_PROFILE_KEYS = {"address", "addresses", "base_port", "token", "token_file", "tls", "ca_file", "timeout_s"}
# Client-side variables: never passed to service processes (they reject unknown TUNEFORGE_* names).
CLIENT_ENV_VARS = ("TUNEFORGE_ADDRESS", "TUNEFORGE_TOKEN", "TUNEFORGE_TOKEN_FILE", "TUNEFORGE_TLS",
                   "TUNEFORGE_TLS_CA_FILE", "TUNEFORGE_TIMEOUT_S", "TUNEFORGE_PROFILE", "TUNEFORGE_CONFIG",
                   "TUNEFORGE_OUTPUT")


class ConfigError(ValueError):
    """The client configuration is incomplete or malformed; the message says what to set."""


@dataclass(frozen=True)
class ClientConfig:
    """Resolved connection settings: one address per service, the token, TLS and the default deadline."""

    addresses: dict[str, str]
    token: str | None = None
    tls: bool = False
    ca_file: Path | None = None
    timeout_s: float = 60.0
    source: str = "explicit"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, *, address: str | None = None, addresses: Mapping[str, str] | None = None,
             token: str | None = None, token_file: Path | None = None, tls: bool | None = None,
             ca_file: Path | None = None, timeout_s: float | None = None, profile: str | None = None,
             environ: Mapping[str, str] | None = None,
             config_file: Path | None = DEFAULT_CONFIG_FILE) -> ClientConfig:
        """Resolve the settings (arguments > environment > profile > local stack; see the module doc).

        Raises:
            ConfigError: an unknown profile, a profile key that does not exist, or no token anywhere.
        """
        env = dict(os.environ if environ is None else environ)
        prof, source = _profile(env, profile, config_file)
        base_port = int(prof.get("base_port", LOCAL_BASE_PORT))
        resolved = {svc: f"127.0.0.1:{base_port + i}" for i, svc in enumerate(SERVICES)}
        one = address or env.get("TUNEFORGE_ADDRESS") or prof.get("address")
        if one:
            resolved = dict.fromkeys(SERVICES, one)
        resolved.update({k: v for k, v in (prof.get("addresses") or {}).items() if k in SERVICES})
        resolved.update({s: env[f"TUNEFORGE_{s.upper()}_ADDRESS"] for s in SERVICES
                         if env.get(f"TUNEFORGE_{s.upper()}_ADDRESS")})
        resolved.update(addresses or {})
        tok = token or _token(env, prof, token_file, source)
        use_tls = tls if tls is not None else _bool(env.get("TUNEFORGE_TLS", prof.get("tls", False)))
        ca = ca_file or env.get("TUNEFORGE_TLS_CA_FILE") or prof.get("ca_file")
        timeout = timeout_s or float(env.get("TUNEFORGE_TIMEOUT_S") or prof.get("timeout_s") or 60.0)
        return cls(resolved, tok, use_tls, Path(ca).expanduser() if ca else None, timeout, source)

    def describe(self) -> dict[str, Any]:
        """What is in use, without the token (for ``tuneforge config show``)."""
        return {"addresses": self.addresses, "tls": self.tls, "ca_file": str(self.ca_file or ""),
                "timeout_s": self.timeout_s, "token": "set" if self.token else "missing", "source": self.source}


def _profile(env: Mapping[str, str], name: str | None, config_file: Path | None) -> tuple[dict[str, Any], str]:
    path = Path(env["TUNEFORGE_CONFIG"]) if env.get("TUNEFORGE_CONFIG") else config_file
    name = name or env.get("TUNEFORGE_PROFILE")
    if path is None or not path.expanduser().exists():
        if name:
            raise ConfigError(f"profile {name!r} asked for, but there is no config file at {path}; create it "
                              "(see `tuneforge config --help`) or unset TUNEFORGE_PROFILE")
        return {}, "local stack defaults"
    doc = yaml.safe_load(path.expanduser().read_text()) or {}
    profiles = doc.get("profiles") or {}
    name = name or doc.get("default_profile")
    if not name:
        return {}, f"{path} (no profile chosen)"
    if name not in profiles:
        raise ConfigError(f"no profile {name!r} in {path}; it has: {', '.join(sorted(profiles)) or 'none'}")
    prof = dict(profiles[name] or {})
    unknown = sorted(set(prof) - _PROFILE_KEYS)
    if unknown:
        raise ConfigError(f"profile {name!r} in {path} has unknown keys {unknown}; known: {sorted(_PROFILE_KEYS)}")
    return prof, f"{path} profile {name}"


def _token(env: Mapping[str, str], prof: Mapping[str, Any], token_file: Path | None, source: str) -> str | None:
    if env.get("TUNEFORGE_TOKEN"):
        return env["TUNEFORGE_TOKEN"]
    for candidate in (token_file, env.get("TUNEFORGE_TOKEN_FILE"), prof.get("token_file")):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.exists():
                raise ConfigError(f"token file {path} does not exist ({source}); write the token there or set "
                                  "TUNEFORGE_TOKEN")
            return path.read_text().strip()
    if prof.get("token"):
        return str(prof["token"])
    local = Path(".run/token")
    return local.read_text().strip() if local.exists() else None


def _bool(value: Any) -> bool:
    return str(value).strip().lower() in {"1", "true", "yes", "on"}
