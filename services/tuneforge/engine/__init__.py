"""The training engine: what runs inside Ray workers (torch, transformers, peft, trl, deepspeed).

It imports no grpc; the training service calls it, and ``python -m tuneforge.engine --config job.yaml``
runs it directly. Foundations (each module's docstring starts with its public API):

    spec      TrainingSpec and load_spec(): the typed, validated job description (no torch import)
    data      canonical records -> tokens: chat templates, loss masks, packing, collation, DPO pairs,
              pre-training chunks, deterministic epoch orders and mixtures
    models    load_model_and_tokenizer(): the base model with its method (full, LoRA, QLoRA, prefix,
              prompt); tiny.build_tiny_model() for tests; targets: per-architecture LoRA defaults

Built on them: recipes/ (sft, dpo, pretrain), train/ (loop, checkpoints, runtime), planner.

Importing this package is cheap: submodules are imported explicitly by their users.
"""
