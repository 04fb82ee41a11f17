"""filter: turn judgments into clean preference pairs and validate them.

Reads: prompts, ``candidates.jsonl``, ``judgments.jsonl``.
Writes: ``pairs.jsonl`` (PreferencePair records), ``train/`` (a `datasets`
folder in TRL's conversational prompt/chosen/rejected format) and
``validation.json`` (the preference-data validation figures).

Dropped: ties, pairs whose chosen response was cut off at the token budget (it
would teach the policy to stop mid-thought; TRL's online DPO penalises a missing
EOS for the same reason), identical responses, near-empty responses, and pairs
more similar than the threshold (they carry almost no preference signal). Of what
is left, each prompt keeps its most decisive pair (largest score gap), so no
prompt is repeated and a prompt whose best pair had a truncated winner keeps its
next best. Optionally the pairs that drive length bias are dropped until the
chosen/rejected length ratio is under a cap.
"""

from __future__ import annotations

from collections import Counter
from difflib import SequenceMatcher

import numpy as np
from pydantic import BaseModel

from infra.records import Candidate, Judgment, PreferencePair, Prompt
from infra.settings import FilterConfig


class FilterReport(BaseModel):
    n_judgments: int
    n_kept: int
    dropped: dict[str, int]
    validation: dict[str, float]


def similarity(a: str, b: str) -> float:
    return SequenceMatcher(None, a.lower(), b.lower()).ratio()


def drop_reason(
    chosen: str, rejected: str, verdict: str, sim: float, config: FilterConfig, chosen_truncated: bool = False
) -> str | None:
    if verdict == "tie":
        return "tie"
    if chosen_truncated and config.drop_truncated_chosen:
        return "truncated_chosen"
    if chosen.strip() == rejected.strip():
        return "identical"
    if min(len(chosen.strip()), len(rejected.strip())) < config.min_chars:
        return "near_empty"
    if sim > config.similarity_threshold:
        return "too_similar"
    return None


def filter_pairs(
    prompts: list[Prompt], candidates: list[Candidate], judgments: list[Judgment], config: FilterConfig
) -> tuple[list[PreferencePair], FilterReport]:
    """Kept pairs (one per prompt at most) and the report of what was dropped and why."""
    prompt_text = {p.id: p.text for p in prompts}
    text = {(c.prompt_id, c.index): c.text for c in candidates}
    truncated = {(c.prompt_id, c.index) for c in candidates if c.truncated}
    dropped: Counter[str] = Counter()
    best: dict[str, PreferencePair] = {}
    for j in judgments:
        a, b = text[(j.prompt_id, j.index_a)], text[(j.prompt_id, j.index_b)]
        chosen, rejected = (a, b) if j.verdict == "A" else (b, a)
        score_chosen, score_rejected = (j.score_a, j.score_b) if j.verdict == "A" else (j.score_b, j.score_a)
        sim = similarity(a, b) if j.verdict != "tie" else 1.0
        chosen_index = j.index_a if j.verdict == "A" else j.index_b
        reason = drop_reason(chosen, rejected, j.verdict, sim, config, (j.prompt_id, chosen_index) in truncated)
        if reason:
            dropped[reason] += 1
            continue
        pair = PreferencePair(
            prompt_id=j.prompt_id,
            prompt=prompt_text[j.prompt_id],
            chosen=chosen,
            rejected=rejected,
            score_chosen=score_chosen,
            score_rejected=score_rejected,
            similarity=sim,
        )
        current = best.get(j.prompt_id)
        if current is None or _gap(pair) > _gap(current):
            if current is not None:
                dropped["not_most_decisive"] += 1
            best[j.prompt_id] = pair
        else:
            dropped["not_most_decisive"] += 1
    pairs = list(best.values())
    if config.max_length_ratio is not None:
        pairs, n_capped = cap_length_bias(pairs, config.max_length_ratio)
        dropped["length_bias_cap"] += n_capped
    report = FilterReport(
        n_judgments=len(judgments), n_kept=len(pairs), dropped=dict(dropped), validation=validate_pairs(pairs)
    )
    return pairs, report


def _gap(pair: PreferencePair) -> float:
    return pair.score_chosen - pair.score_rejected


def _words(text: str) -> int:
    return len(text.split())


def cap_length_bias(pairs: list[PreferencePair], max_ratio: float) -> tuple[list[PreferencePair], int]:
    """Drop the pairs with the largest chosen-minus-rejected length until the mean ratio is within the cap."""
    kept = sorted(pairs, key=lambda p: _words(p.chosen) - _words(p.rejected))
    removed = 0
    while kept and _length_ratio(kept) > max_ratio:
        kept.pop()
        removed += 1
    return kept, removed


def _length_ratio(pairs: list[PreferencePair]) -> float:
    chosen = np.mean([_words(p.chosen) for p in pairs])
    rejected = np.mean([_words(p.rejected) for p in pairs])
    return float(chosen / max(rejected, 1.0))


def validate_pairs(pairs: list[PreferencePair]) -> dict[str, float]:
    """Preference-data validation figures: length bias, duplicates, similarity distribution."""
    if not pairs:
        return {"n_pairs": 0}
    chosen_len = np.array([_words(p.chosen) for p in pairs], dtype=float)
    rejected_len = np.array([_words(p.rejected) for p in pairs], dtype=float)
    sims = np.array([p.similarity for p in pairs])
    prompt_counts = Counter(p.prompt for p in pairs)
    return {
        "n_pairs": len(pairs),
        "chosen_mean_words": float(chosen_len.mean()),
        "rejected_mean_words": float(rejected_len.mean()),
        "length_ratio": float(chosen_len.mean() / max(rejected_len.mean(), 1.0)),
        "chosen_longer_share": float((chosen_len > rejected_len).mean()),
        "duplicate_prompts": sum(1 for c in prompt_counts.values() if c > 1),
        "similarity_mean": float(sims.mean()),
        "similarity_median": float(np.median(sims)),
        "similarity_p90": float(np.quantile(sims, 0.9)),
        "very_different_share": float((sims < 0.1).mean()),
    }

