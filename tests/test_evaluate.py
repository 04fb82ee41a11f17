"""The pairwise eval's figures from hand-made answers (no model): constraint satisfaction on the
types trained on and on the unseen ones apart, and the unconstrained prompts' figures."""

from __future__ import annotations

import pytest

from infra.records import Completion, Constraint, Prompt
from infra.settings import EvalConfig, FlywheelConfig, JudgeConfig
from tasks.evaluate import (
    PairwiseResult,
    evaluate_pairwise,
    evaluate_unconstrained,
    model_judge_name,
    pairwise_metrics,
)
from tasks.judge import VerifierJudge

NO_COMMA = Constraint(id="punctuation:no_comma")
TITLE = Constraint(id="detectable_format:title")
LOWERCASE = Constraint(id="change_case:english_lowercase")
NO_CAR = Constraint(id="keywords:forbidden_words", kwargs={"forbidden_words": ["car"]})
UNSEEN = {NO_COMMA.id, NO_CAR.id}

PROMPTS = [
    Prompt(id="a", text="Explain tides. Do not use any commas. Give your answer a title.", constraints=[NO_COMMA, TITLE], split="eval"),
    Prompt(id="b", text="Describe tea in lowercase.", constraints=[LOWERCASE], split="eval"),
    Prompt(id="c", text="Explain parking rules without the word car.", constraints=[NO_CAR], split="eval"),
]
# The champion meets only the title (seen); the challenger meets every constraint.
CHAMPION = {
    "a": "<<Tides>>\nThe moon pulls the sea, and the sea rises twice a day.",
    "b": "Tea is brewed from leaves. Boil the kettle and wait three minutes.",
    "c": "Park your car in a marked space and show the permit in the evening.",
}
CHALLENGER = {
    "a": "<<Tides>>\nThe moon pulls the sea so the sea rises twice a day.",
    "b": "tea is brewed from leaves. boil the kettle and wait three minutes.",
    "c": "Park in a marked space and show the permit in the evening.",
}


def completions(policy: str, texts: dict[str, str], prompts=PROMPTS) -> list[Completion]:
    by_id = {p.id: p for p in prompts}
    from tasks.constraints import constraint_score

    return [Completion(prompt_id=k, policy=policy, text=t, constraint_score=constraint_score(t, by_id[k].constraints))
            for k, t in texts.items()]


@pytest.fixture(scope="module")
def judge():
    return VerifierJudge(JudgeConfig())


def test_constraint_satisfaction_is_reported_for_seen_and_unseen_types(judge):
    result, verdicts = evaluate_pairwise(
        PROMPTS, completions("champion", CHAMPION), completions("challenger", CHALLENGER), judge, EvalConfig(), UNSEEN
    )
    assert (result.n_seen_constraints, result.n_unseen_constraints) == (2, 2)
    assert (result.champion_seen_rate, result.challenger_seen_rate) == (0.5, 1.0)  # title met; lowercase not
    assert (result.champion_unseen_rate, result.challenger_unseen_rate) == (0.0, 1.0)
    assert result.wins == 3 and len(verdicts) == 3
    # Without unseen types every constraint is a seen one.
    plain, _ = evaluate_pairwise(PROMPTS, completions("champion", CHAMPION), completions("challenger", CHALLENGER), judge, EvalConfig())
    assert plain.n_unseen_constraints == 0 and plain.champion_unseen_rate is None and plain.challenger_seen_rate == 1.0
    assert plain.champion_seen_rate == 0.25
    # Unknown rates survive the JSON round trip the stage runner reloads through.
    assert PairwiseResult.model_validate_json(plain.model_dump_json()) == plain


EVERYDAY = [Prompt(id=f"u{i}", text=t, split="eval") for i, t in enumerate([
    "How do I get red wine out of a carpet?",
    "Write a short birthday message for my aunt.",
    "Why does bread go stale?",
    "How do I descale a kettle?",
])]
FULL = {
    "u0": "Blot the red wine with a clean cloth, then pour cold water on the carpet and blot again. "
          "Sprinkle salt on the wine stain, let it sit, and vacuum it up.",
    "u1": "Happy birthday to my favourite aunt! Thank you for every card, every phone call and every slice of cake. Have a lovely day.",
    "u2": "Bread goes stale as the starch in it recrystallises and the crumb loses moisture to the crust and the air, so stale bread feels dry and hard.",
    "u3": "To descale a kettle, fill it halfway with equal parts water and white vinegar, boil it, leave it for an hour, then rinse the kettle well.",
}
TERSE = {"u0": "Use salt.", "u1": "Happy birthday.", "u2": "It dries.", "u3": "Use vinegar."}


def test_unconstrained_prompts_report_length_failure_modes_and_verdicts(judge):
    champion, challenger = completions("champion", FULL, EVERYDAY), completions("challenger", TERSE, EVERYDAY)
    result, verdicts = evaluate_unconstrained(EVERYDAY, champion, challenger, EvalConfig(), baseline=champion)
    assert result.n == 4 and verdicts == [] and result.judge is None and result.win_rate is None
    assert result.challenger_words == [2, 2, 2, 2] and result.challenger_mean_words == 2.0
    assert result.baseline_mean_words == result.champion_mean_words > 20
    assert len(result.champion_quartiles) == 3 and result.champion_quartiles == sorted(result.champion_quartiles)
    assert result.challenger_failure_rates["any"] > result.champion_failure_rates["any"]
    assert set(result.baseline_failure_rates) == set(result.champion_failure_rates)
    # With a judge (a model judge in a run; any judge here), both orders are judged.
    judged, verdicts = evaluate_unconstrained(EVERYDAY, champion, challenger, EvalConfig(bootstrap_samples=200), judge=judge)
    assert judged.judge == "verifier" and len(verdicts) == 4 and judged.wins + judged.ties + judged.losses == 4
    assert judged.win_rate is not None and judged.win_rate_low <= judged.win_rate <= judged.win_rate_high
    assert judged.baseline_mean_words is None and judged.baseline_words == []


def test_metrics_include_the_unseen_rates_and_the_unconstrained_figures(judge):
    result, _ = evaluate_pairwise(
        PROMPTS, completions("champion", CHAMPION), completions("challenger", CHALLENGER), judge, EvalConfig(), UNSEEN
    )
    found, _ = evaluate_unconstrained(
        EVERYDAY, completions("champion", FULL, EVERYDAY), completions("challenger", TERSE, EVERYDAY), EvalConfig(),
        baseline=completions("champion", FULL, EVERYDAY),
    )
    result = result.model_copy(update={"unconstrained": found})
    metrics = pairwise_metrics(result)
    assert metrics["challenger_unseen_rate"] == 1.0 and metrics["champion_seen_rate"] == 0.5
    assert metrics["unconstrained/challenger_mean_words"] == 2.0
    assert metrics["unconstrained/baseline_mean_words"] == found.baseline_mean_words
    assert metrics["unconstrained/challenger_words_median"] == 2.0
    assert metrics["unconstrained/challenger_failure/any"] == found.challenger_failure_rates["any"]
    assert "champion_failure/any" in metrics and "unconstrained/win_rate" not in metrics  # None: not judged
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert PairwiseResult.model_validate_json(result.model_dump_json()) == result


def test_only_a_model_judge_judges_the_unconstrained_prompts():
    assert model_judge_name(FlywheelConfig()) is None
    assert model_judge_name(FlywheelConfig.model_validate({"judge": {"name": "openai"}})) == "openai"
    assert model_judge_name(FlywheelConfig.model_validate({"evaluate": {"judge": "openai"}})) == "openai"
    assert model_judge_name(FlywheelConfig.model_validate({"judge": {"name": "openai"}, "evaluate": {"judge": "verifier"}})) == "openai"


def test_telling_examples_are_the_largest_gains_and_losses(judge):
    from tasks.evaluate import telling_examples

    champion = completions("champion", CHAMPION)
    # b loses its lowercase: a loss for the later policy; a and c gain a constraint each.
    later = dict(CHALLENGER, b="Tea is brewed from leaves. Boil the kettle and wait three minutes.")
    challenger = completions("challenger", later)
    _, verdicts = evaluate_pairwise(PROMPTS, champion, challenger, judge, EvalConfig(), UNSEEN)
    best, worst = telling_examples(PROMPTS, {"champion": champion, "challenger": challenger}, verdicts, n=2)
    assert [e.prompt_id for e in best] == ["c", "a"] and [e.after_score - e.before_score for e in best] == [1.0, 0.5]
    assert worst[0].prompt_id == "b" and worst[0].after_score == worst[0].before_score == 0.0
    assert best[0].before == CHAMPION["c"] and best[0].after == CHALLENGER["c"] and best[0].prompt == PROMPTS[2].text


def test_answer_sets_share_one_sampling_call_and_come_back_apart(tiny_model):
    """Held-out and everyday prompts decode in one call (their batches shared), each answer returned
    to its own set, even where two sets use the same prompt id."""
    from infra.models import load_model, load_tokenizer
    from infra.settings import ModelConfig
    from tasks.evaluate import generate_answer_sets
    from tests.sampling_helpers import hf_backend_from_loaded

    backend = hf_backend_from_loaded(load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model))
    calls = []
    sample = backend.sample
    backend.sample = lambda requests, *args, **kwargs: calls.append(len(requests)) or sample(requests, *args, **kwargs)
    everyday = [Prompt(id="a", text="Tell me about tea."), Prompt(id="z", text="Name a river.")]
    held_out, answers = generate_answer_sets(backend, [PROMPTS, everyday], "champion", EvalConfig(max_new_tokens=4, batch_size=8))
    assert calls == [5]
    assert [c.prompt_id for c in held_out] == ["a", "b", "c"] and [c.prompt_id for c in answers] == ["a", "z"]
    assert all(c.policy == "champion" for c in held_out + answers)
    assert generate_answer_sets(backend, [[], []], "champion", EvalConfig()) == [[], []] and calls == [5]


def test_round_zero_answers_handed_in_are_cached_as_the_baseline(tmp_path):
    """While the champion is the round-0 policy, its everyday answers become the baseline's: cached,
    and read back later without loading a model (the base named here does not exist)."""
    from flows.answer_cache import baseline_answers
    from infra.store_factory import store_from_config

    config = FlywheelConfig.model_validate({"loop": "baseline", "model": {"base": str(tmp_path / "no-such-model")},
                                            "storage": {"data_dir": str(tmp_path / "data")}})
    store = store_from_config(config.storage)
    everyday = [Prompt(id="t", text="Describe tea.")]
    given = [Completion(prompt_id="t", policy="champion", text="Tea is a drink.", constraint_score=1.0)]
    assert baseline_answers(store, config, everyday, answers=given) == given
    assert baseline_answers(store, config, everyday) == given
    with pytest.raises(Exception):  # nothing cached for other prompts: it must load the (missing) model
        baseline_answers(store, config, [Prompt(id="u", text="Describe coffee.")])


def test_each_kinds_change_comes_with_a_paired_interval(judge):
    result, _ = evaluate_pairwise(
        PROMPTS, completions("champion", CHAMPION), completions("challenger", CHALLENGER), judge, EvalConfig(), UNSEEN
    )
    # Unseen: a's no-comma and c's no-car, both gained (0 -> 1) on every resample.
    assert (result.n_unseen_prompts, result.unseen_change_low, result.unseen_change_high) == (2, 1.0, 1.0)
    # Seen: a's title kept, b's lowercase gained: +0.5 pooled, between 0 and +1 by resample.
    assert result.n_seen_prompts == 2 and 0.0 <= result.seen_change_low <= 0.5 <= result.seen_change_high <= 1.0
    plain, _ = evaluate_pairwise(PROMPTS, completions("champion", CHAMPION), completions("challenger", CHALLENGER), judge, EvalConfig())
    assert plain.n_unseen_prompts == 0 and plain.unseen_change_low is None and plain.unseen_change_high is None


def test_the_paired_interval_sees_a_small_shared_drop_that_independent_ones_cannot():
    import numpy as np

    from tasks.evaluate import paired_change_interval

    rng = np.random.default_rng(0)
    # 300 prompts of 2 constraints; the champion meets ~40%; the challenger keeps each outcome but
    # loses 1 in 10 of those met: a drop of ~4 points that both answers' shared difficulty hides.
    before = {f"p{i}": (int(rng.binomial(2, 0.4)), 2) for i in range(300)}
    after = {k: (met - int(rng.binomial(met, 0.1)), total) for k, (met, total) in before.items()}
    low, high = paired_change_interval(before, after, 2000, 0)
    drop = sum(a[0] - b[0] for a, b in zip(after.values(), before.values())) / 600
    assert low <= drop <= high < 0, (low, drop, high)
    assert (high - low) / 2 < 0.02  # a binomial interval of either rate over 600 constraints is about +-0.039
    same = paired_change_interval(before, before, 500, 0)
    assert same == (0.0, 0.0)
    assert paired_change_interval({}, after, 500, 0) == (None, None)
