"""IFEval constraint checking offline, with lm-eval's real checkers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import nltk
import pytest

from infra.records import Constraint
from tasks.constraints import (
    PUNKT_FILES,
    check_constraints,
    constraint_score,
    ensure_punkt,
    known_constraints,
    punkt_dir,
    validate_constraint,
)


@pytest.fixture(scope="module", autouse=True)
def punkt_data(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    ensure_punkt(data_dir)
    return data_dir


def C(id: str, **kwargs) -> Constraint:
    return Constraint(id=id, kwargs=kwargs)


def test_ensure_punkt_builds_nltk_files_once(punkt_data):
    folder = punkt_dir(punkt_data)
    assert all((folder / name).stat().st_size > 0 for name in PUNKT_FILES)
    assert nltk.data.find("tokenizers/punkt_tab/english/")
    before = (folder / "ortho_context.tab").stat().st_mtime_ns
    ensure_punkt(punkt_data)
    assert (folder / "ortho_context.tab").stat().st_mtime_ns == before


def test_sentence_tokenizer_matches_nltk_english_model():
    two = "Dr. Smith went home at 5 p.m. today. He was tired."

    def met(n: int, relation: str) -> bool:
        return check_constraints(two, [C("length_constraints:number_sentences", num_sentences=n, relation=relation)])[0]

    assert met(3, "less than") and met(2, "at least") and not met(3, "at least")


def test_capital_word_frequency_works_offline():
    text = "Use the RED button, then the GREEN one, never the BLUE one."

    def met(relation: str) -> bool:
        constraint = C("change_case:capital_word_frequency", capital_frequency=3, capital_relation=relation)
        return check_constraints(text, [constraint])[0]

    assert met("at least") and not met("less than")


def test_known_constraints_lists_every_ifeval_type_and_the_flywheel_ones():
    known = known_constraints()
    assert len([k for k in known if not k.startswith("flywheel:")]) == 25
    assert len([k for k in known if k.startswith("flywheel:")]) >= 15
    assert {"length_constraints:number_sentences", "change_case:capital_word_frequency"} <= set(known)


# (constraint, a response that meets it, one that does not)
CASES = [
    (C("length_constraints:number_words", num_words=6, relation="less than"), "Gears trade force for speed.", "Gears trade force for speed on every hill."),
    (C("length_constraints:number_words", num_words=5, relation="at least"), "Gears trade force for speed.", "Gears help."),
    (C("keywords:existence", keywords=["chain", "pedal"]), "The pedal turns the chain.", "The pedal turns the wheel."),
    (C("keywords:forbidden_words", forbidden_words=["car"]), "Park the van by the cart.", "Park the car here."),
    (C("detectable_format:number_bullet_lists", num_bullets=2), "* Oil the chain.\n* Check the brakes.", "* Oil the chain."),
    (C("change_case:english_lowercase"), "oil the chain every month and wipe it clean.", "Oil the chain every month."),
    (C("change_case:english_capital"), "OIL THE CHAIN EVERY MONTH AND WIPE IT CLEAN.", "Oil the chain every month."),
    (C("detectable_format:json_format"), '```json\n{"tip": "oil the chain"}\n```', "tip: oil the chain"),
    (C("startend:end_checker", end_phrase="Any other questions?"), "Oil the chain. Any other questions?", "Any other questions? Oil the chain."),
    (C("detectable_format:title"), "<<Chain care>>\nOil it monthly.", "Chain care: oil it monthly."),
    (C("length_constraints:number_paragraphs", num_paragraphs=2), "Oil the chain.\n\n***\n\nCheck the brakes.", "Oil the chain.\n\nCheck the brakes."),
    (C("punctuation:no_comma"), "Oil the chain and check the brakes.", "Oil the chain, then check the brakes."),
    (C("startend:quotation"), '"Oil the chain."', "Oil the chain."),
    (C("detectable_content:postscript", postscript_marker="P.S."), "Oil the chain.\nP.S. Wipe it too.", "Oil the chain."),
    (C("detectable_content:number_placeholders", num_placeholders=2), "Dear [name], see you at [place].", "Dear Sam, see you at [place]."),
]


@pytest.mark.parametrize("constraint, good, bad", CASES, ids=[c.id for c, _, _ in CASES])
def test_checker_accepts_compliant_and_rejects_violating(constraint, good, bad):
    assert check_constraints(good, [constraint]) == [True]
    assert check_constraints(bad, [constraint]) == [False]


def test_score_is_share_of_constraints_met():
    constraints = [C("change_case:english_lowercase"), C("keywords:existence", keywords=["chain"])]
    assert constraint_score("oil the chain every month.", constraints) == 1.0
    assert constraint_score("oil the wheel every month.", constraints) == 0.5
    assert constraint_score("Oil the wheel every month.", constraints) == 0.0
    three = [*constraints, C("punctuation:no_comma")]
    assert constraint_score("oil the wheel, every month.", three) == pytest.approx(1 / 3)


def test_no_constraints_scores_one():
    assert constraint_score("anything", []) == 1.0
    assert check_constraints("anything", []) == []


def test_unknown_constraint_id_raises_naming_it():
    with pytest.raises(ValueError, match="no_such:constraint"):
        check_constraints("text", [C("no_such:constraint")])


def test_missing_or_bad_kwargs_raise_instead_of_random_defaults():
    with pytest.raises(ValueError, match="num_words"):
        validate_constraint(C("length_constraints:number_words"))
    with pytest.raises(ValueError, match="relation"):
        validate_constraint(C("length_constraints:number_words", num_words=5, relation="fewer"))


def test_checker_that_raises_counts_as_not_met():
    # lm-eval treats keywords as regular expressions; "(" makes re.search raise.
    assert check_constraints("a (b) c", [C("keywords:existence", keywords=["("])]) == [False]


def test_case_checks_are_repeatable():
    constraint = [C("change_case:english_lowercase")]
    text = "ok so this is fine i guess, more or less."
    assert len({tuple(check_constraints(text, constraint)) for _ in range(20)}) == 1


def test_thousands_of_checks_are_fast():
    constraints = [
        C("length_constraints:number_words", num_words=50, relation="less than"),
        C("keywords:existence", keywords=["chain"]),
        C("length_constraints:number_sentences", num_sentences=4, relation="less than"),
        C("detectable_format:title"),
    ]
    responses = [f"<<Note {i}>>\nThe chain needs oil. Wipe it after ride number {i}." for i in range(1000)]
    start = time.perf_counter()
    scores = [constraint_score(r, constraints) for r in responses]
    assert time.perf_counter() - start < 5
    assert set(scores) == {1.0}


def test_without_ensure_punkt_data_is_built_in_the_user_cache_quietly(tmp_path):
    code = (
        "from infra.records import Constraint as C; from tasks.constraints import check_constraints; "
        "print(check_constraints('One. Two. Three.', "
        "[C(id='length_constraints:number_sentences', kwargs={'num_sentences': 3, 'relation': 'at least'})]))"
    )
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[True]"
    # No download attempt: lm-eval prints "Downloaded punkt_tab", nltk "[nltk_data] Error loading".
    assert "punkt_tab" not in run.stdout + run.stderr
    assert "nltk_data" not in run.stdout + run.stderr
