"""Python SDK for tuneforge (1.0): the four services behind one client.

- connect from the environment or a profile (``TUNEFORGE_ADDRESS`` or ``TUNEFORGE_<SERVICE>_ADDRESS``,
  ``TUNEFORGE_TOKEN`` or a token file, ``TUNEFORGE_TLS``; see :mod:`tuneforge.client.config`);
- typed errors (:mod:`tuneforge.client.errors`) with field violations as attributes;
- iterators over every list call; UNAVAILABLE retried with backoff where safe (one gRPC retry
  policy; creates always carry an idempotency key, reused by every retry), and on the same calls
  RESOURCE_EXHAUSTED with reason OVERLOADED (a service or its gate past capacity) after the
  server's RetryInfo or a jittered backoff, within the call's deadline (quota refusals are not);
- helpers: ``upload(path, on_progress=)``, ``download(ckpt, dest, on_progress=)`` (sha256-verified),
  ``wait(job | evaluation | curation, on_event=)`` (re-attaching after the last event seen);
- :class:`AsyncClient` (``grpc.aio``) with the same surface.

A tour (``examples/sdk_tour.py`` runs the whole of it in CI against real services)::

    from tuneforge.client import Client, errors

    with Client.connect() as c:                                  # env / profile / `make up`
        up = c.upload("faq.jsonl", "faq", on_progress=lambda done, total: None)
        run = c.wait(c.curate(up.version.id, steps=[...], split=...))
        job = c.create_job(jobspec.load("job.yaml"))
        job = c.wait(job, on_event=print)                         # events as they happen
        c.download(job.result_checkpoint_id, "out/", on_progress=...)
        for j in c.list_jobs():                                   # every page
            ...
    try:
        c.create_job({...})
    except errors.InvalidArgument as exc:
        for v in exc.violations:
            print(v.field, v.description)
"""

from tuneforge.client import errors, jobspec
from tuneforge.client.aio import AsyncClient
from tuneforge.client.config import ClientConfig, ConfigError
from tuneforge.client.sdk import Client

__all__ = ["AsyncClient", "Client", "ClientConfig", "ConfigError", "errors", "jobspec"]
