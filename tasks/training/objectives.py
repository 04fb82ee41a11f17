"""Preference objectives: each a small adapter from Flywheel's pairs to the TRL trainer and config
that implements it, registered by name (``train.objective``).

==========  ===============================  =========  ====================================
name        TRL                              reference  first loss, policy == its reference
==========  ===============================  =========  ====================================
dpo         DPOTrainer sigmoid (+ sft)       yes        ln 2 (unknown with the NLL term)
dpo_nll     DPOTrainer [sigmoid, sft]        yes        unknown (the NLL term)
ipo         DPOTrainer ipo                   yes        (1 / (2 tau))^2
robust      DPOTrainer robust                yes        ln 2
apo_zero    DPOTrainer apo_zero              yes        1
simpo       experimental CPOTrainer simpo    no         unknown (depends on the policy)
orpo        experimental ORPOTrainer         no         unknown (an SFT term)
kto         KTOTrainer (unpaired rows)       yes        0.5 x weight, when both weights match
==========  ===============================  =========  ====================================

An objective says which trainer and config class it needs, the loss-specific arguments, the
rows it trains on (paired, or unpaired for KTO), and the first step's loss when it is known in
advance (tasks/training/diagnostics.py checks it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import ClassVar

from infra.records import PreferencePair
from infra.registry import Registry
from infra.settings import TrainConfig, per_round

LN2 = math.log(2)
REFERENCE_BATCH_PAIRS = 16  # pairs per forward pass of the reference pass, at least


def to_trl_rows(pairs: list[PreferencePair]) -> list[dict]:
    """TRL's conversational preference format."""
    return [
        {
            "prompt": [{"role": "user", "content": p.prompt}],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


class Objective:
    name: ClassVar[str]
    uses_reference: ClassVar[bool] = True  # False: no reference model, no reference pass
    paired: ClassVar[bool] = True  # False: trains on unpaired (prompt, completion, label) rows
    # True: the loss is a mean over pairs (or, the DPO family's NLL term, re-weighted to the step's token mean), so
    # micro-batches with gradient accumulation (train.micro_batch_size) learn what the whole batch would.
    accumulates: ClassVar[bool] = True

    def beta(self, config: TrainConfig, round_index: int) -> float:
        """The value passed as TRL's ``beta``."""
        return per_round(config.beta, round_index)

    def with_beta(self, config: TrainConfig, beta: float) -> TrainConfig:
        """``config`` with this objective's beta set to ``beta`` (every round)."""
        return config.model_copy(update={"beta": [beta]})

    def nll_weight(self, config: TrainConfig) -> float:
        return 0.0

    def trl_args(self, config: TrainConfig, beta: float) -> dict:
        """Loss-specific arguments of the TRL config."""
        return {}

    def config_class(self) -> type:
        from trl import DPOConfig

        return DPOConfig

    def trainer_class(self) -> type:
        from tasks.training.trl_internals import flywheel_dpo_trainer

        return flywheel_dpo_trainer()

    def rows(self, pairs: list[PreferencePair], feedback: list[dict] = ()) -> list[dict]:
        """The TRL rows for ``pairs`` (and, for unpaired objectives, the ``feedback`` rows)."""
        return to_trl_rows(pairs)

    def expected_initial_loss(self, config: TrainConfig, beta: float) -> float | None:
        """The first step's loss when the policy is its own reference; None when it is not known."""
        return None


OBJECTIVES: Registry[type[Objective]] = Registry("objective", Objective)


class _DPOLoss(Objective):
    loss_type: ClassVar[str]

    def trl_args(self, config: TrainConfig, beta: float) -> dict:
        weight = self.nll_weight(config)
        return dict(
            # The reference's log-probs once, before training: no reference forward per step, and a
            # separate reference model (the round-0 policy) can be freed before the first step.
            precompute_ref_log_probs=True,
            # No gradients kept in that pass: larger batches than training's (length-sorted, tasks/training/trl_internals.py).
            precompute_ref_batch_size=max(REFERENCE_BATCH_PAIRS, config.batch_size // config.world_size()),
            loss_type=[self.loss_type, "sft"] if weight > 0 else [self.loss_type],
            loss_weights=[1.0, weight] if weight > 0 else None,
        )

    def expected_initial_loss(self, config: TrainConfig, beta: float) -> float | None:
        return self.loss_at_zero(config, beta) if self.nll_weight(config) == 0 else None

    def loss_at_zero(self, config: TrainConfig, beta: float) -> float:
        return LN2


@OBJECTIVES.register("dpo")
class DPO(_DPOLoss):
    """Sigmoid DPO (Rafailov et al. 2023), plus the NLL term on the chosen response when train.nll_weight > 0."""

    name = "dpo"
    loss_type = "sigmoid"

    def nll_weight(self, config: TrainConfig) -> float:
        return config.nll_weight


@OBJECTIVES.register("dpo_nll")
class DPONLL(DPO):
    """DPO plus an NLL term on the chosen response (iterative RPO, Pang et al. 2024): TRL's [sigmoid, sft]."""

    name = "dpo_nll"


@OBJECTIVES.register("ipo")
class IPO(_DPOLoss):
    """IPO (Azar et al. 2023): squared distance of the per-token mean log-ratio margin to 1 / (2 tau), tau = beta."""

    name = "ipo"
    loss_type = "ipo"

    def loss_at_zero(self, config: TrainConfig, beta: float) -> float:
        # TRL normalises IPO's log-ratios per token; at the start they are 0 whatever the length.
        return (1 / (2 * beta)) ** 2


@OBJECTIVES.register("robust")
class Robust(_DPOLoss):
    """Robust DPO (Chowdhury et al. 2024): the sigmoid loss unbiased for a share eps of flipped labels."""

    name = "robust"
    loss_type = "robust"

    def trl_args(self, config: TrainConfig, beta: float) -> dict:
        return {**super().trl_args(config, beta), "label_smoothing": config.robust.label_smoothing}


@OBJECTIVES.register("apo_zero")
class APOZero(_DPOLoss):
    """APO-zero (D'Oosterlinck et al. 2024): chosen likelihood up, rejected down, each against the reference."""

    name = "apo_zero"
    loss_type = "apo_zero"

    def loss_at_zero(self, config: TrainConfig, beta: float) -> float:
        return 1.0  # (1 - sigmoid(0)) + sigmoid(0)


@OBJECTIVES.register("simpo")
class SimPO(Objective):
    """SimPO (Meng et al. 2024): reference-free, length-normalised log-probs, target margin gamma."""

    name = "simpo"
    uses_reference = False

    def beta(self, config: TrainConfig, round_index: int) -> float:
        return config.simpo.beta

    def with_beta(self, config: TrainConfig, beta: float) -> TrainConfig:
        return config.model_copy(update={"simpo": config.simpo.model_copy(update={"beta": beta})})

    def trl_args(self, config: TrainConfig, beta: float) -> dict:
        # TRL's simpo_gamma is the absolute margin; users think of gamma / beta.
        return dict(loss_type="simpo", cpo_alpha=0.0, simpo_gamma=config.simpo.gamma_beta_ratio * beta)

    def config_class(self) -> type:
        from trl.experimental.cpo import CPOConfig

        return CPOConfig

    def trainer_class(self) -> type:
        from trl.experimental.cpo import CPOTrainer

        return CPOTrainer


@OBJECTIVES.register("orpo")
class ORPO(Objective):
    """ORPO (Hong et al. 2024): SFT on the chosen response plus lambda x the odds-ratio term; reference-free."""

    name = "orpo"
    uses_reference = False
    accumulates = False  # its NLL term is a token mean over the batch: micro-batches would weigh tokens differently

    def beta(self, config: TrainConfig, round_index: int) -> float:
        return config.orpo.weight

    def with_beta(self, config: TrainConfig, beta: float) -> TrainConfig:
        return config.model_copy(update={"orpo": config.orpo.model_copy(update={"weight": beta})})

    def config_class(self) -> type:
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig

    def trainer_class(self) -> type:
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer


@OBJECTIVES.register("kto")
class KTO(Objective):
    """KTO (Ethayarajh et al. 2024) on unpaired rows: each pair's chosen desirable, its rejected
    undesirable, plus the feedback files' rows."""

    name = "kto"
    paired = False
    accumulates = False  # its KL estimate pairs each row with another of the same batch

    def trl_args(self, config: TrainConfig, beta: float) -> dict:
        return dict(precompute_ref_log_probs=True, desirable_weight=config.kto.desirable_weight,
                    undesirable_weight=config.kto.undesirable_weight)

    def config_class(self) -> type:
        from trl import KTOConfig

        return KTOConfig

    def trainer_class(self) -> type:
        from trl import KTOTrainer

        return KTOTrainer

    def rows(self, pairs: list[PreferencePair], feedback: list[dict] = ()) -> list[dict]:
        rows = []
        for p in pairs:
            prompt = [{"role": "user", "content": p.prompt}]
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": p.chosen}], "label": True})
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": p.rejected}], "label": False})
        return rows + list(feedback)

    def expected_initial_loss(self, config: TrainConfig, beta: float) -> float | None:
        # Rewards and the KL estimate start at 0: every row's loss is weight x (1 - sigmoid(0)).
        weights = config.kto.desirable_weight, config.kto.undesirable_weight
        return 0.5 * weights[0] if weights[0] == weights[1] else None


def objective_for(config: TrainConfig, round_index: int) -> Objective:
    """The objective ``train.objective`` names for ``round_index``."""
    return OBJECTIVES.get(config.objective[min(round_index - 1, len(config.objective) - 1)])()


class FeedbackFileError(ValueError):
    """A feedback file that is not what KTO reads; the message names the file and the line."""


def load_feedback(path: str | Path) -> list[dict]:
    """KTO rows from a JSONL file of {prompt, completion, label} objects (conversational format)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise FeedbackFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise FeedbackFileError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(item, dict):
            raise FeedbackFileError(f"{where}: expected an object with prompt, completion and label")
        missing = [key for key in ("prompt", "completion", "label") if key not in item]
        unknown = sorted(set(item) - {"prompt", "completion", "label"})
        if missing or unknown:
            raise FeedbackFileError(f"{where}: " + "; ".join(
                [*([f"missing {', '.join(missing)}"] if missing else []), *([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])]))
        for key in ("prompt", "completion"):
            if not isinstance(item[key], str) or not item[key].strip():
                raise FeedbackFileError(f"{where}: {key} must be a non-empty string")
        if not isinstance(item["label"], bool):
            raise FeedbackFileError(f"{where}: label must be true or false, got {item['label']!r}")
        rows.append({"prompt": [{"role": "user", "content": item["prompt"]}],
                     "completion": [{"role": "assistant", "content": item["completion"]}], "label": item["label"]})
    if not rows:
        raise FeedbackFileError(f"{path}: no feedback rows")
    return rows
