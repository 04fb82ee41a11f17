"""Capability regression: real lm-eval scoring on offline data, and the drop gate."""

from __future__ import annotations

import pytest

from infra.models import load_model, load_tokenizer
from infra.settings import ModelConfig
from tasks.regression import BENCHMARKS, BenchmarkScore, compare_scores, score_benchmarks


def _score(task: str, value: float) -> BenchmarkScore:
    return BenchmarkScore(task=task, metric="acc_norm", score=value, stderr=0.03, n_items=100)


def test_every_registered_benchmark_scores_offline(tiny_model, tmp_path):
    model = load_model(tiny_model, ModelConfig(dtype="fp32"))
    tasks = BENCHMARKS.names()
    assert {"arc_easy", "arc_challenge", "hellaswag", "piqa", "boolq", "lambada"} <= set(tasks)
    scores = score_benchmarks(model, load_tokenizer(tiny_model), tasks, limit=3, batch_size=8, cache_dir=tmp_path)
    assert set(scores) == set(tasks)
    for task, score in scores.items():
        assert score.n_items == 3, task
        assert 0.0 <= score.score <= 1.0, task
        assert score.metric == BENCHMARKS.get(task).metric


def test_scoring_is_repeatable(tiny_model, tmp_path):
    model = load_model(tiny_model, ModelConfig(dtype="fp32"))
    tokenizer = load_tokenizer(tiny_model)
    first = score_benchmarks(model, tokenizer, ["arc_easy"], limit=5, batch_size=4, cache_dir=tmp_path)
    second = score_benchmarks(model, tokenizer, ["arc_easy"], limit=5, batch_size=4, cache_dir=tmp_path)
    assert first == second


def test_drop_beyond_tolerance_fails_with_a_reason():
    before = {"arc_easy": _score("arc_easy", 0.60), "piqa": _score("piqa", 0.70)}
    after = {"arc_easy": _score("arc_easy", 0.55), "piqa": _score("piqa", 0.71)}
    result = compare_scores(before, after, tolerance=0.02)
    assert not result.passed
    assert [t.passed for t in result.tasks] == [False, True]
    assert result.reasons == ["arc_easy dropped 5.0 points (allowed 2.0)"]


def test_drops_within_two_standard_errors_pass():
    before = {"arc_easy": _score("arc_easy", 0.60)}  # stderr 0.03: two of them allow 6 points
    assert compare_scores(before, {"arc_easy": _score("arc_easy", 0.55)}, 0.01, stderr_multiple=2).passed
    blocked = compare_scores(before, {"arc_easy": _score("arc_easy", 0.53)}, 0.01, stderr_multiple=2)
    assert blocked.reasons == ["arc_easy dropped 7.0 points (allowed 6.0)"]


def test_per_task_tolerance_replaces_the_default():
    before = {"arc_easy": _score("arc_easy", 0.60), "piqa": _score("piqa", 0.70)}
    after = {"arc_easy": _score("arc_easy", 0.55), "piqa": _score("piqa", 0.65)}
    result = compare_scores(before, after, 0.01, per_task={"piqa": 0.10})
    assert [t.passed for t in result.tasks] == [False, True]


def test_drop_within_tolerance_passes():
    before = {"arc_easy": _score("arc_easy", 0.60)}
    result = compare_scores(before, {"arc_easy": _score("arc_easy", 0.58)}, tolerance=0.02)
    assert result.passed and result.tasks[0].delta == pytest.approx(-0.02)


def test_tasks_scored_on_one_side_only_are_an_error():
    with pytest.raises(ValueError, match="piqa \\(only after\\)"):
        compare_scores({"arc_easy": _score("arc_easy", 0.6)}, {"arc_easy": _score("arc_easy", 0.6), "piqa": _score("piqa", 0.6)}, 0.02)


def test_unknown_benchmark_lists_the_known_ones():
    with pytest.raises(KeyError, match="known: arc_challenge, arc_easy"):
        BENCHMARKS.get("mmlu")
