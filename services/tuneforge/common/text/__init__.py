"""Text utilities shared by services: toxicity/bias scoring and PII detection.

``toxicity.ToxicityScorer().score(text) -> ToxicityScore(score, flagged_terms)`` and
``pii.find_pii`` / ``pii.redact``. Pure Python, no downloads, no grpc.
"""
