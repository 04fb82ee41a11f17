"""train: the round's preference objective (DPO by default; tasks/objectives.py) on its pairs with TRL
and a PEFT LoRA adapter.

Reads: the champion checkpoint, the filter stage's pairs and (for replay) earlier rounds' pairs.
Writes: ``adapter/`` (the LoRA adapter), ``merged/`` (the full checkpoint the
next round starts from), ``train_result.json`` (with TRL's per-step log) and
``training.png``.

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
master weights, on a CPU over a frozen base held in bf16 (``base_dtype``) and an fp32 adapter.
The merged checkpoint is saved in fp32 either way, because LoRA's small deltas would round
away in bf16.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from pydantic import BaseModel

from infra import layout
from infra.memory import release_memory
from infra.records import PreferencePair
from infra.settings import MANAGED_DPO_ARGS, ModelConfig, TrainConfig, per_round
from tasks.diagnostics import Alarm, Start, diagnose_training
from tasks.objectives import Objective, load_feedback, objective_for

LN2 = math.log(2)


def split_heldout(pairs: list[PreferencePair], share: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """A seeded held-out split (none when it would leave fewer than 2 pairs on either side)."""
    n_heldout = int(round(len(pairs) * share))
    if n_heldout < 2 or len(pairs) - n_heldout < 2:
        return list(pairs), []
    order = list(range(len(pairs)))
    random.Random(f"flywheel-heldout-{seed}").shuffle(order)
    held = set(order[:n_heldout])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def _identity(pair: PreferencePair) -> tuple[str, str, str]:
    return pair.prompt, pair.chosen, pair.rejected


def mix_replay(pairs: Sequence[PreferencePair], earlier: Sequence[PreferencePair], share: float,
               seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The training set (``pairs`` then the replayed ones) and the replayed pairs: drawn, seeded,
    from ``earlier`` so that they make up ``share`` of the set, fewer when there are not as many;
    never a pair twice, nor one ``pairs`` already holds."""
    if share <= 0 or not earlier:
        return list(pairs), []
    seen = {_identity(p) for p in pairs}
    pool = []
    for pair in earlier:
        if _identity(pair) not in seen:
            seen.add(_identity(pair))
            pool.append(pair)
    wanted = int(round(len(pairs) * share / (1 - share)))
    replayed = random.Random(f"flywheel-replay-{seed}").sample(pool, min(wanted, len(pool)))
    return [*pairs, *replayed], replayed


class TrainResult(BaseModel):
    objective: str = "dpo"  # train.objective's name for the round (tasks/objectives.py)
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
    achieved_tflops: float | None = None  # useful training FLOP/s (tasks/flops.py), in TFLOP/s
    mfu: float | None = None  # achieved_tflops as a share of the device's measured matmul peak
    log_history: list[dict]
    start: Start = Start()
    reference_logps: list[tuple[float, float]] = []  # the reference's (chosen, rejected) log-probs, per training pair
    heldout_reference_logps: list[tuple[float, float]] = []  # the same for the held-out pairs
    alarms: list[Alarm] = []


def _utilisation(trainer, config: TrainConfig, device: torch.device, dtype: torch.dtype, runtime: float) -> tuple[float, float, int]:
    """(achieved FLOP/s, MFU, tokens) of the optimisation itself (TRL's train_runtime, without the
    set-up and reference pass before it)."""
    from tasks.flops import matmul_params, measured_peak_flops, trained_tokens, utilisation

    seconds = next((h["train_runtime"] for h in reversed(trainer.state.log_history) if "train_runtime" in h), runtime)
    shares_prompt = bool(getattr(trainer, "_share_prompt", False))
    tokens = round(trained_tokens(trainer.train_dataset, config.max_length, shares_prompt) * config.epochs)
    achieved, mfu = utilisation(matmul_params(trainer.model), tokens, seconds, measured_peak_flops(str(device), dtype))
    return achieved, mfu, tokens


# On a CPU the frozen base weights are held in the training dtype: bf16 autocast would round them to it at
# every forward anyway (so the products are the same), and fp32 masters of frozen weights only cost memory
# (and autocast's cached bf16 copies of them on top). The LoRA adapter stays fp32 (PEFT upcasts it), and the
# merged checkpoint is made in fp32. GPUs keep fp32 masters under autocast (not measured there).
CPU_BASE_IN_TRAINING_DTYPE = True


def base_dtype(device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The dtype the frozen policy (and a reference model) is loaded in for training."""
    return dtype if CPU_BASE_IN_TRAINING_DTYPE and device.type == "cpu" else torch.float32


# Pairs per pass on a CPU under micro_batch_size 'auto', by training dtype. benchmarks/bench_memory.py, 12 pairs
# with responses of up to 160 tokens: fp32 peaked at 3.1-3.2 GB with 2 pairs a pass and 2.1-2.2 GB with 1, in
# about the same time (45-47 s both); bf16 autocast at 2.7-2.8 GB with 2 (infra/settings.py says more). With the
# base in bf16 (22 pairs, 2026-12-01): 2.17-2.20 GB with 2, 1.87 GB with 1 at 9% fewer pairs/s, so bf16 keeps 2.
CPU_MICRO_BATCH = {torch.float32: 1, torch.bfloat16: 2}


def micro_batch_size(config: TrainConfig, objective: Objective, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> int:
    """Pairs per forward pass in each process: the largest divisor of the process's share of
    ``train.batch_size`` not above ``train.micro_batch_size`` (the whole share when it is None or
    the objective cannot accumulate; 'auto': ``CPU_MICRO_BATCH`` of the training dtype on a CPU,
    the whole share on a GPU)."""
    share = config.batch_size // config.num_processes
    wanted = config.micro_batch_size
    if wanted == "auto":
        wanted = None if device is not None and device.type == "cuda" else CPU_MICRO_BATCH.get(dtype, 1)
    if wanted is None or not objective.accumulates or wanted >= share:
        return share
    return max(d for d in range(1, wanted + 1) if share % d == 0)


def trainer_args(config: TrainConfig, round_index: int, device: torch.device, dtype: torch.dtype, output_dir: str,
                 eval_each_epoch: bool = False, objective: Objective | None = None):
    """The TRL config of the round's objective (trl.DPOConfig for the DPO family): the pipeline's
    fields, the objective's own, then the user's pass-through extras. ``output_dir`` is scratch:
    it only holds the epoch checkpoints of ``keep_best_epoch``."""
    objective = objective or objective_for(config, round_index)
    beta = objective.beta(config, round_index)
    share = config.batch_size // config.num_processes  # the global batch, split among the processes
    micro = micro_batch_size(config, objective, device, dtype)
    args = dict(
        output_dir=output_dir,
        beta=beta,
        learning_rate=per_round(config.learning_rate, round_index),
        num_train_epochs=config.epochs,
        # Each process's share of train.batch_size per optimizer step, in forward passes of `micro` pairs (memory: activations).
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=share // micro,
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=dtype == torch.bfloat16,
        use_cpu=device.type == "cpu",
        activation_checkpointing=False,  # recomputation costs more than it saves on small models
        dataloader_num_workers=0,
        lr_scheduler_type="constant_with_warmup",
        # Evaluation computes the loss alone: otherwise TRL runs a second forward for the full-vocabulary
        # logits and the Trainer keeps every held-out batch's (unused: no compute_metrics).
        prediction_loss_only=True,
        warmup_steps=1,
        **objective.trl_args(config, beta),
    )
    if eval_each_epoch:
        # Held-out pairs scored at the end of each epoch, for the over-optimization alarm (in batches of a
        # process's share of train.batch_size, as TRL averages the NLL term per batch; no gradients, little memory).
        args.update(eval_strategy="epoch", per_device_eval_batch_size=share)
        if config.keep_best_epoch:
            # The held-out loss decides: a proper score of the preference (accuracy on a few dozen
            # pairs ties; margins reward over-confidence) that includes the NLL term being trained.
            args.update(save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="eval_loss",
                        greater_is_better=False, save_total_limit=1, save_only_model=True)
    managed = sorted(MANAGED_DPO_ARGS.keys() & config.dpo_args.keys())
    if managed:
        raise ValueError(f"train.dpo_args may not set {', '.join(managed)}: Flywheel sets them (see MANAGED_DPO_ARGS)")
    args.update(config.dpo_args)
    return objective.config_class()(**args)


def dpo_args(config: TrainConfig, round_index: int, device: torch.device, dtype: torch.dtype, output_dir: str,
             eval_each_epoch: bool = False):
    """``trainer_args`` for the round's objective (a trl.DPOConfig for dpo, the default)."""
    return trainer_args(config, round_index, device, dtype, output_dir, eval_each_epoch)


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def _log_callback(on_log: Callable[[dict, int], None]):
    from transformers import TrainerCallback

    class ForwardLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                on_log(dict(logs), state.global_step)

    return ForwardLogs()


class NonFiniteLoss(ArithmeticError):
    """Training diverged: a figure of a logged step (its loss, gradient norm, log-probs) is NaN or infinite."""

    def __init__(self, step: int, names: list[str]):
        self.step, self.names = step, names
        # The Trainer logs a NaN loss as a finite average (logging_nan_inf_filter): the other figures show it.
        super().__init__(f"training stopped at step {step}: the loss diverged ({', '.join(names)} not finite); "
                         "lower train.learning_rate or check the pairs")


def _finite_guard():
    from transformers import TrainerCallback

    class StopOnNonFiniteLoss(TrainerCallback):
        """Stop training at the first logged step with a NaN or infinite figure: its weights are lost."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            bad = sorted(k for k, v in (logs or {}).items() if isinstance(v, float) and not math.isfinite(v))
            if bad:
                raise NonFiniteLoss(state.global_step, bad)

    return StopOnNonFiniteLoss()


def _same_checkpoint(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _starting_logps(trainer, dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting policy's (chosen, rejected) log-probs of ``dataset``'s pairs: TRL's reference
    pass run with the adapter disabled (it is zero before the first step anyway)."""
    from torch.utils.data import DataLoader

    chosen, rejected = [], []
    for batch in DataLoader(dataset, batch_size=trainer.args.per_device_eval_batch_size, collate_fn=trainer.data_collator):
        batch = {k: v.to(trainer.accelerator.device) for k, v in batch.items()}
        c, r = trainer.compute_ref_log_probs(trainer.model, batch)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
    return torch.cat(chosen), torch.cat(rejected)


def _reference_logps(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(dataset["ref_chosen_logps"]).float(), torch.tensor(dataset["ref_rejected_logps"]).float()


def _trainer_reference_logps(trainer) -> dict[str, tuple[list[float], list[float]]] | None:
    """The reference log-probs a just-built trainer computed (or was handed), in the form
    ``train_policy(reference_logps=...)`` takes; None when its objective has none."""
    if "ref_chosen_logps" not in (trainer.train_dataset.column_names or []):
        return None
    shared = {"train": tuple(t.tolist() for t in _reference_logps(trainer.train_dataset))}
    if trainer.eval_dataset is not None:
        shared["eval"] = tuple(t.tolist() for t in _reference_logps(trainer.eval_dataset))
    return shared


def shared_reference_logps(result: "TrainResult") -> dict[str, tuple[list[float], list[float]]] | None:
    """A run's reference log-probs in the form ``train_policy(reference_logps=...)`` takes; None
    when it had none (reference-free or unpaired objectives)."""
    if not result.reference_logps:
        return None
    shared = {"train": tuple(map(list, zip(*result.reference_logps)))}
    if result.heldout_reference_logps:
        shared["eval"] = tuple(map(list, zip(*result.heldout_reference_logps)))
    return shared


def _batch_mean_range(values: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Where the mean of any ``batch_size`` of ``values`` can lie: between the mean of the
    smallest and the mean of the largest that many."""
    k = min(batch_size, len(values))
    ordered = values.sort().values
    return ordered[:k].mean().item(), ordered[-k:].mean().item()


def measure_start(trainer, beta: float, objective: Objective, config: TrainConfig, reference_is_start: bool) -> Start:
    """Where training starts against its reference. Where the reference is the starting policy,
    every reward starts at 0 and the objective says what the first loss is (ln 2 for sigmoid DPO
    alone); otherwise the starting policy's log-ratios are measured on the training and held-out
    pairs, and the first step's batch means (TRL logs them) can only lie where the means of a
    batch of them can. Reference-free objectives' rewards are the policy's own log-probs: only
    their first loss, when known, is checked."""
    if not objective.uses_reference:
        return Start(expected_loss=objective.expected_initial_loss(config, beta), check_rewards=False)
    if reference_is_start:
        return Start(expected_loss=objective.expected_initial_loss(config, beta))
    if not objective.paired:
        return Start(expected_loss=None, check_rewards=False)

    def rewards(dataset) -> tuple[torch.Tensor, torch.Tensor]:
        (policy_c, policy_r), (ref_c, ref_r) = _starting_logps(trainer, dataset), _reference_logps(dataset)
        return beta * (policy_c - ref_c), beta * (policy_r - ref_r)

    chosen, rejected = rewards(trainer.train_dataset)
    heldout = rewards(trainer.eval_dataset) if trainer.eval_dataset is not None else None
    batch = config.batch_size  # TRL logs the means of the whole step, gathered from every process
    return Start(
        expected_loss=None,
        chosen=_batch_mean_range(chosen, batch),
        rejected=_batch_mean_range(rejected, batch),
        train_margin=(chosen - rejected).mean().item(),
        heldout_margin=(heldout[0] - heldout[1]).mean().item() if heldout else 0.0,
    )


def _drop_reference(trainer) -> None:
    """Free the reference model once its log-probs are computed: the trainer's handle, accelerate's
    (it keeps every model it prepared) and, by collecting, the cycle TRL's fused LM head makes (the
    model's forward bound to it)."""
    held, trainer.ref_model = trainer.ref_model, None
    models = getattr(trainer.accelerator, "_models", None)
    if held is not None and isinstance(models, list):
        models[:] = [m for m in models if m is not held]
    del held
    gc.collect()


def _kept_step(trainer) -> int | None:
    best = trainer.state.best_model_checkpoint
    return int(Path(best).name.split("-")[-1]) if best else None


def _feedback_rows(config: TrainConfig, objective: Objective) -> list[dict]:
    if objective.paired:
        return []
    return [row for path in config.kto.feedback_files for row in load_feedback(path)]


def _dataset(rows: list[dict], args, folder: Path | None):
    """The rows as a dataset; with ``folder``, one saved there by the main process and read by all,
    so that the files TRL caches beside it (tokenized rows, reference log-probs) are shared."""
    from datasets import Dataset

    if folder is None:
        return Dataset.from_list(rows)
    with args.main_process_first(desc=f"dataset {folder.name}"):
        if not folder.exists():
            Dataset.from_list(rows).save_to_disk(str(folder))
        return Dataset.load_from_disk(str(folder))


def _save_policy(trainer, tokenizer, output_dir: Path) -> bool:
    """``adapter/``, and ``merged/`` (fp32) where the trained model holds fp32 weights, written by
    the main process alone. Returns whether ``merged/`` is still to be made by ``_merge_fresh``:
    under DeepSpeed ZeRO-3 (every process holds a shard of the weights: they are gathered, all
    processes taking part, and saved as the adapter) and for a base held in bf16 (the deltas
    would round away in it)."""
    deepspeed = getattr(trainer, "is_deepspeed_enabled", False)
    # needs stage3_gather_16bit_weights_on_model_save
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped) if deepspeed else None
    if not trainer.accelerator.is_main_process:
        return False
    trainer.model.save_pretrained(output_dir / layout.ADAPTER, state_dict=state)
    if deepspeed or trainer.model.get_base_model().dtype != torch.float32:
        return True
    trainer.model.merge_and_unload().save_pretrained(output_dir / layout.MERGED)
    tokenizer.save_pretrained(output_dir / layout.MERGED)
    return False


def _merge_fresh(checkpoint: str, tokenizer, output_dir: Path) -> None:
    """``merged/``: the saved adapter merged into a fresh fp32 copy of ``checkpoint``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    PeftModel.from_pretrained(base, output_dir / layout.ADAPTER).merge_and_unload().save_pretrained(output_dir / layout.MERGED)
    tokenizer.save_pretrained(output_dir / layout.MERGED)


def train_policy(
    checkpoint: str,
    pairs: list[PreferencePair],
    config: TrainConfig,
    model_config: ModelConfig,
    round_index: int,
    output_dir: Path,
    on_log: Callable[[dict, int], None] | None = None,
    *,
    reference_checkpoint: str | None = None,
    earlier_pairs: Sequence[PreferencePair] = (),
    reference_logps: dict[str, tuple[list[float], list[float]]] | None = None,
    on_reference_logps: Callable[[dict[str, tuple[list[float], list[float]]]], None] | None = None,
    shared_dir: Path | None = None,
) -> TrainResult:
    """Train a LoRA adapter with the round's objective from ``checkpoint``; save adapter and merged
    model under ``output_dir``.

    ``reference_checkpoint`` is the reference when it is not the starting policy (the round-0
    policy under ``reference: initial``); None, or the starting checkpoint itself: the starting
    policy (its adapter disabled); reference-free objectives load none. ``earlier_pairs`` are
    earlier rounds' pairs, for replay. ``reference_logps`` ({"train"|"eval": (chosen, rejected)})
    are the reference's log-probs of these very pairs, computed by an earlier run (the ablation's
    cells share them); the DPO family uses them instead of its own reference pass.
    ``on_reference_logps`` receives the log-probs of a reference pass made here as soon as it is
    done, before the first step: kept, they spare a rerun of a killed training the pass.

    Run by every process of a launch (tasks/launch.py): the main one alone writes the checkpoints,
    and ``shared_dir`` must then be a folder they all share, for the datasets (TRL's reference
    pass caches its log-probs beside them) and the epoch checkpoints of ``keep_best_epoch``;
    None: one process, with temporary folders."""
    from transformers import AutoTokenizer

    from infra.models import load_causal_lm, pick_device, pick_dtype
    from tasks.trainers import flywheel_dpo_trainer, lm_head_tiles

    if len(pairs) < 1:
        raise ValueError("no preference pairs to train on")
    objective = objective_for(config, round_index)
    device = pick_device(model_config)
    dtype = pick_dtype(model_config, device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    frozen_dtype = base_dtype(device, dtype)
    model = load_causal_lm(checkpoint, frozen_dtype)
    reference_is_start = reference_checkpoint is None or _same_checkpoint(reference_checkpoint, checkpoint)
    trainer_class = objective.trainer_class()
    shared = reference_logps if issubclass(trainer_class, flywheel_dpo_trainer()) and reference_logps else None
    needs_ref_model = objective.uses_reference and not reference_is_start and shared is None
    ref_model = load_causal_lm(reference_checkpoint, frozen_dtype) if needs_ref_model else None
    own_pairs, heldout_pairs = split_heldout(pairs, config.heldout_share, config.seed + round_index)
    train_pairs, replayed = mix_replay(own_pairs, earlier_pairs, config.replay_share, config.seed + round_index)
    train_rows = objective.rows(train_pairs, _feedback_rows(config, objective))
    scratch_folder = tempfile.TemporaryDirectory() if shared_dir is None else contextlib.nullcontext(str(shared_dir / "scratch"))
    with scratch_folder as scratch, lm_head_tiles(device):
        args = trainer_args(config, round_index, device, dtype, scratch, eval_each_epoch=bool(heldout_pairs), objective=objective)
        forward = _log_callback(on_log) if on_log else None
        started = time.perf_counter()
        extra = {"reference_logps": shared, "share_prompt": config.share_prompt} if issubclass(trainer_class, flywheel_dpo_trainer()) else {}
        if objective.uses_reference:
            extra["ref_model"] = ref_model
        # The reference's log-probs (objectives that have one) are computed here, once, for the
        # training and held-out pairs, unless they were handed in.
        trainer = trainer_class(
            model=model,
            args=args,
            train_dataset=_dataset(train_rows, args, shared_dir and shared_dir / "train"),
            eval_dataset=_dataset(objective.rows(heldout_pairs), args, shared_dir and shared_dir / "eval") if heldout_pairs else None,
            processing_class=tokenizer,
            peft_config=lora_config(config),
            # The guard after the forwarder: the diverged step's finite figures still reach the tracker.
            callbacks=[c for c in (forward, _finite_guard()) if c],
            **extra,
        )
        extra.clear()
        if on_reference_logps is not None and shared is None and (computed := _trainer_reference_logps(trainer)) is not None:
            on_reference_logps(computed)
        if objective.uses_reference:
            ref_model = None
            _drop_reference(trainer)
        start = measure_start(trainer, args.beta, objective, config, reference_is_start)
        trainer.train()
        runtime = time.perf_counter() - started
        log_history = list(trainer.state.log_history)
        kept_step = _kept_step(trainer)
        kept_loss = None
        if kept_step is not None:
            # The loaded weights scored again: the held-out loss of the epoch kept, if they are its.
            if forward:
                trainer.remove_callback(forward)  # not a training step: not forwarded
            kept_loss = trainer.evaluate()["eval_loss"]
    history = [h for h in log_history if "loss" in h]
    achieved, mfu, tokens = _utilisation(trainer, config, device, dtype, runtime)
    best_epoch = next((h["epoch"] for h in log_history if "eval_loss" in h and h.get("step") == kept_step), None)
    merge_fresh = _save_policy(trainer, tokenizer, output_dir)
    n_examples = len(train_pairs) * config.epochs
    has_ref_columns = "ref_chosen_logps" in (trainer.train_dataset.column_names or [])
    ref_train = _reference_logps(trainer.train_dataset) if has_ref_columns else None
    ref_heldout = _reference_logps(trainer.eval_dataset) if has_ref_columns and trainer.eval_dataset is not None else None
    result = TrainResult(
        objective=objective.name,
        n_pairs=len(train_pairs),
        n_heldout=len(heldout_pairs),
        n_replayed=len(replayed),
        n_feedback=len(train_rows) - 2 * len(train_pairs) if not objective.paired else 0,
        replayed_prompt_ids=[p.prompt_id for p in replayed],
        reference=config.reference if objective.uses_reference else "none",
        reference_is_start=reference_is_start,
        nll_weight=objective.nll_weight(config),
        best_epoch=best_epoch,
        kept_heldout_loss=kept_loss,
        n_steps=trainer.state.global_step,
        beta=args.beta,
        learning_rate=args.learning_rate,
        lora_r=config.lora_r,
        initial_loss=history[0]["loss"] if history else float("nan"),
        final_loss=history[-1]["loss"] if history else float("nan"),
        final_reward_accuracy=history[-1].get("rewards/accuracies", float("nan")) if history else float("nan"),
        final_reward_margin=history[-1].get("rewards/margins", float("nan")) if history else float("nan"),
        runtime_s=runtime,
        pairs_per_s=n_examples / runtime if runtime > 0 else float("nan"),
        trained_tokens=tokens,
        achieved_tflops=achieved / 1e12,
        mfu=mfu,
        log_history=log_history,
        start=start,
        reference_logps=list(zip(*ref_train)) if ref_train else [],
        heldout_reference_logps=list(zip(*ref_heldout)) if ref_heldout else [],
        alarms=diagnose_training(log_history, config.diagnostics, start, kept_step),
    )
    if merge_fresh:
        del trainer, model  # the trained weights go before a fresh fp32 copy comes
        release_memory()
        _merge_fresh(checkpoint, tokenizer, output_dir)
    return result
