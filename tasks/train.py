"""train: DPO on the round's pairs with TRL and a PEFT LoRA adapter.

Reads: the champion checkpoint and the filter stage's pairs.
Writes: ``adapter/`` (the LoRA adapter), ``merged/`` (the full checkpoint the
next round starts from), ``train_result.json`` (with TRL's per-step log) and
``training.png``.

The reference model is the policy with its adapter disabled, so no second copy
of the weights is held. On CPUs with native bf16 (AMX) and on GPUs training
runs under bf16 autocast with fp32 master weights; the merged checkpoint is
saved in fp32 because LoRA's small deltas would round away in bf16.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from pydantic import BaseModel

from infra import layout
from infra.records import PreferencePair
from infra.settings import MANAGED_DPO_ARGS, ModelConfig, TrainConfig, per_round
from tasks.diagnostics import Alarm, diagnose_training
from tasks.filter import to_trl_rows

LN2 = math.log(2)


def split_heldout(pairs: list[PreferencePair], share: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """A seeded held-out split (none when it would leave fewer than 2 pairs on either side)."""
    import random

    n_heldout = int(round(len(pairs) * share))
    if n_heldout < 2 or len(pairs) - n_heldout < 2:
        return list(pairs), []
    order = list(range(len(pairs)))
    random.Random(f"flywheel-heldout-{seed}").shuffle(order)
    held = set(order[:n_heldout])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


class TrainResult(BaseModel):
    n_pairs: int
    n_heldout: int = 0
    n_steps: int
    beta: float
    learning_rate: float
    initial_loss: float
    final_loss: float
    final_reward_accuracy: float
    final_reward_margin: float
    runtime_s: float
    pairs_per_s: float
    log_history: list[dict]
    alarms: list[Alarm] = []


def dpo_args(config: TrainConfig, round_index: int, device: torch.device, dtype: torch.dtype, output_dir: str,
             eval_each_epoch: bool = False):
    """The trl.DPOConfig for this round: the pipeline's fields, then the user's pass-through extras."""
    from trl import DPOConfig

    use_bf16 = dtype == torch.bfloat16
    args = dict(
        output_dir=output_dir,
        beta=per_round(config.beta, round_index),
        learning_rate=per_round(config.learning_rate, round_index),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        max_length=config.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=config.seed,
        bf16=use_bf16,
        use_cpu=device.type == "cpu",
        activation_checkpointing=False,  # recomputation costs more than it saves on small models
        dataloader_num_workers=0,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=1,
    )
    if eval_each_epoch:
        # Held-out pairs scored at the end of each epoch, for the over-optimization alarm.
        args.update(eval_strategy="epoch", per_device_eval_batch_size=config.batch_size)
    managed = sorted(MANAGED_DPO_ARGS.keys() & config.dpo_args.keys())
    if managed:
        raise ValueError(f"train.dpo_args may not set {', '.join(managed)}: Flywheel sets them (see MANAGED_DPO_ARGS)")
    args.update(config.dpo_args)
    return DPOConfig(**args)


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


def train_policy(
    checkpoint: str,
    pairs: list[PreferencePair],
    config: TrainConfig,
    model_config: ModelConfig,
    round_index: int,
    output_dir: Path,
    on_log: Callable[[dict, int], None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter with DPO from ``checkpoint``; save adapter and merged model under ``output_dir``."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from infra.models import pick_device, pick_dtype

    if len(pairs) < 1:
        raise ValueError("no preference pairs to train on")
    device = pick_device(model_config)
    dtype = pick_dtype(model_config, device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    train_pairs, heldout_pairs = split_heldout(pairs, config.heldout_share, config.seed + round_index)
    dataset = Dataset.from_list(to_trl_rows(train_pairs))
    with tempfile.TemporaryDirectory() as scratch:
        args = dpo_args(config, round_index, device, dtype, scratch, eval_each_epoch=bool(heldout_pairs))
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=Dataset.from_list(to_trl_rows(heldout_pairs)) if heldout_pairs else None,
            processing_class=tokenizer,
            peft_config=lora_config(config),
            callbacks=[_log_callback(on_log)] if on_log else None,
        )
        started = time.perf_counter()
        trainer.train()
        runtime = time.perf_counter() - started
    history = [h for h in trainer.state.log_history if "loss" in h]
    peft_model = trainer.model
    peft_model.save_pretrained(output_dir / layout.ADAPTER)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(output_dir / layout.MERGED)
    tokenizer.save_pretrained(output_dir / layout.MERGED)
    n_examples = len(train_pairs) * config.epochs
    return TrainResult(
        n_pairs=len(train_pairs),
        n_heldout=len(heldout_pairs),
        n_steps=trainer.state.global_step,
        beta=args.beta,
        learning_rate=args.learning_rate,
        initial_loss=history[0]["loss"] if history else float("nan"),
        final_loss=history[-1]["loss"] if history else float("nan"),
        final_reward_accuracy=history[-1].get("rewards/accuracies", float("nan")) if history else float("nan"),
        final_reward_margin=history[-1].get("rewards/margins", float("nan")) if history else float("nan"),
        runtime_s=runtime,
        pairs_per_s=n_examples / runtime if runtime > 0 else float("nan"),
        log_history=trainer.state.log_history,
        alarms=diagnose_training(trainer.state.log_history, config.diagnostics),
    )
