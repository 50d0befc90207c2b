"""The one idempotency mechanism for creating RPCs (request ids / idempotency keys).

A key is scoped by tenant and by RPC (the same key on UploadDataset and CreateMixture names two
different requests), and remembers a digest of the request body (everything but the key):

* first use: the key is claimed (PENDING), the operation runs, the key records its result id;
* the same body again, while the first is running: the retry waits for it and gets the same
  result (ten concurrent identical retries: ten identical answers, one operation);
* the same body again, later: the stored result, unless it has FAILED (``retry_if``) or is gone,
  in which case the operation runs again under the key;
* another body under the key: ALREADY_EXISTS naming the key and the RPC;
* the operation raises: the key is released, so a corrected retry is not turned away.

``CreateJob`` (training) started this shape; ``Idempotency`` is it, lifted into one place. Stores:
``tuneforge.common.db.idempotency.SqlIdempotencyStore`` (each service's own table).
"""

from __future__ import annotations

import enum
import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tuneforge.common.errors import Aborted, AlreadyExists, NotFound
from tuneforge.common.public_text import echo

T = TypeVar("T")


class KeyState(enum.Enum):
    """Where the request that claimed a key is."""

    PENDING = "PENDING"
    DONE = "DONE"


@dataclass(frozen=True)
class KeyRecord:
    """What a key remembers."""

    digest: str
    state: KeyState
    result_id: str


class IdempotencyStore(Protocol):
    """Keys per (tenant, rpc, key), with compare-and-set updates."""

    def claim(self, tenant: str, rpc: str, key: str, digest: str) -> KeyRecord | None:
        """Record the key as PENDING for ``digest``; None if claimed now, else the existing record."""
        ...

    def finish(self, tenant: str, rpc: str, key: str, result_id: str) -> None:
        """Mark the key DONE with its result."""
        ...

    def release(self, tenant: str, rpc: str, key: str) -> None:
        """Forget the key (its request failed before creating anything)."""
        ...

    def take_over(self, tenant: str, rpc: str, key: str, seen: KeyRecord) -> bool:
        """Set the key back to PENDING if it still is ``seen``; whether this caller won."""
        ...

    def clear_pending(self) -> int:
        """At start-up: forget keys left PENDING by a stopped process; returns how many."""
        ...


def digest_of(*parts: bytes | str) -> str:
    """sha256 over the parts (length-prefixed, so ("ab", "c") and ("a", "bc") differ)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def proto_digest(message: Any, key_field: str) -> str:
    """The digest of a request message without its key field (deterministic serialization)."""
    body = type(message)()
    body.CopyFrom(message)
    body.ClearField(key_field)
    return digest_of(type(message).DESCRIPTOR.full_name, body.SerializeToString(deterministic=True))


class Idempotency:
    """Runs creating operations at most once per (tenant, rpc, key) and body.

    Args:
        store: where keys live.
        wait_s: how long a retry waits for the first request with its key before ABORTED.
        poll_s: how often a waiting retry looks at the store (another process may own the key).
    """

    def __init__(self, store: IdempotencyStore, *, wait_s: float = 300.0, poll_s: float = 0.1) -> None:
        self._store = store
        self._wait_s = wait_s
        self._poll_s = poll_s
        self._changed = threading.Condition()

    def run(self, tenant: str, rpc: str, key: str, digest: str, create: Callable[[], str],
            load: Callable[[str], T], retry_if: Callable[[T], bool] = lambda _: False,
            key_field: str = "request_id") -> T:
        """The result of the request: created now, created by an identical earlier request, or
        re-created when that one's result ``retry_if`` (e.g. a FAILED run) or is gone.

        Args:
            create: runs the operation, returns the id of what it created.
            load: reads a result by id (``NotFound`` when it was deleted since).
            key_field: the key's field name, for messages.

        Raises:
            AlreadyExists: the key was used for a different request body of this RPC.
            Aborted: the first request with this key is still running after ``wait_s``.
        """
        if not key:
            return load(create())
        deadline = time.monotonic() + self._wait_s
        while True:
            seen = self._store.claim(tenant, rpc, key, digest)
            if seen is None:
                return self._create(tenant, rpc, key, create, load)
            if seen.digest != digest:
                raise AlreadyExists(
                    f"{key_field} {echo(key)} was already used for a different {rpc} request: send the same "
                    f"request to get its result, or use a new {key_field}", reason="IDEMPOTENCY_KEY_REUSED")
            if seen.state is KeyState.DONE:
                result = self._load(load, seen.result_id)
                if result is not None and not retry_if(result):
                    return result
                if self._store.take_over(tenant, rpc, key, seen):  # failed or deleted: run it again
                    return self._create(tenant, rpc, key, create, load)
                continue
            if time.monotonic() >= deadline:
                raise Aborted(f"the first {rpc} request with {key_field} {echo(key)} is still running: "
                              "retry later with the same request", reason="IDEMPOTENCY_KEY_BUSY")
            with self._changed:
                self._changed.wait(self._poll_s)

    def _create(self, tenant: str, rpc: str, key: str, create: Callable[[], str], load: Callable[[str], T]) -> T:
        try:
            result_id = create()
        except BaseException:
            self._store.release(tenant, rpc, key)
            self._notify()
            raise
        self._store.finish(tenant, rpc, key, result_id)
        self._notify()
        return load(result_id)

    @staticmethod
    def _load(load: Callable[[str], T], result_id: str) -> T | None:
        try:
            return load(result_id)
        except NotFound:
            return None

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()
