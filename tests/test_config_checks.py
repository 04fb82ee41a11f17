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


# Your own model, prompts and judge (configs/example-custom.yaml): what can go wrong is refused at load.

NOT_DOWNLOADED = "flywheel-tests/no-such-model-in-the-cache"


def _online(monkeypatch):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)


def test_the_custom_example_loads_and_passes_the_checks(monkeypatch):
    """Online, its hub id loads (downloaded at the first round; nothing is fetched at load)."""
    _online(monkeypatch)
    config = load_checked_config("configs/example-custom.yaml")
    assert config.judge.name == "openai" and config.prompts.source == "jsonl"
    assert config.model.base == "HuggingFaceTB/SmolLM2-360M-Instruct"


def test_every_openai_judge_field_is_in_the_custom_example():
    import yaml

    from infra.settings import OpenAIJudgeConfig

    written = yaml.safe_load(open("configs/example-custom.yaml"))["judge"]["openai"]
    assert set(written) == set(OpenAIJudgeConfig.model_fields)


def test_a_hub_id_not_downloaded_is_refused_offline_with_what_to_do(monkeypatch):
    # For real: the id is looked up in this machine's hub cache, with the hub out of reach.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        load_checked_config(None, [f"model.base={NOT_DOWNLOADED}"])
    message = str(err.value)
    assert f"model.base: '{NOT_DOWNLOADED}' is no folder on this machine and is not in the Hugging Face cache" in message
    assert f"`hf download {NOT_DOWNLOADED}`" in message and "local folder" in message
    _online(monkeypatch)
    assert load_checked_config(None, [f"model.base={NOT_DOWNLOADED}"]).model.base == NOT_DOWNLOADED


def test_a_model_base_that_is_neither_folder_nor_hub_id_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no config.json"):
        load_checked_config(None, [f"model.base={tmp_path / 'empty'}"])
    with pytest.raises(ConfigError, match="is no folder on this machine and no hub id"):
        load_checked_config(None, [f"model.base={tmp_path / 'missing' / 'deep' / 'path'}"])


def test_the_preflight_names_an_unreachable_hub_for_a_hub_id_not_downloaded(monkeypatch):
    from flows import preflight
    from tests.conftest import free_port

    _online(monkeypatch)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setattr(preflight, "ANSWER_WITHIN_S", 0)
    problem = preflight._hub_problem(load_config(None, [f"model.base={NOT_DOWNLOADED}"]))
    assert "the Hugging Face hub" in problem and f"hf download {NOT_DOWNLOADED}" in problem
    assert preflight._hub_problem(load_config(None, [])) is None  # the bundled model needs no hub


def test_the_cli_keeps_the_hub_offline_only_for_local_models(monkeypatch, tmp_path):
    import os

    from flows.cli import _prepare_environment

    for base, offline in ((NOT_DOWNLOADED, None), ("smollm2-135m-instruct", "1")):
        monkeypatch.setattr(os, "environ", {"PREFECT_HOME": str(tmp_path / "prefect")})  # a fresh environment each time
        _prepare_environment(load_config(None, [f"model.base={base}", f"storage.data_dir={tmp_path}"]))
        assert os.environ.get("HF_HUB_OFFLINE") == offline, base


def _prompt_file(path, lines):
    import json

    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_plain_prompts_under_the_verifier_are_refused_naming_the_file(tmp_path):
    plain = _prompt_file(tmp_path / "plain.jsonl", [{"text": f"Describe a walk in park {i}.", "split": "train"} for i in range(24)]
                         + [{"text": "Describe tea.", "split": "eval"}])
    overrides = ["prompts.source=jsonl", f"prompts.path={plain}", "prompts.n_train=4", "prompts.n_eval=1"]
    with pytest.raises(ConfigError) as err:
        load_checked_config(None, overrides)
    message = str(err.value)
    assert f"none of the 24 training prompts in {plain} carries a constraint" in message
    assert "judge.name=openai" in message and "Add IFEval constraints" in message
    assert load_checked_config(None, [*overrides, "judge.name=openai"]).judge.name == "openai"


def test_an_answer_budget_as_long_as_the_context_is_refused():
    with pytest.raises(ConfigError, match="generate.max_new_tokens: no room is left for a prompt"):
        load_checked_config(None, ["generate.max_new_tokens=8192"])
