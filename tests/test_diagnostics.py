"""The first optimizer step and the not_learning alarm: a round's first step learns at its full
rate, and not_learning is raised on a policy that did not move, not on the sampling error of a
few batches."""

import pytest

from infra.records import PreferencePair
from infra.settings import ModelConfig, TrainConfig
from tasks.train import TrainJob, train_policy
from tasks.training.diagnostics import not_learning_floor, training_alarms


def _pairs(n):
    return [PreferencePair(prompt_id=str(i), prompt=f"Name a colour, number {i}.", chosen=f"Blue is a fine colour, {i}.",
                           rejected=f"no no no no {i}", score_chosen=1.0, score_rejected=0.0, similarity=0.2) for i in range(n)]


def _train(tiny_model, tmp_path, n_pairs, learning_rate):
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=[learning_rate], lora_r=4, lora_alpha=8, heldout_share=0)
    return train_policy(TrainJob(checkpoint=tiny_model, pairs=_pairs(n_pairs), config=config, model=ModelConfig(dtype="fp32"),
                                 round_index=1, output_dir=tmp_path))


def _steps(result):
    return [h for h in result.log_history if "loss" in h and "train_loss" not in h]


def test_the_first_step_learns_at_the_full_rate(tiny_model, tmp_path):
    steps = _steps(_train(tiny_model, tmp_path, 12, 1e-3))
    assert len(steps) == 3
    assert steps[0]["learning_rate"] == pytest.approx(1e-3), "the first step ran at another rate (a warm-up from 0?)"
    # Step 1's update already moved the policy: step 2's rewards are no longer the reference's 0.
    assert steps[0]["rewards/margins"] == 0.0 and steps[1]["rewards/margins"] != 0.0


def test_not_learning_is_raised_on_a_challenger_that_did_not_move(tiny_model, tmp_path):
    # A rate so small the weights do not change in fp32: chosen and rejected keep the reference's
    # rewards, 0, so no pair is ranked right, step after step.
    result = _train(tiny_model, tmp_path, 24, 1e-15)
    assert all(h["rewards/margins"] == 0.0 for h in _steps(result))
    assert "not_learning" in [a.name for a in result.alarms], [a.message for a in result.alarms]
    [alarm] = [a for a in result.alarms if a.name == "not_learning"]
    assert "sampling error over ~12 pairs" in alarm.message, alarm.message


def _step(acc, step):
    return {"loss": 0.6931, "rewards/accuracies": acc, "rewards/chosen": 0.0, "rewards/rejected": 0.0, "step": step}


def test_not_learning_reads_neither_the_first_step_nor_a_dozen_pairs_at_chance():
    # The demo's round 2 (3 steps of ~7 pairs): step 1 measured before any update (accuracy 0: every
    # pair a tie at the reference), then 0.0 (the step after the old rate-0 warm-up) and 0.75.
    demo = [_step(0.0, 1), _step(0.0, 2), _step(0.75, 3)]
    assert [a.name for a in training_alarms(demo)] == ["not_learning"]  # the bare band, as before
    assert training_alarms(demo, pairs_per_step=20 / 3) == []  # 0.375 over ~13 pairs: within the noise of 0.55
    # A policy that did not move at all is below the floor at any size.
    flat = [_step(0.0, s) for s in range(1, 4)]
    assert [a.name for a in training_alarms(flat, pairs_per_step=20 / 3)] == ["not_learning"]
    # The first step alone decides nothing: its rewards are the starting policy's.
    assert training_alarms([_step(0.0, 1)], pairs_per_step=8) == []
    # With many pairs the floor nears the band: 0.45 over 6 steps of 64 pairs is not learning.
    long = [_step(0.0, 1)] + [_step(0.45, s) for s in range(2, 13)]
    assert [a.name for a in training_alarms(long, pairs_per_step=64)] == ["not_learning"]


def test_the_floor_is_the_band_less_one_sided_sampling_error():
    assert not_learning_floor(0.55, 2, None) == 0.55
    assert not_learning_floor(0.55, 2, 6) == pytest.approx(0.55 - 1.6449 * (0.55 * 0.45 / 12) ** 0.5, abs=1e-4)
    assert not_learning_floor(0.55, 6, 64) > not_learning_floor(0.55, 2, 6)
