"""The reference's side of training: its log-probs of the pairs (as TRL's reference pass left them
in the datasets), where training starts against it (``Start``), and freeing it before the first step.
"""

from __future__ import annotations

import gc

import torch

from infra.settings import TrainConfig
from tasks.training.diagnostics import Start
from tasks.training.objectives import Objective

# Reference log-probs of a run's pairs, by dataset ("train", "eval"): (chosen, rejected) lists.
ReferenceLogps = dict[str, tuple[list[float], list[float]]]


def dataset_reference_logps(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The (chosen, rejected) reference log-probs TRL's reference pass added to ``dataset``."""
    return torch.tensor(dataset["ref_chosen_logps"]).float(), torch.tensor(dataset["ref_rejected_logps"]).float()


def has_reference_logps(dataset) -> bool:
    return dataset is not None and "ref_chosen_logps" in (dataset.column_names or [])


def trainer_reference_logps(trainer) -> ReferenceLogps | None:
    """The reference log-probs a just-built trainer computed (or was handed), in the form
    ``train_policy`` takes them back; None when its objective has none."""
    if not has_reference_logps(trainer.train_dataset):
        return None
    shared = {"train": tuple(t.tolist() for t in dataset_reference_logps(trainer.train_dataset))}
    if trainer.eval_dataset is not None:
        shared["eval"] = tuple(t.tolist() for t in dataset_reference_logps(trainer.eval_dataset))
    return shared


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
        (policy_c, policy_r), (ref_c, ref_r) = _starting_logps(trainer, dataset), dataset_reference_logps(dataset)
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


def drop_reference(trainer) -> None:
    """Free the reference model once its log-probs are computed: the trainer's handle, accelerate's
    (it keeps every model it prepared) and, by collecting, the cycle TRL's fused LM head makes (the
    model's forward bound to it)."""
    held, trainer.ref_model = trainer.ref_model, None
    models = getattr(trainer.accelerator, "_models", None)
    if held is not None and isinstance(models, list):
        models[:] = [m for m in models if m is not held]
    del held
    gc.collect()
