"""The offline verifier judge on hand-written responses whose scores are known."""

from __future__ import annotations

import pytest

from infra.records import Candidate, Constraint, Prompt
from infra.settings import JudgeConfig
from tasks.constraints import ensure_punkt
from tasks.judge import JUDGES, Judge, VerifierJudge, build_judge, judge_pairs, judge_summary

# Two constraints: all lowercase, and fewer than 20 words.
PROMPT = Prompt(
    id="p1",
    text="Describe Paris in one sentence. Use only lowercase letters. Answer in fewer than 20 words.",
    constraints=[
        Constraint(id="change_case:english_lowercase"),
        Constraint(id="length_constraints:number_words", kwargs={"relation": "less than", "num_words": 20}),
    ],
    topic="travel",
    split="train",
)
BOTH = "paris is a city of wide avenues, old bridges and small cafes along the river."
LOWERCASE_ONLY = " ".join(["paris has many quiet streets and lovely parks to walk in."] * 3)  # 33 words
NEITHER = " ".join(["Paris has many quiet streets and lovely parks to walk in."] * 3)
FLATTERING = "what a great question! paris is a city of bridges, cafes and long walks by the river."


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> VerifierJudge:
    ensure_punkt(tmp_path_factory.mktemp("data"))
    return VerifierJudge(JudgeConfig(tie_margin=0.05, failure_penalty=0.25))


def test_scores_are_share_of_constraints_met(judge):
    assert judge.score(PROMPT, BOTH)[0] == pytest.approx(1.0)
    assert judge.score(PROMPT, NEITHER)[0] == pytest.approx(0.0 - 0.25)  # also repetitive
    assert judge.score(PROMPT, LOWERCASE_ONLY)[0] == pytest.approx(0.5 - 0.25)


# Three constraints, two of them Flywheel's own: partial credit tells apart answers that a
# met-all-or-nothing score would tie.
THREE = Prompt(
    id="p3",
    text='Give some practical tips about brewing tea. Use the word "kettle" exactly 2 times. '
    'Make "minutes" the very last word of your answer. Do not use any commas.',
    constraints=[
        Constraint(id="flywheel:word_exactly", kwargs={"word": "kettle", "times": 2}),
        Constraint(id="flywheel:last_word", kwargs={"word": "minutes"}),
        Constraint(id="punctuation:no_comma"),
    ],
    topic="tea",
)
ALL_THREE = ("Good tea needs soft water and a clean pot. "
             "Fill the kettle with fresh water. Warm the pot from the kettle first. Then let the leaves steep for four minutes")
TWO_OF_THREE = "Good tea needs soft water and a clean pot. Fill the kettle with fresh water. Warm the pot first. Then let the leaves steep for four minutes"
ONE_OF_THREE = "Good tea needs soft water and a clean pot. Fill the kettle with fresh water. Warm the pot first. Then let the leaves steep for a while"
NONE_OF_THREE = "Good tea needs soft water and a clean pot. Warm the pot first. Pour the water over the leaves, then let them steep for a while."


def test_partial_credit_orders_answers_by_how_many_constraints_they_meet(judge):
    scores = [judge.score(THREE, text)[0] for text in (ALL_THREE, TWO_OF_THREE, ONE_OF_THREE, NONE_OF_THREE)]
    assert scores == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert judge.compare(THREE, TWO_OF_THREE, ONE_OF_THREE).verdict == "A"
    assert judge.compare(THREE, ONE_OF_THREE, TWO_OF_THREE).verdict == "B"
    assert judge.compare(THREE, NONE_OF_THREE, ONE_OF_THREE).verdict == "B"
    # Meeting the same number of constraints, different ones, is still a tie.
    other_one = "Good tea needs soft water and a clean pot. Fill the pot with fresh water. Warm it first. Then let the leaves steep for a while"
    assert judge.compare(THREE, ONE_OF_THREE, other_one).verdict == "tie"


def test_failure_modes_are_penalised_and_named(judge):
    score, reason = judge.score(PROMPT, FLATTERING)
    assert score == pytest.approx(1.0 - 0.25)
    assert "sycophantic" in reason


def test_verdicts_follow_scores_in_either_order(judge):
    assert judge.compare(PROMPT, BOTH, LOWERCASE_ONLY).verdict == "A"
    assert judge.compare(PROMPT, LOWERCASE_ONLY, BOTH).verdict == "B"
    assert judge.compare(PROMPT, BOTH, BOTH).verdict == "tie"


def test_differences_within_tie_margin_are_ties(tmp_path):
    lenient = VerifierJudge(JudgeConfig(tie_margin=0.3, failure_penalty=0.25))
    # 1.0 against 0.75: a real difference, but inside this judge's margin.
    assert lenient.compare(PROMPT, BOTH, FLATTERING).verdict == "tie"


def test_judge_pairs_compares_every_pair_once(judge):
    texts = [BOTH, LOWERCASE_ONLY, NEITHER, FLATTERING]
    candidates = [Candidate(prompt_id="p1", index=i, text=t, temperature=0.7, n_tokens=10) for i, t in enumerate(texts)]
    judgments = judge_pairs([PROMPT], candidates, judge, progress=False)
    assert [(j.index_a, j.index_b) for j in judgments] == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    by_pair = {(j.index_a, j.index_b): j.verdict for j in judgments}
    assert by_pair[(0, 1)] == "A" and by_pair[(2, 3)] == "B" and by_pair[(1, 2)] == "A"
    assert judge_summary(judgments)["n_comparisons"] == 6


def test_candidates_of_unknown_prompts_are_refused(judge):
    stray = [Candidate(prompt_id="nope", index=0, text="x", temperature=1.0, n_tokens=1)]
    with pytest.raises(ValueError, match="unknown prompts: nope"):
        judge_pairs([PROMPT], stray, judge, progress=False)


def test_registry_names_the_known_judges():
    assert isinstance(build_judge(JudgeConfig(name="ifeval")), VerifierJudge)
    assert issubclass(JUDGES.get("verifier"), Judge)
    with pytest.raises(KeyError, match="known: ifeval, llm, openai, verifier"):
        build_judge(JudgeConfig(name="gpt-judge"))


def test_cohen_kappa_on_known_cases():
    from tasks.judge import cohen_kappa

    assert cohen_kappa(["A", "B", "A", "B"], ["A", "B", "A", "B"]) == 1.0
    # Observed 0.5, chance 0.5: no agreement beyond chance.
    assert cohen_kappa(["A", "A", "B", "B"], ["A", "B", "A", "B"]) == pytest.approx(0.0)
    assert cohen_kappa(["A", "B"], ["B", "A"]) == pytest.approx(-1.0)


def test_agreement_of_two_judges_on_the_same_pairs(judge):
    from tasks.judge import judge_agreement

    lenient = VerifierJudge(JudgeConfig(tie_margin=0.3, failure_penalty=0.25))
    pairs = [(PROMPT, BOTH, LOWERCASE_ONLY), (PROMPT, BOTH, FLATTERING), (PROMPT, NEITHER, BOTH)]
    figures = judge_agreement(judge, lenient, pairs)
    # Both say A, then A vs tie (inside the lenient margin), then both B.
    assert figures["n"] == 3 and figures["agreement"] == pytest.approx(2 / 3)


def test_gaming_modes_cost_score_with_per_mode_penalties(judge):
    """The proof run's stuffed, terse answer scores below a real answer that meets the same constraint,
    and a per-mode penalty replaces the default for its mode."""
    end = "Is there anything else I can help with?"
    constraint = Constraint(id="startend:end_checker", kwargs={"end_phrase": end})
    prompt = Prompt(id="oil", text=f'Explain checking a car\'s oil to a beginner. End your answer with the exact phrase "{end}" and nothing after it.',
                    constraints=[constraint], topic="car-oil")
    hacked = f"<<my title>>: Checking a car's oil {end}"
    real = ("Park on level ground and let the engine cool. Pull out the dipstick, wipe it, push it back in and pull it "
            f"out again: the oil should sit between the two marks. {end}")
    score, reason = judge.score(prompt, hacked)
    assert score == pytest.approx(1.0 - 2 * 0.25) and "stuffed, too_short" in reason
    assert judge.score(prompt, real)[0] == pytest.approx(1.0)
    assert judge.compare(prompt, hacked, real).verdict == "B"
    strict = VerifierJudge(JudgeConfig(failure_penalty=0.25, failure_penalties={"stuffed": 0.6}))
    assert strict.score(prompt, hacked)[0] == pytest.approx(1.0 - 0.6 - 0.25)


def test_unknown_failure_mode_penalty_is_refused():
    with pytest.raises(ValueError, match="unknown failure modes \\['stufed'\\]"):
        VerifierJudge(JudgeConfig(failure_penalties={"stufed": 0.5}))
