"""The round's TRL config (``trl.DPOConfig`` for the DPO family) and LoRA config, and which TRL
keys Flywheel sets itself (``MANAGED_DPO_ARGS``: ``train.dpo_args`` may not set them).

``trainer_args`` lays the pipeline's own fields, then the objective's, then the user's pass-through
``train.dpo_args`` over TRL's defaults; tasks/config_checks.py refuses managed or unknown keys
when the config loads.
"""

from __future__ import annotations

import torch

from infra.settings import TrainConfig, per_round
from tasks.training.objectives import Objective, objective_for

# trl.DPOConfig keys that Flywheel sets itself, with what to change instead; train.dpo_args may not set them.
MANAGED_DPO_ARGS = {
    "beta": "set train.beta (a per-round schedule) instead",
    "learning_rate": "set train.learning_rate (a per-round schedule) instead",
    "num_train_epochs": "set train.epochs instead",
    "max_steps": "set train.epochs instead",
    "per_device_train_batch_size": "set train.batch_size instead",
    "per_device_eval_batch_size": "set train.batch_size instead",
    "gradient_accumulation_steps": "set train.micro_batch_size instead (train.batch_size pairs per step still)",
    "max_length": "set train.max_length instead",
    "seed": "set train.seed instead",
    "bf16": "set model.dtype instead",
    "use_cpu": "set model.device instead",
    "eval_strategy": "set train.heldout_share instead (held-out pairs are scored each epoch)",
    "output_dir": "the train stage saves the adapter and merged model in its own folder",
    "save_strategy": "the train stage saves the adapter and merged model in its own folder",
    "logging_steps": "the training alarms read every step's log",
    "report_to": "Flywheel logs the training metrics to MLflow itself",
    "loss_type": "set train.objective instead (dpo, dpo_nll, ipo, robust, apo_zero, simpo, orpo, kto), and "
                 "train.nll_weight for the NLL term of dpo and dpo_nll",
    "loss_weights": "set train.nll_weight instead (the weight of the NLL term of dpo and dpo_nll; the DPO term's is 1)",
    "label_smoothing": "set train.robust.label_smoothing instead (objective 'robust')",
    "precompute_ref_log_probs": "set train.reference instead (its log-probabilities are always computed once, before training)",
    "load_best_model_at_end": "set train.keep_best_epoch instead",
    "metric_for_best_model": "set train.keep_best_epoch instead (the held-out loss decides)",
    "greater_is_better": "set train.keep_best_epoch instead (the held-out loss decides)",
    "save_total_limit": "set train.keep_best_epoch instead (epoch checkpoints are scratch files)",
    "save_only_model": "set train.keep_best_epoch instead (epoch checkpoints are scratch files)",
}

# Pairs per pass on a CPU under micro_batch_size 'auto', by training dtype (benchmarks/bench_memory.py, pairs with
# responses of up to 160 tokens): in fp32, 2 pairs a pass peaked at 3.1-3.2 GB and 1 at 2.1-2.2 GB, in about the same
# time, so fp32 takes 1; with the base held in bf16, 1 pair a pass peaked 0.3 GB lower than 2 but trained 9% fewer
# pairs/s, so bf16 takes 2.
CPU_MICRO_BATCH = {torch.float32: 1, torch.bfloat16: 2}


def micro_batch_size(config: TrainConfig, objective: Objective, device: torch.device | None = None,
                     dtype: torch.dtype = torch.float32) -> int:
    """Pairs per forward pass in each process: the largest divisor of the process's share of
    ``train.batch_size`` not above ``train.micro_batch_size`` (the whole share when it is None or
    the objective cannot accumulate; 'auto': ``CPU_MICRO_BATCH`` of the training dtype on a CPU,
    the whole share on a GPU)."""
    share = config.batch_size // config.world_size()
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
    share = config.batch_size // config.world_size()  # the global batch, split among the processes
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
        # No warm-up: with one warm-up step the first step ran at learning rate 0 (a third of a demo round's
        # three steps wasted, and the second step's rewards still the reference's, which read as not learning).
        lr_scheduler_type="constant",
        # Evaluation computes the loss alone: otherwise TRL runs a second forward for the full-vocabulary
        # logits and the Trainer keeps every held-out batch's (unused: no compute_metrics).
        prediction_loss_only=True,
        **objective.trl_args(config, beta),
    )
    if config.engine == "ray" and config.ray.deepspeed_config:
        args["deepspeed"] = config.ray.deepspeed_config  # the Ray workers' DeepSpeed (ZeRO-3) config, read by the Trainer
    if eval_each_epoch:
        args.update(_heldout_args(config, share))
    args.update(_user_args(config))
    return objective.config_class()(**args)


def _heldout_args(config: TrainConfig, share: int) -> dict:
    """Held-out pairs scored at the end of each epoch, for the over-optimization alarm (in batches of a
    process's share of train.batch_size, as TRL averages the NLL term per batch; no gradients, little memory)."""
    args = dict(eval_strategy="epoch", per_device_eval_batch_size=share)
    if config.keep_best_epoch:
        # The held-out loss decides: a proper score of the preference (accuracy on a few dozen
        # pairs ties; margins reward over-confidence) that includes the NLL term being trained.
        args.update(save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="eval_loss",
                    greater_is_better=False, save_total_limit=1, save_only_model=True)
    return args


def _user_args(config: TrainConfig) -> dict:
    """``train.dpo_args``, refused when it sets a key Flywheel manages."""
    managed = sorted(MANAGED_DPO_ARGS.keys() & config.dpo_args.keys())
    if managed:
        raise ValueError(f"train.dpo_args may not set {', '.join(managed)}: Flywheel sets them (see MANAGED_DPO_ARGS)")
    return config.dpo_args


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
