"""TRL's DPOTrainer with two additions Flywheel needs.

* Reference log-probabilities handed in (``reference_logps``, per dataset name, "train" and
  "eval") are used instead of computing them: the ablation's cells share one reference pass.
* With an NLL term (loss_type [..., "sft"]) both terms of the loss are logged apart, as
  ``loss/preference`` and ``loss/nll`` (TRL logs only their weighted sum), from the forward pass
  the loss already made.
"""

from __future__ import annotations

import functools


@functools.cache
def flywheel_dpo_trainer() -> type:
    """The class, built on first use: importing trl's trainers pulls in half the ecosystem."""
    from trl import DPOTrainer

    return type("FlywheelDPOTrainer", (_Additions, DPOTrainer), {})


class _Additions:
    """Mixed in before DPOTrainer."""

    def __init__(self, *args, reference_logps: dict[str, tuple[list[float], list[float]]] | None = None, **kwargs):
        self._given_reference_logps = reference_logps or {}
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        given = self._given_reference_logps.get(name)
        if given is not None:
            chosen, rejected = given
            if len(chosen) != len(dataset) or len(rejected) != len(dataset):
                raise ValueError(f"reference log-probs for {name!r} cover {len(chosen)} pairs, the dataset has {len(dataset)}")
            return dataset.add_column("ref_chosen_logps", list(chosen)).add_column("ref_rejected_logps", list(rejected))
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def _compute_loss(self, model, inputs, return_outputs):
        if "sft" not in self.loss_types:
            return super()._compute_loss(model, inputs, return_outputs)
        captured = {}

        def forward(*args, **kwargs):
            captured.setdefault("outputs", model(*args, **kwargs))  # the first call is the policy's forward
            return captured["outputs"]

        result = super()._compute_loss(forward, inputs, return_outputs)
        loss = result[0] if return_outputs else result
        shift_mask = inputs["completion_mask"][..., 1:]
        chosen_mask = shift_mask.chunk(2, dim=0)[0].bool()
        chosen_logps = captured["outputs"].log_probs[:, -shift_mask.size(1):].chunk(2, dim=0)[0]
        nll = -chosen_logps[chosen_mask].mean().detach()  # as TRL's "sft" term computes it
        weight = self.loss_weights[self.loss_types.index("sft")]
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["loss/nll"].append(self.accelerator.gather_for_metrics(nll).mean().item())
        self._metrics[mode]["loss/preference"].append(
            self.accelerator.gather_for_metrics(loss.detach() - weight * nll).mean().item())
        return result
