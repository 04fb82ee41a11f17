"""Flywheel instruction types about the answer's words: which appear, how often, in what order, how long.

Words are matched whole and without regard to case ("Water" counts as "water", "watering" does not).
"""

from __future__ import annotations

import re

from tasks.verifiable import ifeval_ids as ifeval
from tasks.verifiable.base import DrawContext, instruction, sentences, words


def _count(response: str, word: str) -> int:
    return sum(w.lower() == word.lower() for w in words(response))


def _single_word(word: str) -> str | None:
    return None if len(words(word)) == 1 and words(word)[0] == word else f"{word!r} is not a single word"


instruction(
    id="flywheel:last_word",
    kwargs={"word": str},
    check=lambda response, word: bool(found := words(response)) and found[-1].lower() == word.lower(),
    describe=lambda word: f'Make "{word}" the very last word of your answer.',
    draw=lambda rng, ctx: {"word": rng.choice(ctx.keywords)},
    valid=lambda word: _single_word(word),
    conflicts={ifeval.END_PHRASE, ifeval.POSTSCRIPT},
    weight=2,
)

instruction(
    id="flywheel:word_exactly",
    kwargs={"word": str, "times": int},
    check=lambda response, word, times: _count(response, word) == times,
    describe=lambda word, times: f'Use the word "{word}" exactly {times} times.',
    draw=lambda rng, ctx: {"word": rng.choice(ctx.keywords), "times": rng.choice((2, 3))},
    valid=lambda word, times: _single_word(word) or (None if 1 <= times <= 20 else "times must be 1-20"),
)

_NUMBER = re.compile(r"(?<![\d.])\d+(?:\.\d+)?(?![\d])")


def _number_between(response: str, low: int, high: int) -> bool:
    return any(low <= float(n) <= high for n in _NUMBER.findall(response.replace(",", "")))


def _draw_range(rng, ctx: DrawContext) -> dict[str, int]:
    low = rng.choice((2, 3, 5, 10, 20))
    return {"low": low, "high": low + rng.choice((5, 10, 20))}


instruction(
    id="flywheel:number_between",
    kwargs={"low": int, "high": int},
    check=_number_between,
    describe=lambda low, high: f"Include a number written in digits from {low} to {high}.",
    draw=_draw_range,
    valid=lambda low, high: None if 0 <= low < high else "need 0 <= low < high",
    conflicts={"flywheel:no_digits"},
)

instruction(
    id="flywheel:short_sentences",
    kwargs={"max_words": int},
    check=lambda response, max_words: bool(sentences(response)) and all(len(words(s)) < max_words for s in sentences(response)),
    describe=lambda max_words: f"Keep every sentence under {max_words} words.",
    draw=lambda rng, ctx: {"max_words": rng.choice((12, 15, 20))},
    valid=lambda max_words: None if 3 <= max_words <= 100 else "max_words must be 3-100",
)


def _longest_needed(ctx: DrawContext) -> int:
    """The longest word the topic may need: its subject's and its keywords'."""
    return max(len(w) for w in [*ctx.keywords, *words(ctx.subject)])


instruction(
    id="flywheel:max_word_length",
    kwargs={"letters": int},
    check=lambda response, letters: all(len(w) <= letters for w in words(response)),
    describe=lambda letters: f"Use no word longer than {letters} letters.",
    draw=lambda rng, ctx: {"letters": max(_longest_needed(ctx), rng.choice((10, 11, 12)))},
    valid=lambda letters: None if 4 <= letters <= 40 else "letters must be 4-40",
)


def _in_order(response: str, keywords: list[str]) -> bool:
    lowered = [w.lower() for w in words(response)]
    firsts = [lowered.index(k.lower()) if k.lower() in lowered else -1 for k in keywords]
    return -1 not in firsts and firsts == sorted(firsts) and len(set(firsts)) == len(firsts)


def _ordered_list(keywords: list[str]) -> str:
    quoted = [f'"{k}"' for k in keywords]
    return ", then ".join(quoted)


instruction(
    id="flywheel:keywords_in_order",
    kwargs={"keywords": list},
    check=_in_order,
    describe=lambda keywords: f"Mention {_ordered_list(keywords)}, first mentions in that order.",
    draw=lambda rng, ctx: {"keywords": rng.sample(ctx.keywords, min(len(ctx.keywords), rng.choice((2, 3))))},
    valid=lambda keywords: next(filter(None, map(_single_word, keywords)), None) or (
        None if len(set(k.lower() for k in keywords)) == len(keywords) >= 2 else "need two or more different keywords"),
)

instruction(
    id="flywheel:no_digits",
    check=lambda response: not re.search(r"\d", response),
    describe=lambda: "Spell every number out in words: no digits anywhere.",
    draw=lambda rng, ctx: {},
    conflicts={"flywheel:number_between"},
)


def _bold(response: str, word: str) -> bool:
    return bool(re.search(rf"\*\*\s*{re.escape(word)}\s*\*\*", response, flags=re.IGNORECASE))


instruction(
    id="flywheel:bold_word",
    kwargs={"word": str},
    check=_bold,
    describe=lambda word: f'Put the word "{word}" in bold, written **{word}**, at least once.',
    draw=lambda rng, ctx: {"word": rng.choice(ctx.keywords)},
    valid=lambda word: _single_word(word),
)

instruction(
    id="flywheel:no_exclamation",
    check=lambda response: "!" not in response,
    describe=lambda: "Do not use any exclamation marks.",
    draw=lambda rng, ctx: {},
    weight=1,
)
