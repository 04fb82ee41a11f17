"""The self-play prompt set: everyday instructions carrying IFEval constraints.

Reads: nothing for the built-in set; a JSONL file for source ``jsonl``.
Writes: nothing; returns ``Prompt`` records, each marked ``train`` or ``eval``.

The built-in set crosses ~100 topics with eight task forms and draws one to four
compatible constraints per prompt (``CONSTRAINT_COUNTS``) from a fixed seed, e.g. "Write a
short note to a neighbour about the parking rules on our street. Answer in fewer than 60
words. Do not use the word "car". Make "permit" the very last word of your answer." The
types are IFEval's (``IFEVAL_WEIGHTS``) and Flywheel's own (``flywheel:`` ids,
tasks/verifiable/). Each constraint is stated in plain words that its checker kwargs encode
exactly. Train and eval are split by topic, so the held-out set shares no prompt and no topic
with the training pool.

Some constraint types are *unseen* (``prompts.unseen_types``; by default a quarter of the
generator's IFEval types, drawn by seed; the ``flywheel:`` types are always trained on): no
training prompt carries one, and about half the held-out prompts do, so the eval can tell
gains that generalise from gains on the types trained on.

Each round trains on prompts no earlier round saw (``round_prompts``): the training pool is
shuffled once by seed and dealt out in consecutive slices; the held-out set is the same every round.

``tasks/data/unconstrained.jsonl`` holds everyday requests with nothing to check, written apart
from the templates; the eval answers them too (length, failure modes, a model judge's verdicts).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from infra.records import Constraint, Prompt
from infra.registry import Registry
from infra.settings import PromptsConfig
from tasks import verifiable
from tasks.constraints import ensure_punkt, known_constraints, validate_constraint

# (slug, subject, keywords to require, tempting words to forbid). Forbidden words never
# occur in the subject, so a prompt never forbids what it asks about.
TOPICS: tuple[tuple[str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("parking-rules", "the parking rules on our street", ("space", "permit", "evening"), ("car", "vehicle")),
    ("bicycle-gears", "bicycle gears", ("chain", "pedal", "hill"), ("speed", "easy")),
    ("composting", "composting kitchen scraps", ("soil", "worms", "peel"), ("bin", "garden")),
    ("grocery-budget", "saving money on groceries", ("list", "price", "season"), ("cheap", "coupon")),
    ("houseplants", "keeping houseplants alive", ("water", "light", "pot"), ("green", "leaves")),
    ("sleep", "getting better sleep", ("bedtime", "screen", "dark"), ("tired", "night")),
    ("bread", "baking a simple loaf of bread", ("flour", "yeast", "oven"), ("dough", "knead")),
    ("rainbows", "why rainbows appear", ("sunlight", "water", "angle"), ("rain", "prism")),
    ("tides", "ocean tides", ("moon", "gravity", "shore"), ("water", "wave")),
    ("recycling", "sorting household recycling", ("plastic", "paper", "glass"), ("waste", "trash")),
    ("job-interview", "preparing for a job interview", ("questions", "research", "practice"), ("nervous", "boss")),
    ("public-speaking", "speaking in front of a group", ("audience", "breath", "notes"), ("nervous", "fear")),
    ("kitchen-burn", "treating a minor kitchen burn", ("cool", "water", "skin"), ("ice", "pain")),
    ("daily-walk", "the benefits of a daily walk", ("heart", "mood", "steps"), ("exercise", "health")),
    ("tea", "brewing a good cup of tea", ("leaves", "kettle", "minutes"), ("hot", "milk")),
    ("coffee-grinding", "grinding coffee beans at home", ("grinder", "coarse", "fresh"), ("taste", "cup")),
    ("passwords", "choosing strong passwords", ("length", "manager", "unique"), ("secure", "hacker")),
    ("phishing", "spotting phishing emails", ("link", "sender", "urgent"), ("scam", "click")),
    ("photo-backups", "backing up family photos", ("cloud", "drive", "copies"), ("lose", "phone")),
    ("library", "using the local library", ("card", "borrow", "books"), ("free", "read")),
    ("moving-house", "packing for a house move", ("boxes", "label", "tape"), ("heavy", "truck")),
    ("dog-heat", "walking a dog in hot weather", ("paws", "shade", "water"), ("sun", "leash")),
    ("litter-box", "keeping a cat's litter box clean", ("scoop", "daily", "smell"), ("dirty", "mess")),
    ("bird-feeder", "setting up a bird feeder", ("seeds", "window", "squirrels"), ("garden", "food")),
    ("bus-timetable", "reading a bus timetable", ("route", "stop", "times"), ("late", "ticket")),
    ("train-tickets", "booking cheap train tickets", ("advance", "return", "seat"), ("price", "money")),
    ("packing-light", "packing light for a weekend trip", ("bag", "layers", "toiletries"), ("suitcase", "clothes")),
    ("jet-lag", "coping with jet lag", ("sleep", "daylight", "water"), ("tired", "flight")),
    ("spending", "tracking monthly spending", ("income", "categories", "receipts"), ("money", "budget")),
    ("emergency-fund", "building an emergency fund", ("savings", "months", "account"), ("money", "bank")),
    ("thermostat", "setting a home thermostat in winter", ("degrees", "heating", "bill"), ("warm", "cold")),
    ("warm-house", "keeping a house warm cheaply", ("curtains", "heating", "doors"), ("cold", "money")),
    ("dripping-tap", "fixing a dripping tap", ("washer", "valve", "wrench"), ("water", "leak")),
    ("light-bulbs", "choosing energy-saving light bulbs", ("watts", "lumens", "lifespan"), ("bright", "cheap")),
    ("laundry", "washing clothes without shrinking them", ("label", "temperature", "cold"), ("hot", "dryer")),
    ("ironing", "ironing a shirt", ("collar", "sleeves", "steam"), ("creases", "hot")),
    ("coffee-stain", "removing a coffee stain", ("blot", "soap", "cold"), ("rub", "bleach")),
    ("rice", "cooking fluffy rice", ("rinse", "pot", "lid"), ("water", "sticky")),
    ("vegetable-soup", "making a simple vegetable soup", ("onion", "stock", "simmer"), ("pot", "carrot")),
    ("knife-safety", "using a kitchen knife safely", ("grip", "board", "fingers"), ("sharp", "cut")),
    ("meal-prep", "preparing lunches for the week", ("containers", "portions", "fridge"), ("food", "cook")),
    ("hydration", "drinking enough water", ("bottle", "thirst", "daily"), ("glass", "health")),
    ("stretching", "stretching after a run", ("muscles", "hold", "calves"), ("pain", "legs")),
    ("desk-posture", "sitting well at a desk", ("chair", "screen", "back"), ("straight", "neck")),
    ("eye-strain", "reducing eye strain from screens", ("breaks", "distance", "blink"), ("tired", "computer")),
    ("meditation", "starting a short meditation habit", ("breath", "minutes", "quiet"), ("calm", "mind")),
    ("journaling", "keeping a daily journal", ("notebook", "thoughts", "morning"), ("write", "diary")),
    ("new-habit", "building a new habit", ("small", "cue", "routine"), ("easy", "goal")),
    ("busy-week", "planning a busy week", ("calendar", "priorities", "tasks"), ("time", "stress")),
    ("inbox", "keeping an email inbox tidy", ("folders", "archive", "unsubscribe"), ("messages", "delete")),
    ("video-call", "joining a video call for the first time", ("camera", "microphone", "link"), ("zoom", "screen")),
    ("phone-battery", "making a phone battery last longer", ("brightness", "apps", "charging"), ("power", "screen")),
    ("home-wifi", "improving weak home wifi", ("router", "signal", "walls"), ("internet", "slow")),
    ("printer", "fixing a printer that will not print", ("paper", "cable", "driver"), ("ink", "jam")),
    ("food-bank", "volunteering at a food bank", ("shift", "donations", "sorting"), ("help", "people")),
    ("noisy-neighbour", "asking a neighbour to keep the noise down", ("evening", "music", "polite"), ("loud", "angry")),
    ("bin-day", "the new bin collection day", ("thursday", "recycling", "morning"), ("rubbish", "trash")),
    ("street-party", "organising a street party", ("tables", "permission", "music"), ("fun", "food")),
    ("balcony-tomatoes", "growing tomatoes on a balcony", ("pots", "sun", "water"), ("plants", "red")),
    ("windowsill-herbs", "growing herbs on a windowsill", ("basil", "light", "soil"), ("green", "kitchen")),
    ("lawn", "mowing a lawn", ("blades", "height", "weekly"), ("grass", "cut")),
    ("snow-clearing", "clearing snow from a driveway", ("shovel", "salt", "ice"), ("cold", "car")),
    ("smoke-alarm", "testing a smoke alarm", ("button", "battery", "monthly"), ("fire", "beep")),
    ("flat-tyre", "fixing a flat bicycle tyre", ("tube", "pump", "patch"), ("wheel", "puncture")),
    ("car-oil", "checking a car's oil", ("dipstick", "engine", "level"), ("dirty", "garage")),
    ("road-trip", "planning a family road trip", ("snacks", "stops", "map"), ("car", "drive")),
    ("tent", "pitching a tent", ("poles", "pegs", "ground"), ("rain", "wind")),
    ("day-hike", "preparing for a day hike", ("boots", "water", "map"), ("mountain", "tired")),
    ("adult-swimming", "learning to swim as an adult", ("lessons", "breathing", "pool"), ("water", "fear")),
    ("chess", "the basic rules of chess", ("king", "pawn", "board"), ("game", "win")),
    ("guitar-chords", "learning the first chords on a guitar", ("fingers", "strings", "practice"), ("music", "hard")),
    ("reading-more", "reading more books", ("minutes", "library", "shelf"), ("time", "novel")),
    ("phone-photos", "taking better photos with a phone", ("light", "angle", "focus"), ("camera", "picture")),
    ("birthday-party", "planning a child's birthday party", ("guests", "cake", "games"), ("fun", "kids")),
    ("thank-you-note", "a thank-you note for a birthday gift", ("kind", "thoughtful", "card"), ("present", "happy")),
    ("missed-meeting", "apologising for missing a meeting", ("sorry", "reschedule", "agenda"), ("late", "forgot")),
    ("wedding-toast", "a short toast at a friend's wedding", ("couple", "glasses", "cheers"), ("love", "marriage")),
    ("volcanoes", "how volcanoes erupt", ("magma", "pressure", "crust"), ("lava", "hot")),
    ("photosynthesis", "how plants make food from sunlight", ("leaves", "carbon", "sugar"), ("green", "energy")),
    ("seasons", "why we have seasons", ("tilt", "axis", "orbit"), ("summer", "winter")),
    ("moon-phases", "the phases of the moon", ("crescent", "sunlight", "orbit"), ("night", "full")),
    ("vaccines", "how vaccines train the immune system", ("antibodies", "virus", "memory"), ("shot", "disease")),
    ("thunder", "why thunder follows lightning", ("sound", "light", "distance"), ("storm", "loud")),
    ("bees", "why bees matter to farms", ("pollen", "flowers", "crops"), ("honey", "insects")),
    ("savings-interest", "how savings interest works", ("rate", "balance", "yearly"), ("money", "bank")),
    ("credit-score", "what a credit score is", ("loans", "payments", "history"), ("debt", "bank")),
    ("inflation", "what inflation means for shoppers", ("prices", "wages", "rise"), ("money", "expensive")),
    ("local-election", "how a local election works", ("ballot", "candidates", "count"), ("vote", "politics")),
    ("paper-map", "reading a paper map", ("scale", "north", "key"), ("compass", "road")),
    ("clock-change", "changing the clocks for daylight saving", ("hour", "spring", "autumn"), ("time", "sleep")),
    ("new-language", "learning a few words of a new language", ("phrases", "practice", "app"), ("hard", "grammar")),
    ("bank-account", "opening a first bank account", ("identity", "branch", "card"), ("money", "savings")),
    ("cover-letter", "writing a cover letter", ("role", "skills", "company"), ("job", "experience")),
    ("meeting-notes", "taking notes in a meeting", ("actions", "decisions", "names"), ("write", "boring")),
    ("halving-recipe", "halving a recipe", ("grams", "ingredients", "divide"), ("half", "cook")),
    ("freezing-leftovers", "freezing leftovers safely", ("containers", "label", "thaw"), ("cold", "food")),
    ("picnic", "packing a picnic", ("blanket", "sandwiches", "basket"), ("food", "park")),
    ("sunscreen", "using sunscreen properly", ("spf", "reapply", "skin"), ("sun", "burn")),
    ("cycling-to-work", "cycling to work", ("helmet", "lights", "route"), ("bike", "traffic")),
    ("online-returns", "returning an item bought online", ("receipt", "refund", "parcel"), ("money", "shop")),
    ("screen-time", "limiting children's screen time", ("rules", "outdoors", "evening"), ("phone", "tv")),
    ("elderly-neighbour", "checking on an elderly neighbour in winter", ("visit", "heating", "groceries"),
     ("old", "cold")),
    ("rescue-dog", "adopting a rescue dog", ("shelter", "patience", "walks"), ("puppy", "home")),
)

# Task forms; "letter" forms take placeholders such as [name], the others do not.
FORMS: tuple[tuple[str, bool], ...] = (
    ("Explain {subject} to a beginner.", False),
    ("Write a short email to a friend about {subject}.", True),
    ("Give some practical tips about {subject}.", False),
    ("Describe {subject} in plain language.", False),
    ("Summarise the key facts about {subject}.", False),
    ("List the main things to know about {subject}.", False),
    ("Write a short note to a neighbour about {subject}.", True),
    ("Answer a coworker who asked you about {subject}.", False),
)
PROMPTS_PER_FORM = 3

# How many constraints a built-in prompt carries, with the weight of each count: several per
# prompt is what transfers to unseen types (IFBench), one now and then keeps easy wins in the mix.
CONSTRAINT_COUNTS: dict[int, float] = {1: 2, 2: 3, 3: 3, 4: 2}

END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "Hope this helps.", "That is all.")

# Draw weights: biased toward what a 135M instruct model can learn to satisfy.
IFEVAL_WEIGHTS: dict[str, float] = {
    "length_constraints:number_words": 4,
    "change_case:english_lowercase": 3,
    "startend:end_checker": 3,
    "keywords:existence": 3,
    "detectable_format:title": 3,
    "punctuation:no_comma": 3,
    "keywords:forbidden_words": 2,
    "startend:quotation": 1.5,
    "detectable_content:postscript": 1.5,
    "detectable_format:number_bullet_lists": 1.5,
    "length_constraints:number_sentences": 1,
    "length_constraints:number_paragraphs": 1,
    "change_case:english_capital": 1,
    "detectable_format:json_format": 1,
    "detectable_content:number_placeholders": 1,
}
# Every type the generator draws: IFEval's and Flywheel's own (always training types by default).
WEIGHTS: dict[str, float] = {**IFEVAL_WEIGHTS, **{kind: verifiable.get(kind).weight for kind in verifiable.ids()}}

# Pairs never drawn together: they contradict, or fight over the same part of the answer.
_CONFLICTS = {
    frozenset(pair)
    for pair in [
        ("change_case:english_lowercase", "change_case:english_capital"),
        ("change_case:english_lowercase", "startend:end_checker"),
        ("change_case:english_lowercase", "detectable_content:postscript"),
        ("change_case:english_capital", "startend:end_checker"),
        ("startend:end_checker", "detectable_content:postscript"),
        # punkt counts "P.S." as a sentence of its own, which makes sentence limits a trap.
        ("detectable_content:postscript", "length_constraints:number_sentences"),
        ("startend:end_checker", "startend:quotation"),
        ("detectable_content:postscript", "startend:quotation"),
        ("startend:quotation", "detectable_format:title"),
        ("startend:quotation", "detectable_format:number_bullet_lists"),
        ("startend:quotation", "length_constraints:number_paragraphs"),
        ("detectable_format:number_bullet_lists", "length_constraints:number_paragraphs"),
        ("detectable_format:number_bullet_lists", "length_constraints:number_sentences"),
        ("length_constraints:number_words", "length_constraints:number_sentences"),
        ("length_constraints:number_words", "length_constraints:number_paragraphs"),
        ("length_constraints:number_sentences", "length_constraints:number_paragraphs"),
    ]
}
# JSON leaves room only for word choice (as in IFEval's own conflict table).
_JSON_PARTNERS = {"keywords:existence", "keywords:forbidden_words"}


def compatible(a: str, b: str) -> bool:
    """Whether constraint types ``a`` and ``b`` may share a prompt."""
    if a == b:
        return False
    if "detectable_format:json_format" in (a, b):
        return ({a, b} - {"detectable_format:json_format"}) <= _JSON_PARTNERS
    for one, other in ((a, b), (b, a)):
        if verifiable.is_flywheel(one) and other in verifiable.get(one).conflicts:
            return False
    return frozenset((a, b)) not in _CONFLICTS


def _quoted(words: list[str], joiner: str) -> str:
    """'"a"', '"a" and "b"' or '"a" or "b"'."""
    return f" {joiner} ".join(f'"{w}"' for w in words)


def describe(constraint: Constraint) -> str:
    """The constraint in plain words, stating exactly what its kwargs encode."""
    kw = constraint.kwargs
    if verifiable.is_flywheel(constraint.id) and constraint.id in verifiable.INSTRUCTIONS:
        return verifiable.describe(constraint)
    match constraint.id:
        case "length_constraints:number_words":
            bound = "fewer than" if kw["relation"] == "less than" else "at least"
            return f"Answer in {bound} {kw['num_words']} words."
        case "length_constraints:number_sentences":
            bound = "fewer than" if kw["relation"] == "less than" else "at least"
            return f"Use {bound} {kw['num_sentences']} sentences."
        case "length_constraints:number_paragraphs":
            return f"Write exactly {kw['num_paragraphs']} paragraphs, separated by the markdown divider ***."
        case "keywords:existence":
            noun = "word" if len(kw["keywords"]) == 1 else "words"
            return f"Include the {noun} {_quoted(kw['keywords'], 'and')}."
        case "keywords:forbidden_words":
            noun = "word" if len(kw["forbidden_words"]) == 1 else "words"
            return f"Do not use the {noun} {_quoted(kw['forbidden_words'], 'or')}."
        case "detectable_format:number_bullet_lists":
            return f"Format the answer as exactly {kw['num_bullets']} bullet points, each line starting with \"* \"."
        case "change_case:english_lowercase":
            return "Write your entire answer in English using only lowercase letters, with no capitals."
        case "change_case:english_capital":
            return "Write your entire answer in English using only capital letters."
        case "detectable_format:json_format":
            return "Format your entire answer as valid JSON."
        case "startend:end_checker":
            return f"End your answer with the exact phrase \"{kw['end_phrase']}\" and nothing after it."
        case "detectable_format:title":
            return "Give your answer a title wrapped in double angular brackets, such as <<my title>>."
        case "punctuation:no_comma":
            return "Do not use any commas."
        case "startend:quotation":
            return "Wrap your entire answer in double quotation marks."
        case "detectable_content:postscript":
            return f"At the end, add a postscript starting with {kw['postscript_marker']}"
        case "detectable_content:number_placeholders":
            return f"Include at least {kw['num_placeholders']} placeholders in square brackets, such as [name]."
    raise ValueError(f"no plain-words description for constraint {constraint.id!r}")


def _draw_kwargs(kind: str, rng: random.Random, topic: tuple, taken: dict[str, Any]) -> dict[str, Any]:
    """Arguments for one constraint of type ``kind`` on ``topic``."""
    _, subject, keywords, tempting = topic
    if verifiable.is_flywheel(kind):
        forbidden = frozenset(taken.get("forbidden_words", ()))
        return verifiable.get(kind).draw(rng, verifiable.DrawContext(keywords, subject, forbidden))
    match kind:
        case "length_constraints:number_words":
            # Generation stops near 96 tokens (~70 words), so "at least" stays modest.
            if rng.random() < 0.75:
                return {"num_words": rng.choice((25, 30, 40, 50, 60)), "relation": "less than"}
            return {"num_words": rng.choice((20, 30, 40)), "relation": "at least"}
        case "length_constraints:number_sentences":
            if rng.random() < 0.6:
                return {"num_sentences": rng.choice((3, 4, 5)), "relation": "less than"}
            return {"num_sentences": rng.choice((2, 3)), "relation": "at least"}
        case "length_constraints:number_paragraphs":
            return {"num_paragraphs": rng.choice((2, 3))}
        case "keywords:existence":
            return {"keywords": sorted(rng.sample(keywords, rng.choice((1, 1, 2))))}
        case "keywords:forbidden_words":
            return {"forbidden_words": [rng.choice(tempting)]}
        case "detectable_format:number_bullet_lists":
            return {"num_bullets": rng.choice((2, 3, 3, 4, 5))}
        case "startend:end_checker":
            forbidden = set(taken.get("forbidden_words", ()))
            # An end phrase must not contain a word the same prompt forbids.
            phrases = [p for p in END_PHRASES if not forbidden & set(p.lower().rstrip("?.").split())]
            return {"end_phrase": rng.choice(phrases)}
        case "detectable_content:postscript":
            return {"postscript_marker": "P.S."}
        case "detectable_content:number_placeholders":
            return {"num_placeholders": rng.choice((1, 2, 3))}
    return {}


def _draw_constraints(
    rng: random.Random, topic: tuple, letter_form: bool, kinds: Collection[str], first_from: Collection[str] = ()
) -> list[Constraint]:
    """One to four (``CONSTRAINT_COUNTS``) pairwise compatible constraints of ``kinds`` for a prompt
    on ``topic``; the first of ``first_from`` when given (and one fits the form)."""
    usable = [k for k in WEIGHTS if letter_form or k != "detectable_content:number_placeholders"]
    chosen: list[str] = []
    for i in range(rng.choices(list(CONSTRAINT_COUNTS), weights=list(CONSTRAINT_COUNTS.values()))[0]):
        pool = first_from if i == 0 and any(k in first_from for k in usable) else kinds
        options = [k for k in usable if k in pool and all(compatible(k, c) for c in chosen)]
        if not options:
            break
        chosen.append(rng.choices(options, weights=[WEIGHTS[k] for k in options])[0])
    # Forbidden words first, so an end phrase can avoid them.
    chosen.sort(key=lambda k: k != "keywords:forbidden_words")
    taken: dict[str, Any] = {}
    constraints = []
    for kind in chosen:
        kwargs = _draw_kwargs(kind, rng, topic, taken)
        taken.update(kwargs)
        constraints.append(Constraint(id=kind, kwargs=kwargs))
    return constraints


def _text_id(prefix: str, text: str) -> str:
    """A stable id from the prompt text."""
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def eval_topics(seed: int, eval_topic_share: float) -> set[str]:
    """The built-in topic slugs held out for evaluation."""
    slugs = sorted(t[0] for t in TOPICS)
    random.Random(f"flywheel-topic-split-{seed}").shuffle(slugs)
    n_eval = min(len(slugs) - 1, max(1, round(eval_topic_share * len(slugs))))
    return set(slugs[:n_eval])


# Share of held-out built-in prompts that lead with an unseen constraint type; the others carry
# seen types only, so both satisfaction rates rest on about as many prompts.
UNSEEN_EVAL_SHARE = 0.5


def default_unseen_types(seed: int) -> tuple[str, ...]:
    """A quarter of the built-in generator's IFEval constraint types (4 of 15), drawn by ``seed``.
    Flywheel's own types are never held out by default: they are there to widen training."""
    kinds = sorted(IFEVAL_WEIGHTS)
    return tuple(sorted(random.Random(f"flywheel-unseen-types-{seed}").sample(kinds, round(len(kinds) / 4))))


def unseen_types(config: PromptsConfig) -> frozenset[str]:
    """The constraint types held out of training: ``prompts.unseen_types``, or by default a seeded
    quarter of the built-in IFEval types for the built-in source and none for a prompt file."""
    if config.unseen_types is not None:
        return frozenset(config.unseen_types)
    return frozenset(default_unseen_types(config.seed)) if config.source == "builtin" else frozenset()


def builtin_prompts(
    seed: int, eval_topic_share: float, unseen: Collection[str] | None = None, unseen_led_per_topic: int = 0
) -> list[Prompt]:
    """Every built-in prompt, each marked train or eval by its topic. Training prompts never carry
    an ``unseen`` type (default: ``default_unseen_types(seed)``); about half the held-out ones do,
    plus ``unseen_led_per_topic`` more per held-out topic made of unseen types only (``_unseen_led``)."""
    unseen = frozenset(default_unseen_types(seed) if unseen is None else unseen)
    if unknown := sorted(unseen - set(WEIGHTS)):
        raise ValueError(f"prompts.unseen_types: {unknown} are not drawn by the built-in generator; "
                         f"it draws {', '.join(sorted(WEIGHTS))}")
    seen = [k for k in WEIGHTS if k not in unseen]
    if not seen:
        raise ValueError("prompts.unseen_types holds every built-in constraint type: nothing left to train on")
    held_out = eval_topics(seed, eval_topic_share)
    prompts: list[Prompt] = []
    for topic in TOPICS:
        slug, subject = topic[0], topic[1]
        split = "eval" if slug in held_out else "train"
        # One generator per topic: adding a topic leaves the others' prompts unchanged.
        rng = random.Random(f"flywheel-prompts-{seed}-{slug}")
        texts: set[str] = set()
        for form, letter_form in FORMS:
            task = form.format(subject=subject)
            for _ in range(PROMPTS_PER_FORM):
                if split == "eval" and unseen and rng.random() < UNSEEN_EVAL_SHARE:
                    constraints = _draw_constraints(rng, topic, letter_form, WEIGHTS, first_from=unseen)
                else:
                    constraints = _draw_constraints(rng, topic, letter_form, seen)
                text = " ".join([task, *(describe(c) for c in constraints)])
                if text in texts:
                    continue
                texts.add(text)
                prompts.append(
                    Prompt(id=_text_id(f"b-{slug}", text), text=text, constraints=constraints, topic=slug, split=split)
                )
        if split == "eval" and unseen and unseen_led_per_topic:
            prompts += _unseen_led(seed, topic, sorted(unseen), unseen_led_per_topic, texts)
    return prompts


def _unseen_led(seed: int, topic: tuple, unseen: list[str], n: int, texts: set[str]) -> list[Prompt]:
    """``n`` more held-out prompts on ``topic`` whose constraints are all of the ``unseen`` types,
    the first one taken from them in turn. Why: the mixed held-out prompts carry about 0.6 unseen
    constraints each, most of them the type with the largest draw weight (no_comma, 126 of 242 at
    400 prompts for seed 0), so the unseen rate's interval stays near +-6.6 points however long one
    waits; prompts of unseen types only add about two each, spread evenly over the types. A separate
    generator, so the rest of the pool (and every training prompt) is the same with or without them."""
    rng = random.Random(f"flywheel-unseen-led-{seed}-{topic[0]}")
    added: list[Prompt] = []
    for i in range(n):
        lead = unseen[(i + sum(map(ord, topic[0]))) % len(unseen)]
        # number_placeholders is only asked of letter forms (an email, a note), which have [name]-style gaps.
        forms = [(form, letter) for form, letter in FORMS if letter or lead != "detectable_content:number_placeholders"]
        form, letter_form = rng.choice(forms)
        constraints = _draw_constraints(rng, topic, letter_form, unseen, first_from=(lead,))
        text = " ".join([form.format(subject=topic[1]), *(describe(c) for c in constraints)])
        if text in texts:
            continue
        texts.add(text)
        added.append(Prompt(id=_text_id(f"b-{topic[0]}", text), text=text, constraints=constraints, topic=topic[0], split="eval"))
    return added


class PromptFileError(ValueError):
    """A malformed prompt file; the message names the file and the line."""


_LINE_KEYS = {"id", "text", "topic", "split", "constraints"}


def _hash_share(key: str) -> float:
    """A stable number in [0, 1) for ``key``."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


def _parse_constraints(raw: Any) -> list[Constraint]:
    """Constraints from a line's "constraints" value; ValueError says what is wrong."""
    if not isinstance(raw, list):
        raise ValueError(f'"constraints" must be a list, got {type(raw).__name__}')
    constraints = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            raise ValueError(f'constraint {i} must be an object with a string "id"')
        if set(item) - {"id", "kwargs"}:
            raise ValueError(f"constraint {i} has unknown keys {sorted(set(item) - {'id', 'kwargs'})}")
        kwargs = item.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ValueError(f'constraint {i} "kwargs" must be an object')
        constraint = Constraint(id=item["id"], kwargs=kwargs)
        validate_constraint(constraint)
        constraints.append(constraint)
    return constraints


def _parse_line(line: str) -> dict[str, Any]:
    """One JSONL line as Prompt fields (split may be missing); ValueError says what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if set(obj) - _LINE_KEYS:
        raise ValueError(f"unknown keys {sorted(set(obj) - _LINE_KEYS)}; allowed: {sorted(_LINE_KEYS)}")
    if not isinstance(obj.get("text"), str) or not obj["text"].strip():
        raise ValueError('"text" is required and must be a non-empty string')
    for key in ("id", "topic"):
        if key in obj and not isinstance(obj[key], str):
            raise ValueError(f'"{key}" must be a string, got {type(obj[key]).__name__}')
    if "id" in obj and not obj["id"].strip():
        raise ValueError('"id" must not be empty')
    if "split" in obj and obj["split"] not in ("train", "eval"):
        raise ValueError(f'"split" must be "train" or "eval", got {obj["split"]!r}')
    fields = {k: obj[k] for k in ("id", "topic", "split") if k in obj}
    fields["text"] = obj["text"]
    fields["constraints"] = _parse_constraints(obj.get("constraints", []))
    fields.setdefault("id", _text_id("p", obj["text"]))
    return fields


def _decode_line(path: Path, number: int, raw: bytes) -> str:
    """One line of a prompt file as text; a PromptFileError names the line and the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PromptFileError(
            f"{path}: line {number}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}); "
            "save the file as UTF-8"
        ) from None


def split_counts(prompts: Collection[Prompt]) -> dict[str, int]:
    """How many of ``prompts`` fall in each split: ``{"train": n, "eval": m}``."""
    return {split: sum(p.split == split for p in prompts) for split in ("train", "eval")}


def load_prompt_file(path: Path, eval_share: float = 0.25) -> list[Prompt]:
    """Prompts from a JSONL file; lines without a split follow their topic's hash."""
    return [prompt for _, prompt in load_numbered_prompts(path, eval_share)]


def load_numbered_prompts(path: Path, eval_share: float = 0.25) -> list[tuple[int, Prompt]]:
    """``load_prompt_file`` with each prompt's line number (from 1), for messages that point at a line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptFileError(f"{path}: cannot read prompt file: {exc.strerror}") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        line = _decode_line(path, number, raw)
        if not line.strip():
            continue
        try:
            fields = _parse_line(line)
        except ValueError as exc:
            raise PromptFileError(f"{path}: line {number}: {exc}") from None
        if fields["id"] in seen:
            first = seen[fields["id"]]
            raise PromptFileError(f"{path}: line {number}: duplicate id {fields['id']!r} (first on line {first})")
        seen[fields["id"]] = number
        rows.append((number, fields))
    if not rows:
        raise PromptFileError(f"{path}: no prompts in file")
    topic_split = _topic_splits(path, rows)
    prompts = []
    for number, fields in rows:
        key = fields.get("topic") or fields["text"]
        if "split" not in fields:
            fields["split"] = topic_split.get(key) or ("eval" if _hash_share(key) < eval_share else "train")
        prompts.append((number, Prompt(**fields)))
    return prompts


def _topic_splits(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> dict[str, str]:
    """Explicit splits by topic; a topic given both splits is an error."""
    splits: dict[str, tuple[str, int]] = {}
    for number, fields in rows:
        topic, split = fields.get("topic"), fields.get("split")
        if not topic or not split:
            continue
        if topic in splits and splits[topic][0] != split:
            first_split, first_line = splits[topic]
            raise PromptFileError(
                f"{path}: line {number}: topic {topic!r} is {split!r} here but {first_split!r} on line "
                f"{first_line}; train and eval must share no topic"
            )
        splits.setdefault(topic, (split, number))
    return {topic: split for topic, (split, _) in splits.items()}


def select_prompts(prompts: list[Prompt], split: str, n: int, seed: int) -> list[Prompt]:
    """A deterministic sample of ``n`` prompts of ``split`` (all of them when fewer)."""
    pool = sorted((p for p in prompts if p.split == split), key=lambda p: p.id)
    if not pool:
        raise ValueError(f"no {split!r} prompts to select from")
    return random.Random(f"flywheel-select-{seed}-{split}").sample(pool, min(n, len(pool)))


PromptSource = Callable[[PromptsConfig], list[Prompt]]
PROMPT_SOURCES: Registry[PromptSource] = Registry("prompt source")


@PROMPT_SOURCES.register("builtin")
def _builtin_source(config: PromptsConfig) -> list[Prompt]:
    """The built-in generated set."""
    return builtin_prompts(config.seed, config.eval_topic_share, unseen_types(config), config.unseen_led_per_topic)


@PROMPT_SOURCES.register("jsonl")
def _jsonl_source(config: PromptsConfig) -> list[Prompt]:
    """Prompts from the JSONL file at ``config.path``."""
    if config.path is None:
        raise ValueError("prompts.path is required when prompts.source is 'jsonl'")
    return load_prompt_file(config.path, config.eval_topic_share)


def load_prompts(config: PromptsConfig, data_dir: Path) -> list[Prompt]:
    """All prompts of the configured source, every constraint checked to build; training prompts
    carrying an unseen constraint type are left out (a prompt file may hold some)."""
    ensure_punkt(data_dir)
    unknown = sorted(unseen_types(config) - set(known_constraints()))
    if unknown:
        raise ValueError(f"prompts.unseen_types: unknown constraint ids {unknown}")
    prompts = PROMPT_SOURCES.get(config.source)(config)
    for prompt in prompts:
        for constraint in prompt.constraints:
            validate_constraint(constraint)
    return withhold_unseen(prompts, unseen_types(config))


def carries_unseen(prompt: Prompt, unseen: Collection[str]) -> bool:
    return any(c.id in unseen for c in prompt.constraints)


def withhold_unseen(prompts: list[Prompt], unseen: Collection[str]) -> list[Prompt]:
    """``prompts`` without the training prompts that carry an ``unseen`` type (counted in the log)."""
    kept = [p for p in prompts if p.split == "eval" or not carries_unseen(p, unseen)]
    if len(kept) < len(prompts):
        logging.getLogger("flywheel").warning(
            "%d training prompts left out of the pool: they carry a constraint type held out for the eval (%s)",
            len(prompts) - len(kept), ", ".join(sorted(unseen)))
    return kept


UNCONSTRAINED_FILE = Path(__file__).parent / "data" / "unconstrained.jsonl"


def unconstrained_prompts(n: int, seed: int) -> list[Prompt]:
    """``n`` of the everyday requests with nothing to check (all when fewer), held out like the eval set."""
    if n <= 0:
        return []
    return select_prompts(load_prompt_file(UNCONSTRAINED_FILE), "eval", n, seed)


class PromptsSummary(BaseModel):
    n_train: int
    n_eval: int
    constraints_per_prompt: float


def fresh_rounds(n_pool: int, n_train: int) -> int:
    """How many rounds can each train on prompts no earlier round saw, from a pool of ``n_pool``."""
    return n_pool // n_train if n_train else 0


def training_slice(prompts: list[Prompt], n: int, seed: int, round_index: int) -> list[Prompt]:
    """Round ``round_index``'s (from 1) ``n`` training prompts: the training pool shuffled once by
    ``seed`` and dealt out in consecutive slices, so rounds share no prompt until the pool is spent;
    after that the deal starts over on a new shuffle (logged), and texts repeat."""
    pool = sorted((p for p in prompts if p.split == "train"), key=lambda p: p.id)
    if not pool:
        raise ValueError("no 'train' prompts to select from")
    n = min(n, len(pool))
    per_deal = fresh_rounds(len(pool), n)
    deal, slot = divmod(max(round_index - 1, 0), per_deal)
    if deal:
        logging.getLogger("flywheel").warning(
            "round %d: the %d training prompts hold %d rounds of %d fresh prompts; reusing them (deal %d)",
            round_index, len(pool), per_deal, n, deal + 1)
    random.Random(f"flywheel-rounds-{seed}-{deal}").shuffle(pool)
    return pool[slot * n : (slot + 1) * n]


def round_prompts(config: PromptsConfig, data_dir: Path, round_index: int) -> tuple[list[Prompt], list[Prompt]]:
    """The round's prompts: training prompts no earlier round saw (``training_slice``), the same
    held-out set every round."""
    prompts = load_prompts(config, data_dir)
    train = training_slice(prompts, config.n_train, config.seed, round_index)
    held_out = select_prompts(prompts, "eval", config.n_eval, seed=config.seed)
    return train, held_out


def summarize_prompts(train: list[Prompt], held_out: list[Prompt]) -> PromptsSummary:
    return PromptsSummary(
        n_train=len(train), n_eval=len(held_out), constraints_per_prompt=sum(len(p.constraints) for p in train) / max(len(train), 1)
    )
