"""Human A/B evaluation: blind, shuffled side-by-side pairs and win rates from ratings."""

from __future__ import annotations

import hashlib
import random
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.evaluation.domain import metrics

PREFERENCES = ("left", "right", "tie")


def build_pairs(
    evaluation_id: str,
    model_generations: Sequence[Mapping[str, Any]],
    baseline_generations: Sequence[Mapping[str, Any]],
    seed: int,
) -> list[dict[str, Any]]:
    """Pair the two models' generations of the same prompts, hide which is which, shuffle.

    Each pair's side is drawn from the OS's secure random source: it cannot be recomputed from
    anything the caller knows (the evaluation id, the seed), so raters cannot unblind pairs. The
    hidden side is stored with the pairs (``eval_pairs.left_is_model``) to unblind the ratings.

    Args:
        seed: orders the pairs (display order only; it decides no side).

    Returns:
        Pairs with ``pair_id``, ``prompt``, ``left``, ``right`` and the hidden ``left_is_model``,
        in a seeded random order. Pair ids are opaque (a hash), so they reveal nothing either.

    Raises:
        FailedPrecondition: there are no generations of both models for the same examples.
    """
    base_by_key = {(g["dataset_version_id"], g["index"]): g for g in baseline_generations}
    pairs = []
    for g in model_generations:
        other = base_by_key.get((g["dataset_version_id"], g["index"]))
        if other is None:
            continue
        left_is_model = secrets.randbelow(2) == 1
        digest = hashlib.sha256(f"{evaluation_id}:{g['dataset_version_id']}:{g['index']}".encode())
        pairs.append(
            {
                "pair_id": "pair_" + digest.hexdigest()[:20],
                "prompt": _prompt_text(g["prompt"]),
                "left": g["text"] if left_is_model else other["text"],
                "right": other["text"] if left_is_model else g["text"],
                "left_is_model": left_is_model,
            }
        )
    if not pairs:
        raise FailedPrecondition(
            "the evaluation has no generations of both models: run a comparison with a generation "
            "metric (e.g. METRIC_ROUGE) before exporting pairs"
        )
    random.Random(seed).shuffle(pairs)
    return pairs


def side_by_side(generations: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A report's generations as one row per example (model, baseline and reference together)."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for g in generations:
        key = (str(g.get("dataset_version_id", "")), int(g.get("index", 0)))
        row = rows.setdefault(key, {"dataset_version_id": key[0], "index": key[1], "prompt": _prompt_text(g["prompt"]),
                                    "model_output": "", "baseline_output": "", "reference": ""})
        row["model_output" if g.get("role") == "model" else "baseline_output"] = str(g.get("text", ""))
        row["reference"] = row["reference"] or _prompt_text(g.get("reference") or "")
    return [rows[k] for k in sorted(rows)]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def check_ratings(ratings: Sequence[Mapping[str, Any]], known_pairs: set[str]) -> None:
    """Raise ``InvalidInput`` naming every bad rating (unknown pair, preference, empty rater)."""
    v = []
    for i, r in enumerate(ratings):
        if r["pair_id"] not in known_pairs:
            v.append(FieldViolation(f"ratings[{i}].pair_id", f"{echo(r['pair_id'])} is not an exported pair of this evaluation"))
        if r["preference"] not in PREFERENCES:
            v.append(FieldViolation(f"ratings[{i}].preference", "must be PREFERENCE_LEFT, _RIGHT or _TIE"))
        if not r.get("rater"):
            v.append(FieldViolation(f"ratings[{i}].rater", "is empty: name the rater"))
    if not ratings:
        v.append(FieldViolation("ratings", "give at least one rating"))
    if v:
        raise InvalidInput.of(v, "ratings")


def win_rates(pairs: Sequence[Mapping[str, Any]], ratings: Sequence[Mapping[str, Any]]) -> metrics.WinRate:
    """Unblind ratings and compute the model's win rate with a Wilson 95% interval."""
    left_is_model = {p["pair_id"]: p["left_is_model"] for p in pairs}
    wins = losses = ties = 0
    for r in ratings:
        if r["pair_id"] not in left_is_model:
            continue
        if r["preference"] == "tie":
            ties += 1
        elif (r["preference"] == "left") == left_is_model[r["pair_id"]]:
            wins += 1
        else:
            losses += 1
    return metrics.win_rate(wins, losses, ties)
