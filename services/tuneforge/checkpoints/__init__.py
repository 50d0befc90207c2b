"""The checkpoint service: checkpoints in the object store that are atomic, verified, retained and
exportable. ``python -m tuneforge.checkpoints`` runs it; ``app.build_app`` wires it.

Flow: training workers write checkpoint files straight to the store with
``tuneforge.common.storage.checkpoint_writer.CheckpointWriter`` under
``tenants/<tenant>/checkpoints/<prefix>/``, then call ``RegisterCheckpoint`` with the file list;
the service checks every file's size and sha256, writes ``CHECKPOINT.json`` and commits the row.
"""
