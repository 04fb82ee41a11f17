"""Flywheel's own verifiable instruction types (tasks/verifiable/): every checker on hand-written
answers that meet it and that miss it (trailing whitespace, markdown, case), their descriptions,
kwargs drawers and validation, and the dispatch from tasks/constraints.py."""

from __future__ import annotations

import random

import pytest

from infra.records import Constraint
from tasks import verifiable
from tasks.constraints import check_constraints, known_constraints, validate_constraint
from tasks.prompts import TOPICS
from tasks.verifiable import DrawContext


def C(id: str, **kwargs) -> Constraint:
    return Constraint(id=f"flywheel:{id}", kwargs=kwargs)


# (constraint, answers that meet it, answers that miss it)
CASES = [
    (C("last_word", word="soil"),
     ["Keep the pot on fresh soil.", "Water, then feel the SOIL  \n", "**Keep it in soil**", '"Mind the soil."'],
     ["Soil matters for the pot.", "Keep it in soils.", "Mind the soil. Thanks."]),
    (C("marker_bullets", marker="-", count=3),
     ["Tips:\n- Rinse.\n- Soak.\n- Boil.\n", "  - one\n  - two\n  - three   "],
     ["- one\n- two", "- one\n- two\n- three\n- four", "- one\n- two\n* three", "-one\n-two\n-three"]),
    (C("marker_bullets", marker="+", count=2),
     ["+ Rinse the rice.\n+ Cover the pot.", "**Steps**\n+ a\n+ b"],
     ["- Rinse the rice.\n- Cover the pot.", "+ Rinse the rice. + Cover the pot."]),
    (C("numbered_steps", count=3),
     ["1. Rinse.\n2. Soak.\n3. Boil.", "Steps:\n 1) Rinse\n 2) Soak\n 3) Boil\n\nDone."],
     ["1. Rinse.\n2. Soak.", "1. Rinse.\n3. Soak.\n2. Boil.", "Rinse, soak, boil: 1. 2. 3.", "1. a\n2. b\n3. c\n4. d"]),
    (C("paragraph_initial", letter="S"),
     ["Start early.\n\nSoak the beans.", "## Some tips\n\n*Soak* them.\n\n\"Stir\" often.", "sleep well.   \n\n  \n"],
     ["Start early.\n\nThen soak the beans.", "Just one paragraph.", ""]),
    (C("heading_line", max_words=4),
     ["Caring For Houseplants\nWater them weekly.", "# Bin Day Changes\n\nThe bins go out Thursday.",
      "**Three Quick Tips**\nTip one."],
     ["Caring for houseplants\nWater them weekly.", "Caring For Your Lovely Houseplants\nWater them.",
      "Caring For Houseplants"]),
    (C("divided_sections", count=2, divider="~~~"),
     ["Part one.\n~~~\nPart two.", "Part one.\n\n  ~~~  \n\nPart two.\n"],
     ["Part one.\n~~~\nPart two.\n~~~\nPart three.", "Part one. ~~~ Part two.", "~~~\nPart two.", "Part one.\n===\nPart two."]),
    (C("sign_off", closing="Take care", name="Sam"),
     ["See you soon.\nTake care from Sam", "See you soon.\n\ntake care from sam.\n", "See you.\n*Take care from Sam!*"],
     ["Take care from Sam", "See you soon. Take care from Sam", "See you soon.\nTake care, Sam", "Take care from Sam\nBye."]),
    (C("ends_with_question"),
     ["Tea helps. Want to try it?", "Tea helps. Want to try?  \n", '"Want some tea?"', "**Ready?**"],
     ["Want tea? It helps.", "Tea helps.", "Want tea?!"]),
    (C("starts_with", phrase="Good question."),
     ["Good question. Tides follow the moon.", "  good question. tides.", "**Good question.** Tides.", '"Good question." Tides.'],
     ["A good question. Tides.", "Tides follow the moon. Good question.", "Good question Tides."]),
    (C("parenthetical", min_words=3),
     ["Rinse the rice (two or three times) first.", "Use a lid (a tight one)."],
     ["Rinse the rice (twice) first.", "Rinse it - two or three times.", "Rinse (two or three times first."]),
    (C("word_exactly", word="water", times=2),
     ["Water the pot, then check the water.", "WATER it; more water later"],
     ["Water the pot.", "Water it, water it, water it.", "Water the pot and the waters."]),
    (C("number_between", low=5, high=15),
     ["Rest for 10 minutes.", "Wait 5 minutes.", "It costs 1,200 or 15.0 pounds.", "Use 7.5 cups."],
     ["Rest for ten minutes.", "Rest for 4 or 16 minutes.", "Version 2.10 is out.", "Call 0151 now."]),
    (C("short_sentences", max_words=6),
     ["Rinse the rice. Cover the pot! Wait.", "- Rinse the rice well\n- Cover it"],
     ["Rinse the rice in cold water twice.", "Rinse the rice. Then cover the pot with its lid.", ""]),
    (C("max_word_length", letters=8),
     ["Keep the pot in light.", "A well-lit shelf works."],
     ["Keep the pot somewhere bright.", "Photosynthesis needs light."]),
    (C("keywords_in_order", keywords=["flour", "yeast", "oven"]),
     ["Mix flour with yeast, then heat the oven.", "FLOUR first; Yeast next; the oven last. Flour again."],
     ["Mix yeast with flour, then heat the oven.", "Mix flour with yeast.", "Flour, yeasty dough, oven."]),
    (C("no_digits"),
     ["Wait ten minutes.", "Wait twenty-five minutes, not more."],
     ["Wait 10 minutes.", "Step 1: rinse."]),
    (C("bold_word", word="permit"),
     ["Get a **permit** first.", "Get a ** Permit ** first.", "**PERMIT** needed."],
     ["Get a *permit* first.", "Get a permit first.", "Get **permits** first."]),
    (C("no_exclamation"),
     ["Hope this helps.", "Is it ready?"],
     ["Hope this helps!", "Wow! Great."]),
]


@pytest.mark.parametrize("constraint, good, bad", CASES, ids=[f"{c.id}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_checker_meets_the_good_answers_and_misses_the_bad(constraint, good, bad):
    for answer in good:
        assert check_constraints(answer, [constraint]) == [True], (answer, constraint)
    for answer in bad:
        assert check_constraints(answer, [constraint]) == [False], (answer, constraint)


def test_every_flywheel_type_has_cases_and_there_are_at_least_fifteen():
    assert len(verifiable.ids()) >= 15
    assert {c.id for c, _, _ in CASES} == set(verifiable.ids())
    assert set(verifiable.ids()) <= set(known_constraints())


def test_descriptions_state_the_drawn_values():
    rng = random.Random(0)
    for slug, subject, keywords, tempting in TOPICS:
        ctx = DrawContext(keywords=keywords, subject=subject, forbidden=frozenset(tempting))
        for kind in verifiable.ids():
            kwargs = verifiable.get(kind).draw(rng, ctx)
            constraint = Constraint(id=kind, kwargs=kwargs)
            validate_constraint(constraint)
            text = verifiable.describe(constraint)
            assert text.endswith((".", '."')) and text[0].isupper(), text
            for value in kwargs.values():
                for item in value if isinstance(value, list) else [value]:
                    assert str(item) in text, (kind, kwargs, text)


def test_drawn_words_come_from_the_topic_and_avoid_forbidden_ones():
    ctx = DrawContext(keywords=("soil", "pot", "light"), subject="keeping houseplants alive",
                      forbidden=frozenset({"help", "care"}))
    rng = random.Random(1)
    for _ in range(50):
        assert verifiable.get("flywheel:last_word").draw(rng, ctx)["word"] in ctx.keywords
        assert "help" not in verifiable.get("flywheel:starts_with").draw(rng, ctx)["phrase"].lower()
        assert "care" not in verifiable.get("flywheel:sign_off").draw(rng, ctx)["closing"].lower()
        order = verifiable.get("flywheel:keywords_in_order").draw(rng, ctx)["keywords"]
        assert 2 <= len(order) == len(set(order)) and set(order) <= set(ctx.keywords)
        # Long enough for every word the topic needs ("houseplants": 11 letters).
        assert verifiable.get("flywheel:max_word_length").draw(rng, ctx)["letters"] >= 11


def test_drawing_is_deterministic_for_a_seed():
    ctx = DrawContext(keywords=("soil", "pot", "light"), subject="houseplants")
    draws = [[verifiable.get(k).draw(random.Random(seed), ctx) for k in verifiable.ids()] for seed in (5, 5, 6)]
    assert draws[0] == draws[1] != draws[2]


@pytest.mark.parametrize("constraint, problem", [
    (C("last_word"), "missing \\['word'\\]"),
    (C("last_word", word="two words"), "not a single word"),
    (C("last_word", word="soil", colour="red"), "unknown \\['colour'\\]"),
    (C("marker_bullets", marker="*", count=3), "marker must be"),
    (C("numbered_steps", count="3"), "'count' must be a int"),
    (C("numbered_steps", count=True), "'count' must be a int"),
    (C("number_between", low=9, high=3), "low < high"),
    (C("keywords_in_order", keywords=["soil"]), "two or more"),
    (C("keywords_in_order", keywords=[]), "non-empty list"),
    (C("paragraph_initial", letter="st"), "single letter"),
    (C("no_such_type"), "unknown constraint id 'flywheel:no_such_type'"),
])
def test_bad_kwargs_are_refused_naming_the_problem(constraint, problem):
    with pytest.raises(ValueError, match=problem):
        validate_constraint(constraint)


def test_conflicts_name_known_types():
    known = set(known_constraints())
    for kind in verifiable.ids():
        assert verifiable.get(kind).conflicts <= known, kind
        assert kind not in verifiable.get(kind).conflicts
