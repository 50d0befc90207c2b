"""Object storage: one ``ObjectStore`` contract, ``file://`` and ``s3://`` backends chosen by URI.

    store = open_object_store(settings.object_store_uri,
                              access_key=settings.s3_access_key, secret_key=settings.s3_secret_key)
    store.put_file(check_key(f"{tenant_prefix(tenant)}datasets/{ds}/data.parquet"), path)

Multi-object artifacts (checkpoints, datasets) are written with ``artifacts.ArtifactWriter``
(manifest last) or ``checkpoint_writer.CheckpointWriter``.
"""

from __future__ import annotations

from tuneforge.common.storage.base import ObjectInfo, ObjectStore
from tuneforge.common.storage.keys import check_key, check_prefix, check_tenant, tenant_prefix
from tuneforge.common.storage.uri import open_object_store

__all__ = [
    "ObjectInfo",
    "ObjectStore",
    "check_key",
    "check_prefix",
    "check_tenant",
    "open_object_store",
    "tenant_prefix",
]
