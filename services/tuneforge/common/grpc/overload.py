"""When to send again a call refused OVERLOADED (a service, or its tuneforge-gate, past capacity).

Such a refusal (RESOURCE_EXHAUSTED with ErrorInfo reason ``OVERLOADED``, from the gate with a
RetryInfo) comes before any handler runs, so the call did nothing. The SDK (its idempotent unary
calls) and the services' peer clients (every call) send it again after the server's RetryInfo or an
exponential backoff with full jitter, a bounded number of times, never past the call's deadline.
"""

from __future__ import annotations

import random
import time

OVERLOAD_ATTEMPTS = 5
OVERLOAD_BACKOFF_S = (0.1, 2.0)  # first and largest backoff


def overload_pause(retry_after: float | None, attempt: int, deadline: float,
                   attempts: int = OVERLOAD_ATTEMPTS) -> float | None:
    """Seconds to wait before attempt ``attempt + 1`` of a refused call, or None to give up.

    ``retry_after``: the server's RetryInfo delay (0.0 without one) when the refusal was OVERLOADED,
    None for any other error. None also when ``attempts`` are used up or the pause would end past
    ``deadline`` (``time.monotonic``)."""
    if retry_after is None or attempt + 1 >= attempts:
        return None
    first, largest = OVERLOAD_BACKOFF_S
    pause = max(random.uniform(0, min(largest, first * 2 ** attempt)), retry_after)
    return pause if time.monotonic() + pause < deadline else None
