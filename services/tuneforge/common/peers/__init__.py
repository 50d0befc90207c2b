"""What a service needs to consume its peers' resources on a caller's behalf.

Shared by the evaluation and training services (both read dataset versions and resolve models):

- ``clients``: gRPC clients of the dataset and checkpoint services (the caller's own token on every
  call, a deadline on every call, peer errors mapped back onto ``tuneforge.common.errors``);
- ``objects``: verified reads of a dataset version's Parquet shards straight from the shared store;
- ``models``: base models by name (store or ``TUNEFORGE_MODELS_DIR``) and checkpoints by id;
- ``credentials``: the identity work left by a stopped process acts as (a tenant's configured token).
- ``types``: plain results a service's domain may name (no grpc import).
"""
