"""Flywheel instruction types about the answer's layout: lists, sections, headings, how it opens and closes.

Each check reads only the response and the type's kwargs; markdown that opens a line (``#``,
``>``, bullets, quotes, emphasis) is looked past where the check is about words.
"""

from __future__ import annotations

import re

from tasks.verifiable import ifeval_ids as ifeval
from tasks.verifiable.base import closing_text, instruction, lines, paragraphs, without_opener, words

_ANY_BULLET = re.compile(r"^\s*([*+•-])\s+\S")


def _marker_bullets(response: str, marker: str, count: int) -> bool:
    markers = [m.group(1) for line in response.splitlines() if (m := _ANY_BULLET.match(line))]
    return len(markers) == count and set(markers) == {marker}


instruction(
    id="flywheel:marker_bullets",
    kwargs={"marker": str, "count": int},
    check=_marker_bullets,
    describe=lambda marker, count: f'Give exactly {count} bullet points, each on its own line starting with "{marker} ", and no other bullets.',
    draw=lambda rng, ctx: {"marker": rng.choice(("-", "+")), "count": rng.choice((2, 3, 4, 5))},
    valid=lambda marker, count: None if marker in ("-", "+", "•") and 1 <= count <= 20 else "marker must be -, + or •; count 1-20",
    # Each bullet is a sentence or more, which makes a sentence limit a trap (as for IFEval's bullets).
    conflicts={ifeval.BULLETS, ifeval.PARAGRAPHS, ifeval.QUOTATION, ifeval.SENTENCES, "flywheel:numbered_steps"},
)

_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s+\S")


def _numbered_steps(response: str, count: int) -> bool:
    numbers = [int(m.group(1)) for line in response.splitlines() if (m := _NUMBERED.match(line))]
    return numbers == list(range(1, count + 1))


instruction(
    id="flywheel:numbered_steps",
    kwargs={"count": int},
    check=_numbered_steps,
    describe=lambda count: f'Lay the answer out as exactly {count} numbered steps, "1." to "{count}.", each on its own line.',
    draw=lambda rng, ctx: {"count": rng.choice((2, 3, 3, 4, 5))},
    valid=lambda count: None if 1 <= count <= 20 else "count must be 1-20",
    # punkt counts "1." as a sentence of its own, which makes a sentence limit a trap.
    conflicts={ifeval.BULLETS, ifeval.PARAGRAPHS, ifeval.QUOTATION, ifeval.SENTENCES, "flywheel:no_digits"},
)


def _paragraph_initial(response: str, letter: str) -> bool:
    firsts = [words(without_opener(p)) for p in paragraphs(response)]
    firsts = [w[0] for w in firsts if w]
    return bool(firsts) and all(w[0].lower() == letter.lower() for w in firsts)


instruction(
    id="flywheel:paragraph_initial",
    kwargs={"letter": str},
    check=_paragraph_initial,
    describe=lambda letter: f'Start every paragraph with a word beginning with the letter "{letter}".',
    draw=lambda rng, ctx: {"letter": rng.choice("STWMPABC")},
    valid=lambda letter: None if len(letter) == 1 and letter.isalpha() else "letter must be a single letter",
    conflicts={"flywheel:heading_line", "flywheel:starts_with", "flywheel:sign_off", "flywheel:marker_bullets",
               "flywheel:numbered_steps", ifeval.POSTSCRIPT, ifeval.TITLE, ifeval.PARAGRAPHS},
)


def _heading_line(response: str, max_words: int) -> bool:
    body = lines(response)
    if len(body) < 2:
        return False
    head = words(body[0].strip().lstrip("#").strip().strip("*_"))
    return 1 <= len(head) <= max_words and all(w[0].isupper() or w[0].isdigit() for w in head)


instruction(
    id="flywheel:heading_line",
    kwargs={"max_words": int},
    check=_heading_line,
    describe=lambda max_words: f"Begin with a heading of at most {max_words} words on a line of its own, "
    "every word capitalised, then the answer below it.",
    draw=lambda rng, ctx: {"max_words": rng.choice((4, 5, 6))},
    valid=lambda max_words: None if 1 <= max_words <= 20 else "max_words must be 1-20",
    conflicts={ifeval.LOWERCASE, ifeval.TITLE, ifeval.QUOTATION, ifeval.PARAGRAPHS, "flywheel:starts_with"},
)


def _divided_sections(response: str, count: int, divider: str) -> bool:
    sections = re.split(rf"^[ \t]*{re.escape(divider)}[ \t]*$", response, flags=re.MULTILINE)
    return len(sections) == count and all(words(s) for s in sections)


instruction(
    id="flywheel:divided_sections",
    kwargs={"count": int, "divider": str},
    check=_divided_sections,
    describe=lambda count, divider: f"Split the answer into exactly {count} sections, with a line holding only {divider} between them.",
    draw=lambda rng, ctx: {"count": rng.choice((2, 2, 3)), "divider": rng.choice(("~~~", "===", "%%%"))},
    valid=lambda count, divider: None if 2 <= count <= 10 and not words(divider) else "count must be 2-10; divider without letters",
    conflicts={ifeval.PARAGRAPHS, ifeval.QUOTATION},
)

CLOSINGS = ("Warm regards", "Best wishes", "Take care", "Talk soon")
NAMES = ("Sam", "Alex", "Priya", "Tom", "Ana")


def _sign_off(response: str, closing: str, name: str) -> bool:
    body = lines(closing_text(response))
    last = body[-1].strip().strip("*_").rstrip(".!").strip() if body else ""
    return len(body) >= 2 and " ".join(last.split()).lower() == f"{closing} from {name}".lower()


instruction(
    id="flywheel:sign_off",
    kwargs={"closing": str, "name": str},
    check=_sign_off,
    describe=lambda closing, name: f'End with a last line of its own that reads exactly "{closing} from {name}".',
    draw=lambda rng, ctx: {"closing": rng.choice(ctx.usable(CLOSINGS)), "name": rng.choice(NAMES)},
    conflicts={ifeval.END_PHRASE, ifeval.POSTSCRIPT, ifeval.QUOTATION, "flywheel:ends_with_question", "flywheel:last_word"},
)

instruction(
    id="flywheel:ends_with_question",
    check=lambda response: closing_text(response).endswith("?"),
    describe=lambda: "Finish with a question to the reader: the answer's last sentence must end with a question mark.",
    draw=lambda rng, ctx: {},
    conflicts={ifeval.END_PHRASE, ifeval.POSTSCRIPT},
)

OPENINGS = ("Here is the short version:", "Good question.", "Let me explain.", "Quick answer:", "Happy to help.")


def _starts_with(response: str, phrase: str) -> bool:
    opening = " ".join(without_opener(response.lstrip()).split())
    return opening.lower().startswith(" ".join(phrase.split()).lower())


instruction(
    id="flywheel:starts_with",
    kwargs={"phrase": str},
    check=_starts_with,
    describe=lambda phrase: f'Begin your answer with the exact words "{phrase}" and go on from there.',
    draw=lambda rng, ctx: {"phrase": rng.choice(ctx.usable(OPENINGS))},
    conflicts={ifeval.TITLE},
    weight=2,
)


def _parenthetical(response: str, min_words: int) -> bool:
    return any(len(words(inside)) >= min_words for inside in re.findall(r"\(([^()]*)\)", response))


instruction(
    id="flywheel:parenthetical",
    kwargs={"min_words": int},
    check=_parenthetical,
    describe=lambda min_words: f"Include at least one aside in round brackets (like this one) of {min_words} words or more.",
    draw=lambda rng, ctx: {"min_words": rng.choice((2, 3, 4))},
    valid=lambda min_words: None if 1 <= min_words <= 30 else "min_words must be 1-30",
)
