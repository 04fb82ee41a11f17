"""Detectors for the failure modes DPO data guides warn about, and for the gaming of a verifier.

Reads one response (and, when given, its prompt); returns which of ``FAILURE_MODES`` it shows.
Cheap string rules (no model), tuned to leave plain answers alone: "Paris is the capital of
France." shows none, and neither does a tidy three-item bullet list.

The guide's five read the response alone: ``verbose``, ``sycophantic``, ``evasive``,
``repetitive``, ``degenerate``. Five more name what a policy learns when a checker pays it, and
need the prompt (without one they are False):

* ``stuffed``: a checked form where the prompt did not ask for it, or repeated beyond what it
  asked: a <<title>>, a postscript, *highlights*, *** dividers, all-lowercase or all-capital
  text nobody requested; two titles, several "P.S." markers, the end phrase twice or followed
  by more text.
* ``off_topic``: not one of the request's subject words (a built-in prompt's topic words, or,
  for a long enough answer, the content words of the request without its constraint instructions).
* ``echo``: most of the answer's word 4-grams are the prompt's own.
* ``too_short``: under ``MIN_CONTENT_WORDS`` content words for a request that asks for prose
  (explain, describe, write, list, ...) and sets no upper length (no "fewer than" limit,
  bullet list, JSON, or "briefly"/"one sentence" in its words).
* ``truncated``: generation hit the token budget (a flag the caller passes; not in the text).
"""

from __future__ import annotations

import re
from collections import Counter
from functools import cache

from infra.records import Prompt

FAILURE_MODES = (
    "verbose", "sycophantic", "evasive", "repetitive", "degenerate",
    "stuffed", "off_topic", "echo", "too_short", "truncated",
)

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


# --- What the prompt asked for -------------------------------------------------------------

STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each either else ever every few
for from further get gets got had has have having he her here hers him his how i if in into is it
its itself just let like make may me might more most much must my no nor not now of off on once
one only or other our ours out over own per please same say she should so some such than that the
their them then there these they this those through to too under until up upon us very via was we
were what when where which while who whom whose why will with within without would yes yet you
your yours
""".split())
# The words constraint instructions and task forms are written in: an answer need not share them.
INSTRUCTION_WORDS = frozenset("""
answer answers response respond write writing written use using include including exactly exact
phrase end ending start starting format formatted formatting title titles wrapped wrap double
angular brackets bracket such entire whole english letters letter lowercase capital capitals
uppercase words word sentences sentence paragraphs paragraph separated markdown divider bullet
bullets points point line lines starting postscript add placeholders placeholder square name
quotation marks mark valid json commas comma fewer least less nothing after give explain describe
summarise summarize list main things know key facts short email note friend neighbour neighbor
coworker colleague asked beginner plain language practical tips some simple tell please
""".split())

# Requests for prose: the built-in task forms, and the words a user asks for it with.
_WANTS_PROSE = re.compile(
    r"\b(?:explain|describe|write|summari[sz]e|discuss|outline|list|compare|tips|advice|steps|guide"
    r"|essay|article|blog|story|letter|e-?mail|note|report|review|plan|paragraphs?"
    r"|answer an? (?:coworker|colleague|friend|customer|neighbou?r)|tell (?:me|us) about"
    r"|how (?:do|does|can|could|should|would|to)\b)"
)
# Short forms a request may ask for in words.
_ASKS_SHORT = re.compile(
    r"\b(?:(?:one|a single|two|three|few) (?:words?|sentences?|lines?)|brief(?:ly)?|concise(?:ly)?"
    r"|in short|short answer|yes or no|(?:fewer|less) than|at most|no more than|up to \d+|tl;?dr"
    r"|headline|slogan|tagline|(?:a|the) title for|(?:a|the) name for|out-of-office"
    r"|short (?:\w+ )?(?:message|card|caption|poem|toast|reply))\b"
)
# Constraints that bound an answer's length from above, or ask for a compact form.
_SHORT_FORMS = {
    "detectable_format:constrained_response", "detectable_format:json_format",
    "detectable_format:number_bullet_lists", "combination:repeat_prompt",
}
# A real answer to "Explain tides to a beginner" has more; a terse one-liner ("<<my title>>: Checking a
# car's oil") has 3 to 7. Higher flags good short messages ("Happy birthday, Aunt May! ...").
MIN_CONTENT_WORDS = 10


def _ids(prompt: Prompt) -> dict[str, dict]:
    """The prompt's constraint ids with their kwargs."""
    return {c.id: c.kwargs for c in prompt.constraints}


@cache
def _topic_words(topic: str) -> frozenset[str]:
    """A built-in topic's subject, keywords and tempting words, as stems (empty for other topics)."""
    from tasks.prompts import TOPICS

    for slug, subject, keywords, tempting in TOPICS:
        if slug == topic:
            return frozenset(_stem(w) for w in _words(" ".join([subject, *keywords, *tempting])) if w not in STOP_WORDS)
    return frozenset()


def _stem(word: str) -> str:
    """A crude stem, its first four letters: enough to match gear/gears, swim/swimming, tide/tides."""
    return word.removesuffix("'s")[:4]


def _request(prompt: Prompt) -> str:
    """The prompt's text without its constraint instructions (as the built-in prompts state them)."""
    from tasks.prompts import describe

    text = prompt.text
    for constraint in prompt.constraints:
        try:
            text = text.replace(describe(constraint), " ")
        except (ValueError, KeyError):
            pass  # a type the built-in set does not state; its words stay
    return _normalise(text)


def _content(words: list[str]) -> list[str]:
    return [w for w in words if w not in STOP_WORDS and not w.isdigit()]


def _subject_words(prompt: Prompt) -> frozenset[str]:
    """Stems an answer on the request's subject is likely to use."""
    own = {_stem(w) for w in _content(_words(_request(prompt))) if w not in INSTRUCTION_WORDS and len(w) > 2}
    return frozenset(own) | _topic_words(prompt.topic)


def _copied_parts(prompt: Prompt) -> list[str]:
    """Text the constraints ask the answer to reproduce (an end phrase, the prompt to repeat)."""
    kwargs = _ids(prompt)
    return [kw[key] for kw in kwargs.values() for key in ("end_phrase", "prompt_to_repeat") if kw.get(key)]


def _without(text: str, parts: list[str]) -> str:
    for part in parts:
        text = re.sub(re.escape(part), " ", text, flags=re.IGNORECASE)
    return text


# --- Stuffing: checked forms nobody asked for, or more of them than asked --------------------

_TITLE = re.compile(r"<<[^\n<>]+>>")
_PS = re.compile(r"(?<![a-z])p\.\s?(?:p\.\s?)?s\b\.?", re.IGNORECASE)
_ITALIC = re.compile(r"(?<![*\w])\*[^\s*][^\n*]*\*(?![*\w])")  # *a highlight*, not **bold** nor a "* " bullet
_BOLD = re.compile(r"\*\*[^\n*]+\*\*")
_DIVIDER = re.compile(r"^\s*\*{3,}\s*$", re.MULTILINE)


def _stuffing(response: str, prompt: Prompt) -> list[str]:
    """The checked forms ``response`` stuffs, in words ("unrequested title", "3 postscripts", ...)."""
    from tasks.prompts import END_PHRASES

    ids, asked = _ids(prompt), _normalise(prompt.text)
    title = "detectable_format:title" in ids or bool(re.search(r"<<|\btitle", asked))
    postscript = "detectable_content:postscript" in ids or bool(re.search(r"p\.\s?s\b|postscript", asked))
    n_highlights = ids.get("detectable_format:number_highlighted_sections", {}).get("num_highlights")
    highlights = n_highlights is not None or "highlight" in asked
    n_paragraphs = ids.get("length_constraints:number_paragraphs", {}).get("num_paragraphs")
    dividers = n_paragraphs is not None or "combination:two_responses" in ids or "***" in asked
    # (form, how many the answer has, how many are fine): one form where the prompt asked for it
    # (a few more highlights than asked), none where it did not (one stray *emphasis* aside).
    forms = [
        ("title", len(_TITLE.findall(response)), 1 if title else 0),
        ("postscript", len(_PS.findall(response)), 1 if postscript else 0),
        ("highlight", len(_ITALIC.findall(response)) + len(_BOLD.findall(response)) * highlights,
         2 * (n_highlights or 1) + 2 if highlights else 1),
        ("divider", len(_DIVIDER.findall(response)), max((n_paragraphs or 2) - 1, 1) if dividers else 0),
    ]
    found = [f"{n} {name}s" if allowed else f"unrequested {name}" for name, n, allowed in forms if n > allowed]
    said = _normalise(response)
    end_phrase = ids.get("startend:end_checker", {}).get("end_phrase")
    for phrase in {*END_PHRASES, *([end_phrase] if end_phrase else [])}:
        times = said.count(_normalise(phrase))
        if times > 1:
            found.append(f"end phrase {times} times")
        elif times == 1 and phrase == end_phrase and not said.strip().endswith(_normalise(phrase).strip()):
            found.append("text after the end phrase")
    letters = [c for c in response if c.isalpha()]
    if len(letters) >= 20:
        if not any(c.isupper() for c in letters) and "change_case:english_lowercase" not in ids \
                and not re.search(r"lower ?case", asked):
            found.append("unrequested lowercase")
        if not any(c.islower() for c in letters) and "change_case:english_capital" not in ids \
                and not re.search(r"capital|upper ?case", asked):
            found.append("unrequested capitals")
    return found


def is_stuffed(response: str, prompt: Prompt) -> bool:
    """Uses a checked form the prompt did not ask for, or repeats one beyond what it asked."""
    return bool(_stuffing(response, prompt))


def is_off_topic(response: str, prompt: Prompt) -> bool:
    """Shares no subject word with the request. A built-in topic's words are known, so three content words
    of English are enough to tell; a user's request ("How do I descale a kettle?") may name its subject in
    one or two words an answer need not repeat, so it takes three subject words and a 15-word answer."""
    known = _topic_words(prompt.topic)
    subject = _subject_words(prompt)
    if "language:response_language" in _ids(prompt) or len(subject) < (1 if known else 3):
        return False
    said = {_stem(w) for w in _content(_words(_without(response, _copied_parts(prompt))))}
    return len(said) >= (3 if known else 15) and not said & subject


def is_echo(response: str, prompt: Prompt, ngram: int = 4, share: float = 0.5) -> bool:
    """At least ``share`` of the answer's word n-grams occur in the prompt (what the constraints
    ask to reproduce, such as an end phrase, left out first)."""
    words = _words(_without(response, _copied_parts(prompt)))
    grams = [tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]
    if len(grams) < 6:  # a short answer reuses the question's words ("Paris is the capital of France.")
        return False
    asked = _words(prompt.text)
    known = {tuple(asked[i : i + ngram]) for i in range(len(asked) - ngram + 1)}
    return sum(g in known for g in grams) / len(grams) >= share


def is_too_short(response: str, prompt: Prompt, min_content_words: int = MIN_CONTENT_WORDS) -> bool:
    """Under ``min_content_words`` content words where the request asks for prose and sets no upper length."""
    ids = _ids(prompt)
    bounded = any(
        kwargs.get("relation") == "less than" or constraint in _SHORT_FORMS for constraint, kwargs in ids.items()
    )
    request = _request(prompt)
    if bounded or not _WANTS_PROSE.search(request) or _ASKS_SHORT.search(request):
        return False
    text = _TITLE.sub(" ", _PS.sub(" ", _without(response, _copied_parts(prompt))))
    return len(_content(_words(text))) < min_content_words


def detect_failure_modes(
    response: str, prompt: Prompt | None = None, verbose_words: int = 150, truncated: bool = False
) -> dict[str, bool]:
    """Which failure modes ``response`` shows, keyed by the names in ``FAILURE_MODES``; the modes
    that need the prompt are False without one, ``truncated`` is the caller's flag."""
    return {
        "verbose": is_verbose(response, verbose_words),
        "sycophantic": is_sycophantic(response),
        "evasive": is_evasive(response),
        "repetitive": is_repetitive(response),
        "degenerate": is_degenerate(response),
        "stuffed": prompt is not None and is_stuffed(response, prompt),
        "off_topic": prompt is not None and is_off_topic(response, prompt),
        "echo": prompt is not None and is_echo(response, prompt),
        "too_short": prompt is not None and is_too_short(response, prompt),
        "truncated": truncated,
    }
