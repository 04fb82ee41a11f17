"""Every registered objective trains a few steps on the tiny model through its TRL trainer, starts
where it says it starts, and the reference-free ones never touch a reference."""

from __future__ import annotations

import json
import math

import pytest

from infra.settings import ConfigError, ModelConfig, TrainConfig, load_config
from tasks.config_checks import check_config
from tasks.train import TrainJob, train_policy
from tasks.training.objectives import OBJECTIVES, FeedbackFileError, load_feedback
from tests.test_train import make_pairs

EXPECTED_FIRST_LOSS = {"dpo": math.log(2), "robust": math.log(2), "ipo": (1 / (2 * 0.1)) ** 2, "apo_zero": 1.0, "kto": 0.5}


def _config(objective: str, **changes) -> TrainConfig:
    fields = dict(objective=[objective], epochs=1, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8,
                  heldout_share=0, nll_weight=0.0 if objective != "dpo_nll" else 0.5)
    return TrainConfig(**{**fields, **changes})


def _losses(result) -> list[float]:
    return [h["loss"] for h in result.log_history if "loss" in h and "train_loss" not in h]


@pytest.mark.parametrize("name", sorted(OBJECTIVES.names()))
def test_each_objective_trains_and_starts_where_it_says(name, tiny_model, tmp_path):
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(8), config=_config(name), model=ModelConfig(dtype="fp32"), round_index=1,
                                   output_dir=tmp_path))
    losses = _losses(result)
    n_steps = 2 if OBJECTIVES.get(name).paired else 4  # KTO: each pair is two unpaired rows
    assert result.objective == name and result.n_steps == n_steps and len(losses) == n_steps
    assert all(math.isfinite(loss) for loss in losses)
    assert (tmp_path / "merged" / "model.safetensors").exists()
    assert result.trained_tokens > 0 and result.mfu > 0  # every trainer's tokenised columns are counted
    if name in EXPECTED_FIRST_LOSS:  # a zero-initialised adapter: the policy is its own reference
        assert losses[0] == pytest.approx(EXPECTED_FIRST_LOSS[name], rel=1e-3)
        assert result.start.expected_loss == pytest.approx(EXPECTED_FIRST_LOSS[name])
    assert "reference_mismatch" not in [a.name for a in result.alarms], [a.message for a in result.alarms]


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_objectives_run_without_a_reference(name, tiny_model, tmp_path):
    # A reference that cannot be loaded: any reference pass would fail.
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(8), config=_config(name, heldout_share=0.25), model=ModelConfig(dtype="fp32"),
                                   round_index=1, output_dir=tmp_path, reference_checkpoint=str(tmp_path / "no-such-model")))
    assert result.reference == "none" and result.reference_logps == [] and not result.start.check_rewards
    assert any("eval_rewards/margins" in h for h in result.log_history)  # held-out pairs scored each epoch


def test_dpo_nll_logs_both_loss_terms(tiny_model, tmp_path):
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(8), config=_config("dpo_nll"), model=ModelConfig(dtype="fp32"), round_index=1,
                                   output_dir=tmp_path))
    steps = [h for h in result.log_history if "loss/nll" in h]
    assert len(steps) == 2
    for h in steps:
        assert h["loss/nll"] > 0
        # The first step's preference term is ln 2; both add up to the logged loss.
        assert h["loss"] == pytest.approx(h["loss/preference"] + 0.5 * h["loss/nll"], abs=1e-3)
    assert steps[0]["loss/preference"] == pytest.approx(math.log(2), abs=1e-3)
    assert result.nll_weight == 0.5


def test_simpo_gamma_is_absolute():
    import torch

    from tasks.training.dpo_args import trainer_args

    config = _config("simpo").model_copy(update={"simpo": TrainConfig().simpo.model_copy(update={"beta": 2.5, "gamma_beta_ratio": 0.4})})
    args = trainer_args(config, 1, torch.device("cpu"), torch.float32, "out")
    assert (args.loss_type, args.cpo_alpha, args.beta, args.simpo_gamma) == ("simpo", 0.0, 2.5, pytest.approx(1.0))


def _feedback(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_kto_takes_unpaired_feedback(tiny_model, tmp_path):
    feedback = _feedback(tmp_path / "feedback.jsonl", [
        {"prompt": "Name a colour.", "completion": "Green, the colour of leaves.", "label": True},
        {"prompt": "Name a colour.", "completion": "no", "label": False},
        {"prompt": "Name a fruit.", "completion": "An apple.", "label": True},
    ])
    config = _config("kto", kto={"feedback_files": [feedback]})
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(8), config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                   output_dir=tmp_path / "out"))
    assert result.n_feedback == 3 and result.objective == "kto"
    assert result.n_steps == math.ceil((16 + 3) / 4)


def test_malformed_feedback_is_refused_naming_file_and_line(tmp_path):
    bad = _feedback(tmp_path / "bad.jsonl", [
        {"prompt": "Name a colour.", "completion": "Green.", "label": True},
        {"prompt": "Name a colour.", "completion": "no", "label": "yes"},
    ])
    with pytest.raises(FeedbackFileError, match=r"bad\.jsonl, line 2: label must be true or false"):
        load_feedback(bad)
    _feedback(bad, ['{"prompt": "x", "completion": "y", "label": true}', "{not json"])
    with pytest.raises(FeedbackFileError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_feedback(bad)
    with pytest.raises(ConfigError, match=r"train.kto.feedback_files: .*bad\.jsonl, line 2"):
        check_config(load_config(None, ["train.objective=kto", f"train.kto.feedback_files=[{bad}]"]))


def test_objective_names_and_trl_keys_are_checked_at_load():
    with pytest.raises(ConfigError) as err:
        check_config(load_config(None, ["train.objective=[dpo, simpoo]", "train.dpo_args={label_smoothing: 0.2}"]))
    message = str(err.value)
    assert "train.objective: unknown objective 'simpoo'; known: apo_zero, dpo, dpo_nll, ipo, kto, orpo, robust, simpo" in message
    assert "train.dpo_args.label_smoothing: managed by Flywheel; set train.robust.label_smoothing instead" in message
    # A DPOConfig field that SimPO's CPOConfig lacks.
    with pytest.raises(ConfigError, match="train.dpo_args.rpo_alpha: not a field of trl.CPOConfig"):
        check_config(load_config(None, ["train.objective=simpo", "train.dpo_args={rpo_alpha: 0.5}"]))
    with pytest.raises(ConfigError, match="train.nll_weight: must be > 0 for objective dpo_nll"):
        check_config(load_config(None, ["train.objective=dpo_nll", "train.nll_weight=0"]))
