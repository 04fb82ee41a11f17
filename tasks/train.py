"""train: the round's preference objective (DPO by default; tasks/training/objectives.py) on its
pairs with TRL and a PEFT LoRA adapter.

Reads: a ``TrainJob``: the champion checkpoint, the filter stage's pairs and (for replay) earlier
rounds' pairs, the reference checkpoint or the reference's log-probs of the pairs.
Writes: ``adapter/`` (the LoRA adapter) and ``merged/`` (the full checkpoint the next round starts
from) under the job's ``output_dir``; returns the ``TrainResult`` (with TRL's per-step log), which
the stage saves as ``train_result.json`` beside ``training.png``.

The recipe, against memorising the round's pairs (``train`` config):
* the reference is the round-0 policy in every round (``reference: initial``) or the
  champion (the policy with its adapter disabled). Either way its log-probabilities of the
  pairs are computed once before training (TRL's ``precompute_ref_log_probs``) and the
  round-0 policy's weights are freed before the first step;
* an NLL term on the chosen response (``nll_weight``, TRL's ``sft`` loss type);
* a share of earlier rounds' pairs replayed (``replay_share``; the held-out pairs are the
  round's own);
* the epoch with the lowest held-out loss kept (``keep_best_epoch``), not the last.

With bf16 (native on the CPU or GPU) training runs under bf16 autocast: on a GPU over fp32
master weights, on a CPU over a frozen base held in bf16 and an fp32 adapter
(tasks/training/checkpoints.py). The merged checkpoint is saved in fp32 either way, because
LoRA's small deltas would round away in bf16.

The machinery lives in tasks/training/ (TRL config, training set, the trainer and its TRL
overrides, reference, checkpoints, FLOPs, diagnostics); this module is the stage's sequence.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import BaseModel

from infra.memory import release_memory
from infra.models import load_causal_lm, pick_device, pick_dtype
from infra.records import PreferencePair
from infra.settings import ModelConfig, TrainConfig
from tasks.training.callbacks import finite_guard, forward_logs
from tasks.training.checkpoints import base_dtype, merge_fresh, same_checkpoint, save_policy, training_tokenizer
from tasks.training.diagnostics import Alarm, Start, diagnose_training
from tasks.training.dpo_args import lora_config, trainer_args
from tasks.training.flops import training_utilisation
from tasks.training.objectives import Objective, objective_for
from tasks.training.reference import ReferenceLogps, dataset_reference_logps, drop_reference, has_reference_logps, measure_start, trainer_reference_logps
from tasks.training.training_set import TrainingSet, as_dataset, training_set
from tasks.training.trl_internals import check_trl_internals, flywheel_dpo_trainer, lm_head_tiles


class TrainJob(BaseModel):
    """What ``train_policy`` trains: built by the train stage, and written to ``job.json`` for the
    processes of a launch (tasks/launch.py)."""

    checkpoint: str  # the policy training starts from (the champion)
    pairs: list[PreferencePair]  # the round's pairs; the held-out ones are split off them
    config: TrainConfig
    model: ModelConfig
    round_index: int
    output_dir: Path  # where adapter/ and merged/ are written
    # The reference when it is not the starting policy (the round-0 policy under reference: initial); None, or the
    # starting checkpoint itself: the starting policy (its adapter disabled). Reference-free objectives load none.
    reference_checkpoint: str | None = None
    earlier_pairs: list[PreferencePair] = []  # earlier rounds' pairs, for replay
    # The reference's log-probs of these very pairs ({"train"|"eval": (chosen, rejected)}), computed by an earlier
    # run (the ablation's cells share them; a rerun of a killed training reads them): the DPO family uses them
    # instead of its own reference pass.
    reference_logps: dict[str, tuple[list[float], list[float]]] | None = None


class TrainResult(BaseModel):
    objective: str = "dpo"  # train.objective's name for the round (tasks/training/objectives.py)
    n_pairs: int  # the training set, replayed pairs included
    n_heldout: int = 0
    n_replayed: int = 0
    n_feedback: int = 0  # unpaired feedback rows added (kto)
    replayed_prompt_ids: list[str] = []
    reference: Literal["initial", "champion", "none"] = "champion"  # none: a reference-free objective
    reference_is_start: bool = True  # the reference is the policy training started from
    nll_weight: float = 0.0
    best_epoch: float | None = None  # the epoch kept (lowest held-out loss); None: the last
    kept_heldout_loss: float | None = None  # the kept policy's held-out loss, scored again after loading it
    n_steps: int
    beta: float
    learning_rate: float
    lora_r: int | None = None
    initial_loss: float
    final_loss: float
    final_reward_accuracy: float
    final_reward_margin: float
    runtime_s: float
    pairs_per_s: float
    trained_tokens: int = 0  # useful (unpadded) tokens through the model over all epochs
    achieved_tflops: float | None = None  # useful training FLOP/s (tasks/training/flops.py), in TFLOP/s
    mfu: float | None = None  # achieved_tflops as a share of the device's measured matmul peak
    log_history: list[dict]
    start: Start = Start()
    reference_logps: list[tuple[float, float]] = []  # the reference's (chosen, rejected) log-probs, per training pair
    heldout_reference_logps: list[tuple[float, float]] = []  # the same for the held-out pairs
    alarms: list[Alarm] = []
    attempts: int = 1  # train.engine 'ray': the attempts Ray Train made (more than 1 after a worker or node died)


def shared_reference_logps(result: TrainResult) -> ReferenceLogps | None:
    """A run's reference log-probs in the form ``TrainJob.reference_logps`` takes; None
    when it had none (reference-free or unpaired objectives)."""
    if not result.reference_logps:
        return None
    shared = {"train": tuple(map(list, zip(*result.reference_logps)))}
    if result.heldout_reference_logps:
        shared["eval"] = tuple(map(list, zip(*result.heldout_reference_logps)))
    return shared


def train_policy(job: TrainJob, on_log: Callable[[dict, int], None] | None = None, *,
                 on_reference_logps: Callable[[ReferenceLogps], None] | None = None,
                 shared_dir: Path | None = None) -> TrainResult:
    """Train a LoRA adapter with the round's objective from ``job.checkpoint``; save adapter and
    merged model under ``job.output_dir``. ``on_log`` receives each logged step's figures.
    ``on_reference_logps`` receives the log-probs of a reference pass made here as soon as it is
    done, before the first step: kept, they spare a rerun of a killed training the pass.

    Run by every process of a launch (tasks/launch.py): the main one alone writes the checkpoints,
    and ``shared_dir`` must then be a folder they all share, for the datasets (TRL's reference
    pass caches its log-probs beside them) and the epoch checkpoints of ``keep_best_epoch``;
    None: one process, with temporary folders."""
    check_trl_internals()  # a TRL that moved a private name fails here, naming it, before anything loads
    if len(job.pairs) < 1:
        raise ValueError("no preference pairs to train on")
    plan = _plan(job)
    tokenizer = training_tokenizer(job.checkpoint)
    models = _load_models(job, plan)
    with _scratch_folder(shared_dir) as scratch, lm_head_tiles(plan.device):
        args = trainer_args(job.config, job.round_index, plan.device, plan.dtype, scratch,
                            eval_each_epoch=bool(plan.data.heldout_pairs), objective=plan.objective)
        forward = forward_logs(on_log) if on_log else None
        started = time.perf_counter()
        trainer = _build_trainer(job, plan, args, tokenizer, models, forward, shared_dir)
        _hand_out_reference_logps(trainer, plan, on_reference_logps)
        start = _measure_start(trainer, plan, job.config)
        fit = _fit(trainer, forward, started)
    result = _result(job, plan, trainer, start, fit)
    if save_policy(trainer, tokenizer, job.output_dir):
        del trainer  # the trained weights go before a fresh fp32 copy comes
        release_memory()
        merge_fresh(job.checkpoint, tokenizer, job.output_dir)
    return result


@dataclass(frozen=True)
class _Plan:
    """What a job resolves to before anything is loaded."""

    objective: Objective
    device: torch.device
    dtype: torch.dtype
    reference_is_start: bool  # the reference is the policy training starts from
    flywheel_trainer: bool  # the objective trains with Flywheel's DPOTrainer (tasks/training/trl_internals.py)
    given_logps: ReferenceLogps | None  # the job's reference log-probs, where that trainer takes them
    data: TrainingSet


def _plan(job: TrainJob) -> _Plan:
    objective = objective_for(job.config, job.round_index)
    device = pick_device(job.model)
    flywheel = issubclass(objective.trainer_class(), flywheel_dpo_trainer())
    return _Plan(
        objective=objective,
        device=device,
        dtype=pick_dtype(job.model, device),
        reference_is_start=job.reference_checkpoint is None or same_checkpoint(job.reference_checkpoint, job.checkpoint),
        flywheel_trainer=flywheel,
        given_logps=job.reference_logps if flywheel and job.reference_logps else None,
        data=training_set(job.pairs, job.earlier_pairs, job.config, job.round_index, objective),
    )


def _scratch_folder(shared_dir: Path | None):
    """Where the epoch checkpoints of keep_best_epoch go: the launch's shared folder, or a temporary one."""
    return tempfile.TemporaryDirectory() if shared_dir is None else contextlib.nullcontext(str(shared_dir / "scratch"))


def _load_models(job: TrainJob, plan: _Plan) -> dict:
    """The policy, and the reference model where one is needed (a reference that is not the starting
    policy, without log-probs handed in), in the dtype the frozen base is held in."""
    frozen_dtype = base_dtype(plan.device, plan.dtype)
    models = {"model": load_causal_lm(job.checkpoint, frozen_dtype)}
    if plan.objective.uses_reference:
        needs_ref_model = not plan.reference_is_start and plan.given_logps is None
        models["ref_model"] = load_causal_lm(job.reference_checkpoint, frozen_dtype) if needs_ref_model else None
    return models


def _build_trainer(job: TrainJob, plan: _Plan, args, tokenizer, models: dict, forward, shared_dir: Path | None):
    """The objective's TRL trainer. ``models`` are handed over (emptied): the trainer alone holds them,
    so that the reference model can be freed before the first step. The reference's log-probs
    (objectives that have one) are computed here, once, for the training and held-out pairs,
    unless they were handed in."""
    own = {"reference_logps": plan.given_logps, "share_prompt": job.config.share_prompt} if plan.flywheel_trainer else {}
    handed = {**own, **models}
    models.clear()  # from here the trainer alone holds them
    data = plan.data
    return plan.objective.trainer_class()(
        args=args,
        train_dataset=as_dataset(data.train_rows, args, shared_dir and shared_dir / "train"),
        eval_dataset=as_dataset(data.heldout_rows, args, shared_dir and shared_dir / "eval") if data.heldout_pairs else None,
        processing_class=tokenizer,
        peft_config=lora_config(job.config),
        # The guard after the forwarder: the diverged step's finite figures still reach the tracker.
        callbacks=[c for c in (forward, finite_guard()) if c],
        **handed,
    )


def _hand_out_reference_logps(trainer, plan: _Plan, on_reference_logps: Callable[[ReferenceLogps], None] | None) -> None:
    """The log-probs of a reference pass made here, to ``on_reference_logps`` (none when they were handed in)."""
    if on_reference_logps is not None and plan.given_logps is None and (computed := trainer_reference_logps(trainer)) is not None:
        on_reference_logps(computed)


def _measure_start(trainer, plan: _Plan, config: TrainConfig) -> Start:
    """The reference model freed (its log-probs are in the datasets), then where training starts against it."""
    if plan.objective.uses_reference:
        drop_reference(trainer)
    return measure_start(trainer, trainer.args.beta, plan.objective, config, plan.reference_is_start)


@dataclass(frozen=True)
class _Fit:
    runtime_s: float  # from before the trainer was built (reference pass included) to the end of training
    log_history: list[dict]  # TRL's per-step log of training (the kept epoch's re-scoring not in it)
    kept_step: int | None  # the step of the epoch kept (keep_best_epoch); None: the last
    kept_loss: float | None  # the kept weights' held-out loss, scored again after loading them


def _fit(trainer, forward, started: float) -> _Fit:
    trainer.train()
    runtime = time.perf_counter() - started
    log_history = list(trainer.state.log_history)
    best = trainer.state.best_model_checkpoint
    kept_step = int(Path(best).name.split("-")[-1]) if best else None
    kept_loss = None
    if kept_step is not None:
        # The loaded weights scored again: the held-out loss of the epoch kept, if they are its.
        if forward:
            trainer.remove_callback(forward)  # not a training step: not forwarded
        kept_loss = trainer.evaluate()["eval_loss"]
    return _Fit(runtime, log_history, kept_step, kept_loss)


def _result(job: TrainJob, plan: _Plan, trainer, start: Start, fit: _Fit) -> TrainResult:
    config, objective, data = job.config, plan.objective, plan.data
    achieved, mfu, tokens = training_utilisation(trainer, config.max_length, config.epochs,
                                                 plan.flywheel_trainer and config.share_prompt, str(plan.device),
                                                 plan.dtype, fit.runtime_s)
    return TrainResult(
        objective=objective.name,
        n_pairs=len(data.train_pairs),
        n_heldout=len(data.heldout_pairs),
        n_replayed=len(data.replayed),
        n_feedback=0 if objective.paired else data.n_feedback,
        replayed_prompt_ids=[p.prompt_id for p in data.replayed],
        reference=config.reference if objective.uses_reference else "none",
        reference_is_start=plan.reference_is_start,
        nll_weight=objective.nll_weight(config),
        best_epoch=next((h["epoch"] for h in fit.log_history if "eval_loss" in h and h.get("step") == fit.kept_step), None),
        kept_heldout_loss=fit.kept_loss,
        n_steps=trainer.state.global_step,
        beta=trainer.args.beta,
        learning_rate=trainer.args.learning_rate,
        lora_r=config.lora_r,
        **_loss_figures(fit.log_history),
        runtime_s=fit.runtime_s,
        pairs_per_s=len(data.train_pairs) * config.epochs / fit.runtime_s if fit.runtime_s > 0 else float("nan"),
        trained_tokens=tokens,
        achieved_tflops=achieved / 1e12,
        mfu=mfu,
        log_history=fit.log_history,
        start=start,
        **_reference_figures(trainer),
        alarms=diagnose_training(fit.log_history, config.diagnostics, start, fit.kept_step,
                                 pairs_per_step=len(data.train_pairs) * config.epochs / max(trainer.state.global_step, 1)),
    )


def _loss_figures(log_history: list[dict]) -> dict[str, float]:
    """The first and last training steps' loss, and the last one's reward accuracy and margin (NaN: no step)."""
    history = [h for h in log_history if "loss" in h]
    if not history:
        return dict.fromkeys(("initial_loss", "final_loss", "final_reward_accuracy", "final_reward_margin"), float("nan"))
    return dict(initial_loss=history[0]["loss"], final_loss=history[-1]["loss"],
                final_reward_accuracy=history[-1].get("rewards/accuracies", float("nan")),
                final_reward_margin=history[-1].get("rewards/margins", float("nan")))


def _reference_figures(trainer) -> dict[str, list[tuple[float, float]]]:
    """The reference's (chosen, rejected) log-probs of each training and held-out pair (none: no reference pass)."""
    if not has_reference_logps(trainer.train_dataset):
        return dict(reference_logps=[], heldout_reference_logps=[])
    heldout = dataset_reference_logps(trainer.eval_dataset) if trainer.eval_dataset is not None else None
    return dict(reference_logps=list(zip(*dataset_reference_logps(trainer.train_dataset))),
                heldout_reference_logps=list(zip(*heldout)) if heldout else [])
