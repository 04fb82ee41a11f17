"""Training in more than one process: the train stage with train.num_processes=2 launches two CPU
processes (`accelerate launch`, DDP over gloo) and is checked against the same stage in one
process with the same global batch: the same loss curve, one merged checkpoint, every step logged
to MLflow once. A diverged loss and a failing process surface as they do in one process.

DeepSpeed is not installed here (and needs GPUs): its config file is only checked for form, and
for the error that says it is missing.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from flows.stage_runner import RoundContext, StageResult
from flows.stages import train_policy_task
from infra import layout
from infra.local_store import LocalArtifactStore
from infra.records import Champion, write_jsonl
from infra.settings import FlywheelConfig, ModelConfig, TrainConfig
from infra.tracking import Tracker
from tasks.launch import accelerate_config, launch_training
from tasks.train import TrainJob
from tasks.training.callbacks import NonFiniteLoss
from tests.test_train import make_pairs

REPO = Path(__file__).resolve().parents[1]
# Two steps an epoch (8 training pairs, 4 a step: 2 in each process), held-out pairs scored each
# epoch and the better epoch kept; no dropout, no NLL term (whose per-token mean is taken per
# process under DDP), a rate that moves the loss visibly.
TRAIN = {"epochs": 2, "batch_size": 4, "learning_rate": [1e-2], "beta": [0.1], "lora_r": 4, "lora_alpha": 8,
         "lora_dropout": 0.0, "heldout_share": 0.34, "nll_weight": 0.0, "max_length": 64}
# Float32 sums taken in another order (two half-batch gradients averaged, against one batch) move
# the loss by about 1e-7 here; a step on other pairs, a half or doubled batch or gradients left
# unsynchronised moves it by more than 1e-3 at this rate (the curve falls by > 0.05).
TOLERANCE = 1e-5


def _stage(tmp_path: Path, tiny_model: str, loop: str, **train) -> tuple[RoundContext, StageResult]:
    """A round's context on a local store and a sqlite MLflow, with a complete filter stage of 12 pairs."""
    config = FlywheelConfig.model_validate({"loop": loop, "model": {"base": tiny_model, "dtype": "fp32"},
                                            "train": {**TRAIN, **train}, "storage": {"data_dir": str(tmp_path / "data")}})
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "multiprocess")
    tracker.start_round(loop, 1, config)
    store = LocalArtifactStore(tmp_path / "artifacts")
    ctx = RoundContext(config=config, round_index=1, store=store, tracker=tracker,
                       champion=Champion(checkpoint=tiny_model, round=0), champion_checkpoint=tiny_model)
    with store.stage(ctx.key(layout.FILTER)) as out:
        write_jsonl(out / layout.PAIRS, make_pairs(12))
    return ctx, StageResult(ctx.key(layout.FILTER), None)


def _losses(history: list[dict], name: str) -> list[tuple[int, float]]:
    return [(h["step"], h[name]) for h in history if name in h]


def _logged(ctx: RoundContext, name: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    history = MlflowClient(ctx.tracker.uri).get_metric_history(ctx.tracker.run_id, name)
    return sorted((m.step, m.value) for m in history)


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    one = _stage(tmp_path_factory.mktemp("one"), tiny_model, "one")
    two = _stage(tmp_path_factory.mktemp("two"), tiny_model, "two", num_processes=2)
    return [(ctx, train_policy_task.fn(ctx, pairs)) for ctx, pairs in (one, two)]


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one(trained):
    (_, one), (_, two) = trained
    assert one.result.n_steps == two.result.n_steps == 4 and two.result.n_pairs == 8 and two.result.n_heldout == 4
    for name in ("loss", "eval_loss", "rewards/margins"):
        curve_one, curve_two = _losses(one.result.log_history, name), _losses(two.result.log_history, name)
        assert [s for s, _ in curve_one] == [s for s, _ in curve_two], name
        assert [v for _, v in curve_two] == pytest.approx([v for _, v in curve_one], abs=TOLERANCE), name
    losses = [v for _, v in _losses(two.result.log_history, "loss")]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6) and losses[-1] < math.log(2) - 0.05, losses
    assert two.result.best_epoch == one.result.best_epoch
    assert two.result.kept_heldout_loss == pytest.approx(one.result.kept_heldout_loss, abs=TOLERANCE)


@pytest.mark.slow
def test_one_merged_checkpoint_written_whole(trained):
    from safetensors.torch import load_file

    (ctx_one, one), (ctx, two) = trained
    folder = ctx.store.local_path(two.key)
    assert ctx.store.manifest(two.key) is not None
    assert [p.relative_to(folder) for p in folder.rglob("config.json")] == [Path(layout.MERGED, "config.json")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in ctx_one.store.local_path(one.key).iterdir())
    merged_one = load_file(str(ctx_one.store.local_path(one.key) / layout.MERGED / "model.safetensors"))
    merged_two = load_file(str(folder / layout.MERGED / "model.safetensors"))
    assert merged_one.keys() == merged_two.keys()
    assert max((merged_one[k] - merged_two[k]).abs().max().item() for k in merged_one) < 1e-4


@pytest.mark.slow
def test_every_step_is_logged_once(trained):
    for ctx, stage in trained:
        logged, trained_steps = _logged(ctx, "train/loss"), _losses(stage.result.log_history, "loss")
        assert [step for step, _ in logged] == [step for step, _ in trained_steps] == list(range(1, stage.result.n_steps + 1))
        assert [v for _, v in logged] == pytest.approx([v for _, v in trained_steps]), ctx.loop
        assert [s for s, _ in _logged(ctx, "train/eval_loss")] == [2, 4], ctx.loop
        assert len(_logged(ctx, "train/final_loss")) == 1, ctx.loop


@pytest.mark.slow
def test_a_diverged_loss_in_two_processes_stops_the_stage(tiny_model, tmp_path):
    # As tests/test_faults.py's: step 1 moves the LoRA weights by 1e30 (no warm-up), so step 2's
    # forward overflows. The round turns the NonFiniteLoss into a rejection.
    ctx, pairs = _stage(tmp_path, tiny_model, "nan", num_processes=2, batch_size=2, epochs=1, heldout_share=0,
                        learning_rate=[1e30])
    with pytest.raises(NonFiniteLoss, match=r"training stopped at step 2: the loss diverged"):
        train_policy_task.fn(ctx, pairs)
    assert ctx.store.manifest(ctx.key(layout.TRAIN)) is None
    assert not list((tmp_path / "artifacts").rglob(layout.MERGED))
    assert [step for step, _ in _logged(ctx, "train/loss")][:1] == [1]  # the step before, once


@pytest.mark.slow
def test_a_failing_process_shows_its_traceback(tiny_model, tmp_path):
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(RuntimeError) as err:
        launch_training(TrainJob(checkpoint=str(missing), pairs=make_pairs(4), config=TrainConfig(**TRAIN, num_processes=2), model=ModelConfig(dtype="fp32"),
                                 round_index=1, output_dir=tmp_path / "out"))
    message = str(err.value)
    assert message.startswith("training in 2 processes (accelerate launch) failed with exit status 1"), message
    assert "Traceback (most recent call last)" in message and str(missing) in message, message


@pytest.mark.slow
def test_an_interrupted_launch_stops_its_processes(tiny_model, tmp_path):
    import psutil

    def interrupt(logs: dict, step: int) -> None:
        raise KeyboardInterrupt  # as Ctrl-C, or Prefect cancelling the run, would stop the stage's process

    before = set(psutil.Process().children(recursive=True))
    with pytest.raises(KeyboardInterrupt):
        launch_training(TrainJob(checkpoint=tiny_model, pairs=make_pairs(12), config=TrainConfig(**TRAIN, num_processes=2), model=ModelConfig(dtype="fp32"),
                                 round_index=1, output_dir=tmp_path / "out"), interrupt)
    assert set(psutil.Process().children(recursive=True)) - before == set()
    assert not (tmp_path / "out" / layout.MERGED).exists()


def test_batch_not_divisible_by_processes_is_refused():
    from infra.settings import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.batch_size=6", "train.num_processes=4"])
    assert "train.batch_size (6)" in str(err.value) and "train.num_processes (4)" in str(err.value)
    assert load_config(None, ["train.batch_size=8", "train.num_processes=4"]).train.num_processes == 4


def test_zero3_config_is_an_accelerate_deepspeed_config():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils.deepspeed import HfDeepSpeedConfig

    cluster = load_config_from_file(str(REPO / "configs" / "accelerate-zero3.yaml"))
    assert cluster.distributed_type == "DEEPSPEED" and cluster.num_machines == 1
    settings = REPO / "configs" / cluster.deepspeed_config["deepspeed_config_file"]
    deepspeed = HfDeepSpeedConfig(str(settings))
    assert deepspeed.is_zero3() and deepspeed.get_value("zero_optimization.offload_optimizer.device") == "cpu"
    raw = json.loads(settings.read_text())
    # The Trainer fills what is "auto"; what is fixed must agree with what Flywheel sets.
    assert raw["gradient_accumulation_steps"] == "auto" and raw["bf16"]["enabled"] == "auto"
    assert raw["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_zero3_without_deepspeed_is_refused_before_launching():
    config = TrainConfig(num_processes=2, accelerate_config=REPO / "configs" / "accelerate-zero3.yaml")
    with pytest.raises(RuntimeError, match=r"accelerate-zero3.yaml trains with DeepSpeed, which is not installed here"):
        accelerate_config(config, cpu=False)


def test_a_missing_accelerate_config_is_named(tmp_path):
    config = TrainConfig(num_processes=2, accelerate_config=tmp_path / "nowhere.yaml")
    with pytest.raises(FileNotFoundError, match=r"train.accelerate_config: .*nowhere.yaml does not exist"):
        accelerate_config(config, cpu=True)
