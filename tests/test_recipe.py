"""The recipe against memorising: a fixed reference across rounds, the NLL term, replay, the
best epoch kept, and a reference_mismatch alarm that knows where training starts."""

import math

import pytest
import torch

from infra.records import PreferencePair
from infra.settings import DiagnosticsConfig, ModelConfig, TrainConfig
from tasks.train import TrainJob, train_policy
from tasks.training.diagnostics import Start, diagnose_training, training_alarms
from tasks.training.dpo_args import MANAGED_DPO_ARGS, trainer_args
from tasks.training.training_set import mix_replay
from tests.test_train import _random_pairs, make_pairs


def _pair(i, tag="p"):
    return PreferencePair(prompt_id=f"{tag}{i}", prompt=f"Question {tag}{i}?", chosen=f"A good answer {i}.",
                          rejected=f"bad {i}", score_chosen=1.0, score_rejected=0.0, similarity=0.1)


def test_mix_replay_share_determinism_and_no_duplicates():
    own = [_pair(i) for i in range(30)]
    earlier = [_pair(i, "old") for i in range(40)] + own[:5] + [_pair(0, "old")]  # repeats and this round's own
    mixed, replayed = mix_replay(own, earlier, 0.25, seed=3)
    assert mixed[:30] == own and mixed[30:] == replayed
    assert len(replayed) == 10  # 10 of 40: a quarter
    assert all(p.prompt_id.startswith("old") for p in replayed)
    assert len({(p.prompt, p.chosen, p.rejected) for p in mixed}) == len(mixed)
    assert mix_replay(own, earlier, 0.25, seed=3) == (mixed, replayed)
    assert mix_replay(own, earlier, 0.25, seed=4)[1] != replayed
    # Capped by what there is; disabled by a share of 0 or nothing earlier.
    assert len(mix_replay(own, earlier[:4], 0.5, seed=3)[1]) == 4
    assert mix_replay(own, earlier, 0.0, seed=3) == (own, [])
    assert mix_replay(own, [], 0.25, seed=3) == (own, [])


def test_recipe_keys_are_managed_and_set():
    for key in ("loss_type", "loss_weights"):
        assert "train.nll_weight" in MANAGED_DPO_ARGS[key]
    args = trainer_args(TrainConfig(nll_weight=0.5), 1, torch.device("cpu"), torch.float32, "out", eval_each_epoch=True)
    assert (args.loss_type, args.loss_weights, args.precompute_ref_log_probs) == (["sigmoid", "sft"], [1.0, 0.5], True)
    assert (args.load_best_model_at_end, args.metric_for_best_model, args.save_strategy) == (True, "eval_loss", "epoch")
    plain = trainer_args(TrainConfig(nll_weight=0, keep_best_epoch=False), 1, torch.device("cpu"), torch.float32, "out", True)
    assert (plain.loss_type, plain.loss_weights, plain.load_best_model_at_end) == (["sigmoid"], None, False)
    with pytest.raises(ValueError, match="loss_type"):
        trainer_args(TrainConfig(dpo_args={"loss_type": ["ipo"]}), 1, torch.device("cpu"), torch.float32, "out")


def _config(**changes):
    fields = dict(epochs=2, batch_size=4, learning_rate=[5e-3], beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0,
                  replay_share=0.25)
    return TrainConfig(**{**fields, **changes})


@pytest.fixture(scope="module")
def rounds(tiny_model, tmp_path_factory):
    """Round 1 from the tiny base; round 2 from round 1's policy, against the round-0 policy
    (with round 1's pairs replayed) and against the champion."""
    out = tmp_path_factory.mktemp("rounds")
    pairs, earlier = make_pairs(8), _random_pairs(16, 1)
    # Round 1 moves far enough from the base for round 2's starting rewards to stand clear of 0.
    first = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=_config(reference="initial", learning_rate=[3e-2], epochs=3),
                                  model=ModelConfig(dtype="fp32"), round_index=1, output_dir=out / "r1", reference_checkpoint=tiny_model))
    champion = str(out / "r1" / "merged")
    initial = train_policy(TrainJob(checkpoint=champion, pairs=pairs, config=_config(reference="initial"), model=ModelConfig(dtype="fp32"), round_index=2,
                                    output_dir=out / "initial", reference_checkpoint=tiny_model, earlier_pairs=earlier))
    by_champion = train_policy(TrainJob(checkpoint=champion, pairs=pairs, config=_config(reference="champion", replay_share=0),
                                        model=ModelConfig(dtype="fp32"), round_index=2, output_dir=out / "champion"))
    return first, initial, by_champion


def test_initial_reference_is_fixed_across_rounds(rounds):
    first, initial, by_champion = rounds
    assert first.reference_is_start and not initial.reference_is_start and by_champion.reference_is_start
    n = len(first.reference_logps)
    assert n == 8
    flat = lambda logps: [x for pair in logps for x in pair]  # noqa: E731
    # The same pairs, the same reference (the round-0 policy) in both rounds.
    assert flat(initial.reference_logps[:n]) == pytest.approx(flat(first.reference_logps), abs=1e-4)
    # Against the champion, round 2 measures from round 1's policy instead.
    assert flat(by_champion.reference_logps) != pytest.approx(flat(first.reference_logps), abs=1e-2)


def test_nll_term_shows_in_the_records(rounds, tiny_model, tmp_path):
    first, _, _ = rounds
    assert first.nll_weight == 1.0
    # Sigmoid DPO starts at ln 2; the NLL of a random model's chosen tokens comes on top.
    assert first.initial_loss > math.log(2) + 1
    assert first.start.expected_loss is None
    plain = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(8), config=_config(nll_weight=0, epochs=0.5), model=ModelConfig(dtype="fp32"),
                                  round_index=1, output_dir=tmp_path))
    assert plain.nll_weight == 0 and plain.initial_loss == pytest.approx(math.log(2), abs=1e-3)


def test_replayed_pairs_join_the_training_set(rounds):
    first, initial, by_champion = rounds
    assert first.n_replayed == 0 and by_champion.n_replayed == 0
    # 8 pairs of the round's own, a quarter of the set replayed from the 16 earlier ones.
    assert initial.n_replayed == 3 and initial.n_pairs == 11 and len(initial.reference_logps) == 11
    assert len(set(initial.replayed_prompt_ids)) == 3 and all(i.startswith("r") for i in initial.replayed_prompt_ids)


def test_reference_mismatch_knows_where_round_two_starts(rounds):
    _, initial, by_champion = rounds
    # Round 2 against the round-0 policy does not start at 0, and no alarm says it should.
    assert initial.start != Start(expected_loss=None) and initial.start.train_margin > 0.1, initial.start
    assert "reference_mismatch" not in [a.name for a in initial.alarms], [a.message for a in initial.alarms]
    assert "reference_mismatch" not in [a.name for a in by_champion.alarms], [a.message for a in by_champion.alarms]
    # A real mismatch: a run measured from the champion while it should have been from the round-0
    # policy. (The tiny model's round 1 leaves the pairs' starting rewards ~0.01-0.23 from 0; fp32
    # noise is ~1e-5: a tolerance of 0.005, far below the default's 0.05, keeps the test clear of both.)
    thresholds = DiagnosticsConfig(initial_reward_tolerance=0.005)
    wrong = diagnose_training(by_champion.log_history, thresholds, initial.start)
    assert "reference_mismatch" in [a.name for a in wrong]
    # And the other way round: from the round-0 policy while it should start at 0.
    assert "reference_mismatch" in [a.name for a in diagnose_training(initial.log_history, thresholds)]


def test_reference_mismatch_on_constructed_starts():
    def first_step(loss, chosen, rejected):
        return [{"loss": loss, "rewards/accuracies": 0.5, "rewards/chosen": chosen, "rewards/rejected": rejected, "step": 1}]

    def mismatch(history, start):
        return "reference_mismatch" in [a.name for a in training_alarms(history, start=start)]

    start = Start(expected_loss=None, chosen=(0.3, 0.6), rejected=(-0.2, 0.1), train_margin=0.4)
    assert not mismatch(first_step(2.1, 0.45, 0.0), start)
    assert mismatch(first_step(2.1, 0.0, 0.0), start)
    assert mismatch(first_step(2.1, 0.45, 0.4), start)
    # From its own reference with an NLL term: rewards at 0, the loss anything.
    nll = Start(expected_loss=None)
    assert not mismatch(first_step(3.0, 0.0, 0.01), nll)
    assert mismatch(first_step(3.0, 0.2, 0.0), nll)
    # Sigmoid DPO alone from its own reference (the default): the loss must be ln 2 too.
    assert mismatch(first_step(0.5, 0.0, 0.0), None) and not mismatch(first_step(0.6931, 0.0, 0.0), None)


def test_over_optimization_counts_gains_from_the_start():
    steps = [{"loss": 0.6931, "rewards/accuracies": 0.8, "rewards/margins": 1.2, "step": s} for s in (1, 2, 3, 4)]
    evals = [{"eval_rewards/margins": 1.0, "eval_rewards/accuracies": 0.7, "step": 4, "epoch": 1.0}]
    config = TrainConfig().diagnostics
    # From 0, a held-out margin of 1.0 against 1.2 is healthy; from 1.0 on both it gained nothing.
    assert diagnose_training(steps + evals, config) == []
    start = Start(expected_loss=None, chosen=(1.0, 1.4), rejected=(-0.2, 0.2), train_margin=0.9, heldout_margin=1.0)
    assert [a.name for a in diagnose_training(steps + evals, config, start)] == ["over_optimization"]


def test_best_epoch_is_kept(tiny_model, tmp_path):
    # Random pairs at a high learning rate: held-out loss rises once the policy memorises.
    config = _config(epochs=5, learning_rate=[1e-2], heldout_share=0.34, nll_weight=0, replay_share=0)
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=_random_pairs(12, 0), config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                   output_dir=tmp_path))
    evals = {h["epoch"]: h["eval_loss"] for h in result.log_history if "eval_loss" in h}
    assert len(evals) == 5 and result.best_epoch in evals
    assert evals[result.best_epoch] == min(evals.values())
    # The merged weights are that epoch's: scored again after loading, the same held-out loss.
    assert result.kept_heldout_loss == pytest.approx(evals[result.best_epoch], abs=1e-5)
    if result.best_epoch != max(evals):
        assert result.kept_heldout_loss != pytest.approx(evals[max(evals)], abs=1e-5)
