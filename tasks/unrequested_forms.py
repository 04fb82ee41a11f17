"""Forms nobody asked for: how many answers carry a <<title>> or a markdown heading, a "P.S.", or
*highlights* on prompts that did not ask for them (IFEval's detectable_format:title,
detectable_content:postscript and detectable_format:number_highlighted_sections, or the prompt's
own words). A loop trained on a checker of those forms learns to add them everywhere; the count,
for round 0 and the champion, is what the proof reads (``count_unrequested_forms``).

The ``stuffed`` failure mode (tasks/failure_modes.py) flags an answer with any stuffed form; this
counts each form apart, over a set of answers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from infra.records import Completion, Prompt
from tasks.failure_modes import _ITALIC, _PS, _TITLE

FORMS = ("title", "heading", "postscript", "highlight")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)  # a markdown heading line
# Which constraint ids, or words of the prompt, ask for each form.
_ASKED_BY_ID = {"title": "detectable_format:title", "heading": "detectable_format:title",
                "postscript": "detectable_content:postscript", "highlight": "detectable_format:number_highlighted_sections"}
_ASKED_BY_WORDS = {"title": r"<<|\btitle|\bheading|\bheader", "heading": r"<<|\btitle|\bheading|\bheader",
                   "postscript": r"p\.\s?s\b|postscript", "highlight": r"highlight|\bitalic|\bemphasi|markdown"}
_FOUND = {"title": _TITLE, "heading": _HEADING, "postscript": _PS, "highlight": _ITALIC}


def asked_forms(prompt: Prompt) -> set[str]:
    """The forms ``prompt`` asks for, by its constraints or in its words."""
    ids = {c.id for c in prompt.constraints}
    text = prompt.text.lower()
    return {form for form in FORMS if _ASKED_BY_ID[form] in ids or re.search(_ASKED_BY_WORDS[form], text)}


def unrequested_forms(response: str, prompt: Prompt) -> set[str]:
    """The forms ``response`` carries that ``prompt`` did not ask for."""
    return {form for form in FORMS if form not in asked_forms(prompt) and _FOUND[form].search(response)}


def count_unrequested_forms(completions: Iterable[Completion], prompts: dict[str, Prompt]) -> dict[str, int]:
    """How many of ``completions`` (answers to ``prompts``, by id) carry each form unasked, carry any
    ("any"), and how many were read ("answers"); an answer whose prompt is unknown is not read."""
    counts = dict.fromkeys((*FORMS, "any", "answers"), 0)
    for completion in completions:
        prompt = prompts.get(completion.prompt_id)
        if prompt is None:
            continue
        found = unrequested_forms(completion.text, prompt)
        counts["answers"] += 1
        counts["any"] += bool(found)
        for form in found:
            counts[form] += 1
    return counts
