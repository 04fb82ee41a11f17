"""Names in a config are checked against the registries when it loads; thresholds reach the alarms."""

from __future__ import annotations

import pytest

from infra.settings import ConfigError, DiagnosticsConfig, FlywheelConfig, TrainConfig, load_config
from tasks.config_checks import check_config, load_checked_config
from tasks.training.diagnostics import ALARMS, diagnose_training
from tasks.training.dpo_args import MANAGED_DPO_ARGS


def test_good_configs_pass_unchanged():
    config = load_config(None, ["judge.compare_with=[ifeval]", "evaluate.judge=verifier", "train.dpo_args={weight_decay: 0.01}",
                                "promotion.blocking_alarms=[reference_mismatch, over_optimization]"])
    assert check_config(config) is config
    assert load_checked_config("configs/demo.yaml").loop == load_config("configs/demo.yaml").loop


def test_problems_are_listed_together_with_the_origin():
    config = load_config(None, ["judge.name=verifer", "regression.per_task_tolerance={hellaswg: 0.05}",
                                "train.dpo_args={learning_rate: 0.1, lr_schedule_type: cosine}"])
    with pytest.raises(ConfigError) as err:
        check_config(config, "exp.yaml")
    lines = str(err.value).splitlines()
    assert lines[0] == "invalid configuration (exp.yaml):"
    assert lines[1:] == [
        "  judge.name: unknown judge 'verifer'; known: ifeval, llm, openai, verifier",
        ("  regression.per_task_tolerance: unknown benchmark 'hellaswg'; known: arc_challenge, arc_easy, boolq, "
         "hellaswag, lambada, piqa"),
        "  train.dpo_args.learning_rate: managed by Flywheel; set train.learning_rate (a per-round schedule) instead",
        "  train.dpo_args.lr_schedule_type: not a field of trl.DPOConfig; did you mean 'lr_scheduler_type'?",
    ]


def test_managed_keys_are_dpo_config_fields():
    import dataclasses

    from trl import DPOConfig

    assert set(MANAGED_DPO_ARGS) <= {f.name for f in dataclasses.fields(DPOConfig)}


def test_dpo_args_cannot_override_managed_keys():
    import torch

    from tasks.training.dpo_args import trainer_args

    config = TrainConfig(dpo_args={"weight_decay": 0.01})
    args = trainer_args(config, 1, torch.device("cpu"), torch.float32, "out")
    assert args.weight_decay == 0.01 and args.beta == config.beta[0]
    with pytest.raises(ValueError, match="beta"):
        trainer_args(TrainConfig(dpo_args={"beta": 0.5}), 1, torch.device("cpu"), torch.float32, "out")


def test_blocking_alarms_description_names_every_alarm():
    description = FlywheelConfig.model_fields["promotion"].annotation.model_fields["blocking_alarms"].description
    assert all(name in description for name in ALARMS)


def _step(loss, acc, chosen, rejected):
    return {"loss": loss, "rewards/accuracies": acc, "rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected}


HEALTHY = [_step(0.6931, 0.0, 0.0, 0.0), _step(0.66, 0.6, 0.05, -0.05), _step(0.6, 0.75, 0.1, -0.2), _step(0.55, 0.8, 0.1, -0.3)]


def _names(history, **thresholds):
    return [a.name for a in diagnose_training(history, DiagnosticsConfig(**thresholds))]


def test_thresholds_reach_the_alarms():
    assert _names(HEALTHY) == []
    # The late reward accuracy is 0.775: inside the default band, under a stricter one's floor.
    assert _names(HEALTHY, reward_accuracy_band=(0.8, 0.95)) == ["not_learning"]
    assert _names(HEALTHY, reward_accuracy_band=(0.5, 0.7)) == ["overfitting"]
    off_by_005 = [_step(0.6431, 0.0, 0.0, 0.0)] + HEALTHY[1:]
    assert _names(off_by_005) == ["reference_mismatch"]
    assert _names(off_by_005, initial_loss_tolerance=0.1) == []
    # Training margin 0.35, held-out 0.1 after the last epoch: a ratio of 0.29.
    with_heldout = HEALTHY + [{"eval_rewards/margins": 0.1, "eval_rewards/accuracies": 0.5}]
    assert _names(with_heldout) == []
    assert _names(with_heldout, over_optimization_ratio=0.5) == ["over_optimization"]
    assert _names(with_heldout, over_optimization_ratio=0.5, over_optimization_min_margin=0.4) == []



def test_unknown_failure_mode_penalty_is_refused_at_load():
    from infra.settings import ConfigError, load_config
    from tasks.config_checks import check_config

    with pytest.raises(ConfigError, match="judge.failure_penalties: unknown failure mode 'stufed'"):
        check_config(load_config(None, ["judge.failure_penalties={stufed: 1.0}"]))
