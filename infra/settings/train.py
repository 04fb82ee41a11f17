"""`train`: the preference training, its objectives' settings and its alarms' thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from infra.settings.base import Section
from infra.settings.ray import RayTrainConfig


class DiagnosticsConfig(Section):
    """Thresholds of the training alarms (tasks/training/diagnostics.py); promotion.blocking_alarms picks those that block."""

    initial_loss_tolerance: float = Field(
        0.02, gt=0,
        description="When the first step's DPO loss is known in advance (sigmoid DPO alone, train.nll_weight 0, from "
        "the policy's own reference), it must be within this of ln 2 = 0.693; further off raises reference_mismatch.",
    )
    initial_reward_tolerance: float = Field(
        0.05, gt=0,
        description="The first step's implicit rewards (beta x log-ratio to the reference, chosen and rejected) must be "
        "within this of what the reference implies before any update: 0 when the reference is the starting policy; "
        "with train.reference 'initial' from round 2 on, inside the range of the pairs' starting rewards, measured "
        "before training. Further off raises reference_mismatch.",
    )
    reward_accuracy_band: tuple[float, float] = Field(
        (0.55, 0.95),
        description="[low, high] for the reward accuracy averaged over the second half of the steps (never the first, "
        "whose rewards are measured before any update): below low by more than its sampling error (one-sided 95%, "
        "over the pairs of those steps: 0.55 becomes ~0.31 over a demo's dozen pairs, ~0.43 over 48) raises "
        "not_learning; above high raises overfitting (memorising the pairs).",
    )
    over_optimization_ratio: float = Field(
        0.25, ge=0,
        description="over_optimization is raised when the held-out margin's gain (at the kept epoch, over its value "
        "before training) is below this share of the training margin's gain (mean over the second half of the steps "
        "up to the kept epoch, over its value before training), that gain being above over_optimization_min_margin.",
    )
    over_optimization_min_margin: float = Field(
        0.1, ge=0, description="Training margins at or below this are too small to judge: no over_optimization alarm."
    )

    @model_validator(mode="after")
    def _ordered_band(self) -> "DiagnosticsConfig":
        low, high = self.reward_accuracy_band
        if not 0 <= low < high <= 1:
            raise ValueError("train.diagnostics.reward_accuracy_band must be [low, high] with 0 <= low < high <= 1")
        return self


class RobustConfig(Section):
    label_smoothing: float = Field(
        0.1, ge=0, lt=0.5,
        description="Objective 'robust' (Chowdhury et al. 2024, TRL loss_type robust): the assumed share of preference "
        "labels that are flipped, eps; usual 0.05-0.2. 0 is plain sigmoid DPO. Learning rate as DPO's.",
    )


class SimPOConfig(Section):
    beta: float = Field(
        2.0, gt=0,
        description="Objective 'simpo' (Meng et al. 2024): beta scales the length-normalised log-probability (no "
        "reference), so its range is not DPO's: usual 2-2.5 (used instead of train.beta). SimPO wants a lower learning "
        "rate than DPO (the paper: 3e-7 to 1e-6 full fine-tune; with LoRA about 10x that, ~5e-6 to 1e-5).",
    )
    gamma_beta_ratio: float = Field(
        0.5, ge=0,
        description="Target reward margin as a share of beta, gamma/beta; usual 0.3-0.8 (the paper's default 0.5). "
        "TRL's simpo_gamma is the absolute gamma = gamma_beta_ratio x beta.",
    )


class ORPOConfig(Section):
    weight: float = Field(
        0.1, gt=0,
        description="Objective 'orpo' (Hong et al. 2024, reference-free): the paper's lambda, weight of the odds-ratio term added to the "
        "SFT loss on the chosen response (TRL's beta); usual 0.05-0.25, the paper's 0.1. Used instead of train.beta. "
        "Learning rate ~ SFT's (paper: 8e-6 full fine-tune; LoRA ~5e-5 to 2e-4).",
    )
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class KTOConfig(Section):
    desirable_weight: float = Field(
        1.0, gt=0,
        description="Objective 'kto' (Ethayarajh et al. 2024, unpaired): weight of desirable rows' loss. Keep "
        "desirable_weight x n_desirable / (undesirable_weight x n_undesirable) in 1 to 4/3 (the paper's advice); "
        "the round's pairs give one of each, feedback files may not. beta is train.beta (usual 0.01-0.5, 0.1); "
        "learning rate as DPO's (paper: 5e-7 to 5e-6 full fine-tune; LoRA ~10x).",
    )
    undesirable_weight: float = Field(1.0, gt=0, description="Weight of undesirable rows' loss (see desirable_weight).")
    feedback_files: list[Path] = Field(
        default_factory=list,
        description="JSONL files of unpaired user feedback added to KTO's training rows: one object per line with "
        "'prompt' (text), 'completion' (text) and 'label' (true: desirable, false: undesirable).",
    )


class TrainConfig(Section):
    objective: list[str] = Field(
        ["dpo"],
        min_length=1,
        description="Preference objective for round i (last repeats; a single name is a one-round schedule), from "
        "tasks/training/objectives.py: 'dpo' (sigmoid, plus the NLL term of nll_weight), 'dpo_nll' (the same, nll_weight > 0 "
        "required), 'ipo' (tau = beta, usual 0.01-0.5), 'robust' (label smoothing, train.robust), 'apo_zero' "
        "(chosen up, rejected down, for chosen answers better than the policy's), 'simpo' (reference-free, "
        "train.simpo), 'orpo' (reference-free, train.orpo), 'kto' (unpaired rows, train.kto).",
    )
    beta: list[float] = Field(
        [0.1],
        min_length=1,
        description="DPO beta for round i (last repeats); a rising schedule keeps later rounds closer to their reference. "
        "Also IPO's tau and KTO's beta (usual 0.01-0.5); SimPO and ORPO use train.simpo.beta and train.orpo.weight.",
    )
    learning_rate: list[float] = Field(
        [5e-4, 4e-4, 3e-4],
        min_length=1,
        description="Learning rate for round i (last repeats). LoRA wants ~10x a full fine-tune's; "
        "decaying over rounds steadies later ones.",
    )
    epochs: float = Field(
        1.0, gt=0,
        description="Passes over the round's pairs. One by default: measured on the default round, a second epoch "
        "memorised the pairs (training margin +4.4 while the held-out pairs' rose +0.5, reward accuracy 1.0).",
    )
    batch_size: int = Field(
        8, ge=1,
        description="Pairs per optimizer step, all processes together: each of train.num_processes takes "
        "batch_size / num_processes of them (the gradients are averaged across processes).",
    )
    # Measured (benchmarks/bench_memory.py: the bundled model, 8 pairs a step, responses of up to 160 tokens, bf16
    # on a CPU): the train stage's peak resident memory was 6.5 GB at 8 pairs per forward, 3.9 at 4, 2.7 at 2, 2.6 at 1.
    # In fp32: 3.1-3.2 GB at 2, 2.1-2.2 GB at 1, in about the same time; hence 1 in fp32 and 2 with bf16 on a CPU.
    # On an H200 a pass of a 135M model cost about 0.27 s whether it held 2 pairs or 32 (launch overhead), so
    # 2-pair passes made a step 16 times slower there (benchmarks/probe_gpu.py): "auto" splits only on CPUs.
    micro_batch_size: int | Literal["auto"] | None = Field(
        "auto",
        description="Pairs per forward and backward pass (in each process); gradient accumulation over "
        "batch_size / num_processes / micro_batch_size of them makes up each optimizer step, so the step, its loss "
        "and what is learnt are those of the whole batch (the NLL term is re-weighted to the step's token mean). "
        "Memory grows with it: activations are kept for every sequence of a pass. The largest divisor of a process's share of batch_size not above it is used; "
        "None: the whole share; 'auto': on a CPU (memory) 1 in fp32 and 2 with bf16 autocast, the whole share on a GPU (speed). "
        "Objectives whose loss is a batch statistic (orpo's token-mean NLL, kto's KL estimate) always take the "
        "whole batch.",
    )

    @field_validator("micro_batch_size")
    @classmethod
    def _positive_micro_batch(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 (or 'auto', or null for the whole batch)")
        return value

    max_length: int = Field(
        320, ge=16, description="Prompt + response tokens kept per sequence (>= 16); a longer one is cut at its end, as "
        "TRL does. Memory and time grow with it; the longest prompt plus generate.max_new_tokens should fit.",
    )
    share_prompt: bool = Field(
        True,
        description="The DPO family's objectives put each pair in one row, the prompt once, then both answers (a 4D "
        "attention mask keeps them apart): the same log-probs and gradients for about a third fewer tokens at the "
        "demo's lengths (tasks/training/packed_pairs.py). Off: TRL's two rows a pair, the prompt computed twice.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank; higher ranks overfit small pair sets sooner.")
    lora_alpha: int = Field(
        32, ge=1, description="LoRA scaling numerator: the adapter's update is scaled by lora_alpha / lora_r, so raising "
        "lora_r at a fixed alpha makes each rank's contribution smaller.",
    )
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout probability on the LoRA branch during training (0 <= p < 1; 0 turns it off).")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get adapters ('all-linear' or a list of names)."
    )
    seed: int = Field(0, description="Seed of the trainer: the order of the pairs, the LoRA initialisation and dropout.")
    deployment: str | None = Field(
        None,
        description="Prefect deployment ('flow/deployment', e.g. 'flywheel-train/train-gpu') that runs training, "
        "typically on a GPU work pool; None trains inside the round's own process.",
    )
    num_processes: int = Field(
        1, ge=1,
        description="Training processes on the training machine, one per GPU (CPU processes talk over gloo). More "
        "than 1, or an accelerate_config, launches training with `accelerate launch` (DDP unless the config file says "
        "otherwise); the global batch stays train.batch_size, which must divide evenly among them.",
    )
    engine: Literal["local", "ray"] = Field(
        "local",
        description="Where training runs: 'local' (this process, or train.num_processes processes launched with "
        "accelerate) or 'ray' (a Ray Train TorchTrainer of train.ray.num_workers workers on the cluster at "
        "ray.address; rank 0's steps logged once per step, the trained policy returned through the artifact store).",
    )
    ray: RayTrainConfig = Field(default_factory=RayTrainConfig, description="train.engine 'ray' settings.")
    accelerate_config: Path | None = Field(
        None,
        description="An accelerate config file for the launch (e.g. configs/accelerate-zero3.yaml for DeepSpeed "
        "ZeRO-3; relative paths in it are read from its own folder); train.num_processes overrides its "
        "num_processes. None: plain DDP across train.num_processes.",
    )
    launch_dir: Path | None = Field(
        None,
        description="A folder every training machine mounts at the same path (NFS, Lustre, a shared volume), for an "
        "accelerate_config over several machines (num_machines > 1, e.g. configs/accelerate-multinode.yaml): the "
        "launch's job folder goes there, this machine runs machine 0 and prints the command each other machine runs. "
        "The champion checkpoint and the repository must be at the same paths there too. None: one machine.",
    )
    heldout_share: float = Field(
        0.1, ge=0, lt=1,
        description="Share of the round's pairs held out of training and scored each epoch; training margins "
        "rising while held-out ones stay flat raises the over-optimization alarm (0 disables).",
    )
    dispatch_timeout_s: float = Field(
        6 * 3600, gt=0, description="How long the round waits for a dispatched training run."
    )
    min_pairs: int = Field(2, ge=1, description="A round that keeps fewer pairs than this skips training (and promotion).")
    reference: Literal["initial", "champion"] = Field(
        "initial",
        description="DPO reference model. 'initial': the round-0 policy (model.base) in every round, as RLHFlow's and "
        "OpenRLHF's iterative DPO do, so rounds cannot drift step by step away from it (its log-probabilities of the "
        "round's pairs are computed once, then it is freed). 'champion': the policy the round starts from (the "
        "adapter-disabled champion), which re-anchors every round on the last one.",
    )
    nll_weight: float = Field(
        1.0, ge=0,
        description="Weight of an NLL term on the chosen response (per-token mean) added to the DPO loss: TRL's "
        "loss_type [sigmoid, sft] with loss_weights [1, nll_weight]. Iterative RPO (Pang et al. 2024) uses 1 and found "
        "it decisive against chosen likelihoods falling round after round; 0 trains on the DPO loss alone.",
    )
    replay_share: float = Field(
        0.25, ge=0, lt=1,
        description="Share of the round's training set drawn (seeded, without duplicates) from earlier rounds' kept "
        "pairs, so a round does not unlearn what earlier ones taught; capped by how many there are. The held-out "
        "pairs stay this round's own. 0 disables.",
    )
    keep_best_epoch: bool = Field(
        True,
        description="Keep the epoch with the lowest held-out loss (the round's held-out pairs, scored each epoch; the "
        "loss includes the NLL term) rather than the last one. Needs held-out pairs (train.heldout_share > 0); "
        "without them the last epoch is kept.",
    )
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig, description="Thresholds of the training alarms.")
    robust: RobustConfig = Field(default_factory=RobustConfig, description="Settings of the 'robust' objective.")
    simpo: SimPOConfig = Field(default_factory=SimPOConfig, description="Settings of the 'simpo' objective.")
    orpo: ORPOConfig = Field(default_factory=ORPOConfig, description="Settings of the 'orpo' objective.")
    kto: KTOConfig = Field(default_factory=KTOConfig, description="Settings of the 'kto' objective.")
    adopted_ablation: int | None = Field(
        None,
        description="Set by `flywheel loop --adopt-ablation N`: the ablation whose recommended cell's objective, LoRA "
        "rank and beta these settings are (recorded with every round trained on them); None: set by hand.",
    )
    dpo_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments passed as they are to the objective's TRL config (trl.DPOConfig, or "
        "CPOConfig/ORPOConfig/KTOConfig; e.g. lr_scheduler_type, weight_decay); keys must be fields of it, and those "
        "Flywheel sets from its own fields (beta, learning_rate, loss_type, label_smoothing, ...: MANAGED_DPO_ARGS in "
        "tasks/training/dpo_args.py) "
        "are refused when the config loads.",
    )

    def world_size(self) -> int:
        """The training processes that share each step's batch: Ray workers (engine 'ray') or launched processes."""
        return self.ray.num_workers if self.engine == "ray" else self.num_processes

    @field_validator("objective", mode="before")
    @classmethod
    def _one_name_is_a_schedule(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _positive_schedules(self) -> "TrainConfig":
        if any(b <= 0 for b in self.beta):
            raise ValueError("train.beta values must be > 0")
        if any(lr <= 0 for lr in self.learning_rate):
            raise ValueError("train.learning_rate values must be > 0")
        if self.batch_size % self.num_processes:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.num_processes "
                             f"({self.num_processes}): the global batch is split evenly among the processes")
        if self.engine == "ray" and self.batch_size % self.ray.num_workers:
            raise ValueError(f"train.batch_size ({self.batch_size}) must be a multiple of train.ray.num_workers "
                             f"({self.ray.num_workers}): the global batch is split evenly among the Ray workers")
        if self.engine == "ray" and (self.num_processes > 1 or self.accelerate_config is not None):
            raise ValueError("train.engine 'ray' takes its workers from train.ray.num_workers: leave train.num_processes "
                             "at 1 and train.accelerate_config unset (DeepSpeed: train.ray.deepspeed_config)")
        return self
