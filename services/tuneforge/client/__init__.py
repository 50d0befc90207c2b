"""Python SDK: typed stubs for the four services with auth and deadlines, plus helpers for the
calls that need more than one message (streamed uploads, following a long operation).

    from tuneforge.client import Client
    c = Client.local()                       # the `make up` stack, token from .run/token
    up = c.upload_dataset("faq", Path("faq.jsonl"))
    run = c.curate(up.version.id, steps=[...])
"""

from tuneforge.client.sdk import Client

__all__ = ["Client"]
