"""Safety scoring with the SAME toxicity/bias scorer as dataset curation."""

from __future__ import annotations

from tuneforge.common.text.toxicity import ToxicityScorer


class CurationSafetyScorer:
    """Implements ``SafetyScorer`` with ``tuneforge.common.text.toxicity.ToxicityScorer``."""

    def __init__(self, scorer: ToxicityScorer | None = None) -> None:
        self._scorer = scorer or ToxicityScorer()

    def flagged(self, text: str) -> bool:
        """Whether the curation scorer finds a toxic term or a biased generalization in ``text``."""
        return self._scorer.score(text).flagged
