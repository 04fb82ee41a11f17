"""Detectors for the failure modes DPO data guides warn about.

Reads one response; returns which of ``FAILURE_MODES`` it shows. Cheap string
rules (no model), tuned to leave short, plain answers alone: "Paris is the
capital of France." shows none, and neither does a tidy three-item bullet list.
"""

from __future__ import annotations

import re
from collections import Counter

FAILURE_MODES = ("verbose", "sycophantic", "evasive", "repetitive", "degenerate")

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_PRAISE = "great|good|excellent|fantastic|wonderful|brilliant|insightful|thoughtful|interesting|fascinating|lovely"
# Flattery that opens an answer, after an optional interjection ("Oh, what a ...").
_FLATTERY = re.compile(
    r"^(?:(?:oh|wow|ah|well|hi|hello)\W+)*"
    rf"(?:(?:what|such) an? (?:{_PRAISE})"
    rf"|(?:{_PRAISE}) question"
    r"|i (?:really )?appreciate"
    r"|i love (?:this|that|your) (?:question|idea)"
    r"|thank(?:s| you) (?:so much )?for (?:asking|your (?:question|thoughtful))"
    r"|that(?:'s| is) (?:a really|such an? )"
    rf"|that(?:'s| is) an? (?:{_PRAISE}) (?:question|point|idea)"
    r"|you(?:'re| are) (?:absolutely|so|totally) right)"
)
# Hedges and refusals; a single one is enough for a short self-play answer.
_HEDGES = re.compile(
    r"\b(?:it(?:'s| is) (?:important|worth) (?:to )?not(?:e|ing)"
    r"|it(?:'s| is) worth (?:mentioning|remembering)"
    r"|it (?:really |all )?depends on"
    r"|there are (?:many|different|various) (?:perspectives|viewpoints|opinions)"
    r"|as an ai\b|as a language model"
    # Only refusals of the task: "I can't find a parking spot" in a written note is fine.
    r"|i(?: cannot| can't| can not| am unable to| am not able to|'m unable to|'m not able to) "
    r"(?:help|assist|provide|answer|give|offer|share|comply|fulfil|fulfill|discuss|do that|write that))"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_LIST_MARK = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s*")


def _normalise(text: str) -> str:
    """Lowercase with straight apostrophes, so patterns need one spelling."""
    return text.lower().replace("’", "'").replace("‘", "'")


def _words(text: str) -> list[str]:
    """Lowercased word tokens."""
    return _WORD.findall(_normalise(text))


def is_verbose(text: str, max_words: int = 150) -> bool:
    """More than ``max_words`` words."""
    return len(_words(text)) > max_words


def is_sycophantic(text: str) -> bool:
    """Opens with flattery of the question or the asker."""
    opening = _normalise(text).lstrip(" \t\n\"'*#>_-")
    return bool(_FLATTERY.match(opening))


def is_evasive(text: str) -> bool:
    """Hedges or refuses instead of answering."""
    return bool(_HEDGES.search(_normalise(text)))


def _sentences(text: str) -> list[str]:
    """Sentences and list items as normalised word strings, without list marks."""
    parts = (_LIST_MARK.sub("", s) for s in _SENTENCE_END.split(text))
    return [" ".join(_words(p)) for p in parts if _words(p)]


def is_repetitive(text: str, ngram: int = 4) -> bool:
    """Repeats whole sentences, or a large share of its word n-grams."""
    sentences = [s for s in _sentences(text) if len(s.split()) >= 3]
    repeats = len(sentences) - len(set(sentences))
    if repeats >= 3 or (repeats >= 1 and repeats / len(sentences) >= 0.25):
        return True
    words = _words(text)
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    if len(grams) < 12:
        return False
    return 1 - len(set(grams)) / len(grams) >= 0.3 or Counter(grams).most_common(1)[0][1] >= 4


def is_degenerate(text: str) -> bool:
    """Near-empty, a few words looping, or mostly symbols rather than letters."""
    words = _words(text)
    if len(words) < 3:
        return True
    head = words[:100]  # type/token ratio falls with length; compare on the same span
    if len(head) >= 10 and len(set(head)) / len(head) < 0.3:
        return True
    visible = [c for c in text if not c.isspace()]
    return sum(c.isalpha() for c in visible) / len(visible) < 0.4


def detect_failure_modes(text: str, verbose_words: int = 150) -> dict[str, bool]:
    """Which failure modes ``text`` shows, keyed by the names in ``FAILURE_MODES``."""
    return {
        "verbose": is_verbose(text, verbose_words),
        "sycophantic": is_sycophantic(text),
        "evasive": is_evasive(text),
        "repetitive": is_repetitive(text),
        "degenerate": is_degenerate(text),
    }
