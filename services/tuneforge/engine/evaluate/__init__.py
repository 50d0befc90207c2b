"""The torch side of evaluation: perplexity, log-likelihood scoring and generation.

Imports no grpc. ``tuneforge.evaluation`` drives these functions through its job runner
(``tuneforge.engine.evaluate.job``), in-process or inside a Ray task.
"""
