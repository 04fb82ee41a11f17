"""A hand-built answer to a built-in prompt, meeting the constraints it is told to (all by default).

Used by tests/test_prompts.py (every built-in prompt can be met) and benchmarks/tie_share.py
(answers that meet a random part of their prompt's constraints, as a model's do). It reads only
constraint ids and kwargs, so it builds answers for an older prompt set too.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Collection

from infra.records import Prompt

EXTRA = ("Stay patient.", "Ask around.", "Keep going.", "Go slowly.", "Check twice.")
LETTER_WORDS = {"S": "So", "T": "Today", "W": "Well", "M": "Mostly", "P": "Plainly", "A": "Also", "B": "Basically",
                "C": "Clearly"}


def _n_words(parts: list[str]) -> int:
    return len(re.findall(r"\w+", " ".join(parts)))


def _keywords(kw: dict[str, dict]) -> list[str]:
    """The words to mention, those asked in order first."""
    ordered = list(kw.get("flywheel:keywords_in_order", {}).get("keywords", []))
    return ordered + [w for w in kw.get("keywords:existence", {}).get("keywords", []) if w not in ordered]


def _opening(kw: dict[str, dict]) -> str:
    """The first sentence: under 12 words, long enough for langdetect to call it English."""
    bold = kw.get("flywheel:bold_word", {}).get("word")
    shown = [f"**{w}**" if w == bold else w for w in _keywords(kw)]
    return f"Think about {' and '.join(shown)} first." if shown else "Check the details and plan."


def _sentences(kw: dict[str, dict], extra) -> tuple[list[str], bool]:
    """The answer's sentences, before any layout: keywords, counted words, numbers, asides, length;
    and whether a sentence limit made them one unclosed sentence."""
    sentences = [_opening(kw)]
    if (bold := kw.get("flywheel:bold_word", {}).get("word")) and bold not in _keywords(kw):
        sentences.append(f"Mind the **{bold}**.")
    if rule := kw.get("flywheel:number_between"):
        sentences.append(f"Allow {rule['low']} minutes.")
    if "flywheel:parenthetical" in kw:
        sentences.append("(Keep this one in mind).")
    sentence_rule = kw.get("length_constraints:number_sentences")
    if sentence_rule and sentence_rule["relation"] == "at least":
        sentences += [next(extra) for _ in range(sentence_rule["num_sentences"])]
    word_rule = kw.get("length_constraints:number_words")
    if word_rule and word_rule["relation"] == "at least":
        while _n_words(sentences) < word_rule["num_words"] + 12:
            sentences.append(next(extra))
    if {"change_case:english_capital", "change_case:english_lowercase"} & set(kw):  # for langdetect to call it English
        sentences.append("Take it one step at a time.")
    if rule := kw.get("flywheel:word_exactly"):
        ending = kw.get("flywheel:last_word", {}).get("word") == rule["word"]
        missing = rule["times"] - ending - sum(w.lower() == rule["word"].lower() for w in re.findall(r"\w+", " ".join(sentences)))
        if missing > 0:
            sentences.append(" and ".join([f"Use the {rule['word']}"] + [f"the {rule['word']}"] * (missing - 1)) + ".")
    # An opening phrase and a closing sentence may take two more.
    if sentence_rule and sentence_rule["relation"] == "less than" and max(len(sentences), _n_items(kw)) + 2 >= sentence_rule["num_sentences"]:
        return ["; ".join(s.rstrip(".") for s in sentences)], True  # one sentence, closed after the layout
    return sentences, False


def _n_items(kw: dict[str, dict]) -> int:
    """How many items (bullets, steps, paragraphs, sections) the layout asks for."""
    counts = [kw.get(k, {}).get(arg, 0) for k, arg in (
        ("detectable_format:number_bullet_lists", "num_bullets"), ("flywheel:marker_bullets", "count"),
        ("flywheel:numbered_steps", "count"), ("length_constraints:number_paragraphs", "num_paragraphs"),
        ("flywheel:divided_sections", "count"))]
    return max(counts)


def _items(sentences: list[str], n: int, extra) -> list[str]:
    """``sentences`` as ``n`` items, padded or the rest joined into the last."""
    sentences = sentences + [next(extra) for _ in range(max(0, n - len(sentences)))]
    return sentences[: n - 1] + [" ".join(sentences[n - 1 :])]


def _listed(kw: dict[str, dict], sentences: list[str], extra) -> list[str] | None:
    """The answer's lines when it is a list (bullets or numbered steps), else None."""
    if n := kw.get("detectable_format:number_bullet_lists", {}).get("num_bullets"):
        return [f"* {s}" for s in _items(sentences, n, extra)]
    if rule := kw.get("flywheel:marker_bullets"):
        return [f"{rule['marker']} {s}" for s in _items(sentences, rule["count"], extra)]
    if rule := kw.get("flywheel:numbered_steps"):
        return [f"{i}. {s}" for i, s in enumerate(_items(sentences, rule["count"], extra), 1)]
    return None


def _layout(kw: dict[str, dict], sentences: list[str], extra) -> str:
    listed = _listed(kw, sentences, extra)
    if rule := kw.get("flywheel:divided_sections"):
        parts = listed or sentences
        if len(parts) < rule["count"]:
            parts = _items(parts, rule["count"], extra)
        groups = [parts[: rule["count"] - 1], [parts[rule["count"] - 1 :]]]
        joiner = "\n" if listed else " "
        return f"\n{rule['divider']}\n".join([*groups[0], joiner.join(groups[1][0])])
    if listed:
        return "\n".join(listed)
    if n := kw.get("length_constraints:number_paragraphs", {}).get("num_paragraphs"):
        return "\n\n***\n\n".join(_items(sentences, n, extra))
    return " ".join(sentences)


def _ending(kw: dict[str, dict]) -> str:
    """What closes the answer: a last word, a question, a sign-off, a postscript or an end phrase."""
    last = kw.get("flywheel:last_word", {}).get("word")
    question = "flywheel:ends_with_question" in kw
    if last:
        return f" Have you got the {last}?" if question else f" Keep the {last}."
    if question:
        return " Does that help?"
    if rule := kw.get("flywheel:sign_off"):
        return f"\n{rule['closing']} from {rule['name']}"
    if "detectable_content:postscript" in kw:
        return "\n\nP.S. Thanks."
    if rule := kw.get("startend:end_checker"):
        return " " + rule["end_phrase"]
    return ""


def _opened(kw: dict[str, dict], body: str) -> str:
    """``body`` behind what opens the answer: placeholders, a paragraph's letter, a title, a heading, a phrase."""
    if n := kw.get("detectable_content:number_placeholders", {}).get("num_placeholders"):
        body = f"Dear {' '.join(['[name]', '[place]', '[date]'][:n])}:\n{body}"
    if rule := kw.get("flywheel:paragraph_initial"):
        body = f"{LETTER_WORDS[rule['letter'].upper()]} here goes:\n{body}"
    if "detectable_format:title" in kw:
        body = f"<<Quick Guide>>\n{body}"
    if "flywheel:heading_line" in kw:
        body = f"Quick Pointers\n{body}"
    if rule := kw.get("flywheel:starts_with"):
        body = f"{rule['phrase']}\n{body}"
    return body


def build_answer(prompt: Prompt, meet: Collection[str] | None = None, rng: random.Random | None = None) -> str:
    """An answer to ``prompt`` meant to meet the constraints whose ids are in ``meet`` (default: all);
    ``rng`` varies its filler."""
    kw = {c.id: c.kwargs for c in prompt.constraints if meet is None or c.id in meet}
    fillers = list(EXTRA) if rng is None else rng.sample(EXTRA, len(EXTRA))
    extra = iter(fillers * 20)
    if "detectable_format:json_format" in kw:
        return json.dumps({"answer": " ".join(["plan ahead", *_keywords(kw)])})
    sentences, merged = _sentences(kw, extra)
    if merged:
        extra = iter([f.rstrip(".") for f in fillers] * 20)  # padding that adds no sentence
    body, ending = _layout(kw, sentences, extra), _ending(kw)
    if merged:
        # The whole answer one sentence after the opening phrase: a closing sentence joins it.
        body += f"; {ending[1].lower()}{ending[2:]}" if ending.startswith(" ") else "." + ending
    else:
        body += ending
    body = _opened(kw, body)
    if "startend:quotation" in kw:
        body = f'"{body}"'
    if "change_case:english_lowercase" in kw:
        body = body.lower()
    if "change_case:english_capital" in kw:
        body = body.upper()
    return body
