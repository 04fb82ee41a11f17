"""Every use of a private TRL name, in one place: Flywheel's DPOTrainer (its overrides of TRL's
private methods) and the fused LM head's tiles on a CPU (two private module attributes patched).

Written against TRL 1.16 (1.16.0; transformers 5.25); pyproject pins ``trl>=1.16,<1.17``. Before
moving to another TRL, run tests/test_trl_internals.py: ``check_trl_internals`` names every private
function or attribute relied on here that moved or changed its parameters. ``train_policy`` runs it
before it loads anything.

What the trainer adds to TRL's DPOTrainer:

* Reference log-probabilities handed in (``reference_logps``, per dataset name, "train" and
  "eval") are used instead of computing them: the ablation's cells share one reference pass.
* With an NLL term (loss_type [..., "sft"]) both terms of the loss are logged apart, as
  ``loss/preference`` and ``loss/nll`` (TRL logs only their weighted sum), from the forward pass
  the loss already made.
* Pairs of like length share a forward pass: each optimizer step's pairs, a random draw as with
  a plain shuffle, are ordered by length before they are cut into micro-batches
  (``StepSortedSampler``, tasks/training/batching.py), and the reference pass runs over the pairs
  sorted by length; the log-probs come back in the dataset's order. Both only change which pairs
  are padded together.
* With ``share_prompt`` each pair's prompt goes through the model once for both answers
  (tasks/training/packed_pairs.py), in training, held-out scoring and the reference pass.
* Under gradient accumulation (``train.micro_batch_size``) each micro-batch's loss is weighed by
  its share of the optimizer step, so the step's loss is the whole batch's: TRL averages the
  preference term over a micro-batch's pairs and the NLL term over its chosen tokens, and the
  Trainer averages the micro-batches; here the pairs are weighed by the step's pair count and
  the tokens by the step's token count.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Iterator

from tasks.training.batching import StepSortedSampler, pair_lengths
from tasks.training.packed_pairs import SharedPromptForward

TRL_SERIES = "1.16"  # the TRL minor series this module was written against (pyproject pins it)

# Private TRL names relied on, with the parameters they must take (None: an attribute, not called).
# DPOTrainer's methods Flywheel overrides or calls:
TRAINER_METHODS = {
    "_precompute_ref_logps": ("self", "dataset", "name", "batch_size"),
    "_get_train_sampler": ("self", "train_dataset"),
    "_compute_loss": ("self", "model", "inputs", "return_outputs"),
    "get_batch_samples": ("self", "epoch_iterator", "num_batches", "device"),
    "compute_ref_log_probs": ("self", "model", "inputs"),
}
# Attributes DPOTrainer.__init__ sets that the loss override reads.
TRAINER_ATTRIBUTES = ("_metrics", "loss_types", "loss_weights")
# trl.trainer.utils' module attributes lm_head_tiles patches.
UTILS_ATTRIBUTES = {"_CHUNKED_LOGPROB_CHUNK_SIZE": None, "_use_triton": ("device",)}


class TRLInternalsMoved(RuntimeError):
    """The installed TRL lacks (or changed) a private name Flywheel relies on; the message names each."""


def _parameter_problem(owner: str, name: str, found, expected: tuple[str, ...] | None) -> str | None:
    """Why ``found`` (``owner.name``) is not what Flywheel relies on: gone, or no longer taking the
    ``expected`` parameters (a wrapper taking ``*args`` passes them on and is accepted)."""
    if found is None:
        return f"{owner}.{name} is gone"
    if expected is None:
        return None
    try:
        signature = inspect.signature(found)
    except (TypeError, ValueError):
        return f"{owner}.{name} is no longer a function"
    params = signature.parameters
    passes_on = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    try:
        signature.bind(*expected)
        fits = passes_on or all(n in params for n in expected)
    except TypeError:
        fits = False
    return None if fits else f"{owner}.{name} takes ({', '.join(params)}), not ({', '.join(expected)})"


def trl_internals_problems(trainer_class=None, utils_module=None) -> list[str]:
    """What moved among the private TRL names this module relies on (empty: none). The defaults
    are the installed TRL's DPOTrainer and trl.trainer.utils; tests pass stand-ins."""
    if trainer_class is None:
        from trl import DPOTrainer as trainer_class
    if utils_module is None:
        import trl.trainer.utils as utils_module
    owner = f"trl.{trainer_class.__name__}"
    problems = [_parameter_problem(owner, name, getattr(trainer_class, name, None), params)
                for name, params in TRAINER_METHODS.items()]
    try:
        init_source = inspect.getsource(trainer_class.__init__)
    except (OSError, TypeError):
        init_source = ""
    problems += [f"{owner}.__init__ no longer sets self.{name}" for name in TRAINER_ATTRIBUTES
                 if f"self.{name} =" not in init_source and f"self.{name}=" not in init_source]
    problems += [_parameter_problem(utils_module.__name__, name, getattr(utils_module, name, None), params)
                 for name, params in UTILS_ATTRIBUTES.items()]
    return [p for p in problems if p]


def check_trl_internals(trainer_class=None, utils_module=None) -> None:
    """Raise TRLInternalsMoved naming every private TRL function or attribute that moved."""
    problems = trl_internals_problems(trainer_class, utils_module)
    if problems:
        import trl

        raise TRLInternalsMoved(f"TRL {trl.__version__} is not the TRL {TRL_SERIES} that tasks/training/trl_internals.py "
                                "was written against: " + "; ".join(problems))


# TRL's fused LM head projects the hidden states onto the vocabulary in tiles of 32768 columns (up
# to 4096 tokens each) and, without Triton, folds every tile into the log-softmax with torch ops
# that make several fp32 copies of it. Narrower tiles on a CPU bound those copies; the result is the
# same online log-sum-exp. Measured with benchmarks/bench_memory.py (bundled model, bf16): the
# train stage's peak fell from 7.5 to 6.5 GB at 8 pairs a forward, from 3.4 to 2.7 GB at 2.
CPU_VOCAB_TILE: int | None = 4096
# Without Triton the head also scores every position, prompt and padding too (so that a compiled
# tile keeps its shape, which eager CPU code does not need), and the loss keeps only the answers'.
# Scoring only the positions with a label spares that share of the head's work, forward and backward.
CPU_SCORE_LABELLED_ONLY = True


@contextlib.contextmanager
def lm_head_tiles(device) -> Iterator[None]:
    """Within the block, when ``device`` is a CPU, TRL's fused LM head scores ``CPU_VOCAB_TILE``
    vocabulary columns at a time and only the positions that have a label (elsewhere: TRL's own ways)."""
    import trl.trainer.utils as trl_utils

    if device.type != "cpu":
        yield
        return
    patched = {}
    if CPU_VOCAB_TILE is not None and hasattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE"):
        patched["_CHUNKED_LOGPROB_CHUNK_SIZE"] = min(trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, CPU_VOCAB_TILE)
    # The fused forward picks its compact path by asking ``_use_triton``; the kernels ask their own module's.
    if CPU_SCORE_LABELLED_ONLY and hasattr(trl_utils, "_use_triton"):
        patched["_use_triton"] = lambda device: True
    before = {name: getattr(trl_utils, name) for name in patched}
    for name, value in patched.items():
        setattr(trl_utils, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(trl_utils, name, value)


@functools.cache
def flywheel_dpo_trainer() -> type:
    """The class, built on first use: importing trl's trainers pulls in half the ecosystem."""
    from trl import DPOTrainer

    return type("FlywheelDPOTrainer", (_Additions, DPOTrainer), {})


@dataclass
class _Step:
    pairs: int  # pairs in the optimizer step, over all its micro-batches
    chosen_tokens: int  # chosen-response tokens the NLL term averages over


def _chosen_mask(inputs):
    """The chosen responses' tokens whose log-probs the loss reads (TRL's shifted completion mask)."""
    return inputs["completion_mask"][..., 1:].chunk(2, dim=0)[0].bool()


class _Additions:
    """Mixed in before DPOTrainer."""

    def __init__(self, *args, reference_logps: dict[str, tuple[list[float], list[float]]] | None = None,
                 share_prompt: bool = False, **kwargs):
        self._given_reference_logps = reference_logps or {}
        self._share_prompt = share_prompt
        self._step: _Step | None = None
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        given = self._given_reference_logps.get(name)
        if given is not None:
            chosen, rejected = given
            if len(chosen) != len(dataset) or len(rejected) != len(dataset):
                raise ValueError(f"reference log-probs for {name!r} cover {len(chosen)} pairs, the dataset has {len(dataset)}")
            return dataset.add_column("ref_chosen_logps", list(chosen)).add_column("ref_rejected_logps", list(rejected))
        lengths = pair_lengths(dataset, self.args.max_length, self._share_prompt)
        if lengths is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        # Longest first, so that a batch pads little (and its memory peaks at the first batch).
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        inverse = sorted(range(len(order)), key=lambda k: order[k])
        return super()._precompute_ref_logps(dataset.select(order), name, batch_size).select(inverse)

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(self._forward(model), inputs)

    def _forward(self, model):
        return SharedPromptForward(model) if self._share_prompt else model

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = pair_lengths(dataset, self.args.max_length, self._share_prompt)
        if lengths is None or self.args.train_sampling_strategy != "random":
            return super()._get_train_sampler(train_dataset)
        # The global step: every process's micro-batches of it (accelerate deals the batches out in turn).
        step = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        return StepSortedSampler(lengths, step, self.args.seed)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """The optimizer step's micro-batches, counted for ``_compute_loss``'s weights."""
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._step = _Step(pairs=sum(len(b["completion_mask"]) // 2 for b in batches),
                           chosen_tokens=sum(int(_chosen_mask(b).sum()) for b in batches))
        return batches, num_items

    def _compute_loss(self, model, inputs, return_outputs):
        model = self._forward(model)
        accumulating = self.model.training and self.args.gradient_accumulation_steps > 1 and self._step is not None
        if "sft" not in self.loss_types and not accumulating:
            return super()._compute_loss(model, inputs, return_outputs)
        captured = {}

        def forward(*args, **kwargs):
            captured.setdefault("outputs", model(*args, **kwargs))  # the first call is the policy's forward
            return captured["outputs"]

        result = super()._compute_loss(forward, inputs, return_outputs)
        loss = result[0] if return_outputs else result
        weight = self.loss_weights[self.loss_types.index("sft")] if "sft" in self.loss_types else 0.0
        chosen_mask = _chosen_mask(inputs)
        nll = loss.new_zeros(())
        if weight:
            chosen_logps = captured["outputs"].log_probs[:, -chosen_mask.size(1):].chunk(2, dim=0)[0]
            nll = -chosen_logps[chosen_mask].mean()  # as TRL's "sft" term computes it
        preference = loss - weight * nll
        if accumulating:
            # The Trainer divides each micro-batch's loss by their number, k: weighed by k x its share
            # of the step's pairs (preference) and chosen tokens (NLL), they add up to the batch's loss.
            k = self.current_gradient_accumulation_steps
            preference = preference * (k * (len(chosen_mask) / self._step.pairs))
            nll = nll * (k * (int(chosen_mask.sum()) / max(self._step.chosen_tokens, 1)))
            loss = preference + weight * nll
        if weight:
            # Logged per micro-batch and averaged per step: with the weights above, the step's terms.
            mode = "train" if self.model.training else "eval"
            self._metrics[mode]["loss/nll"].append(self.accelerator.gather_for_metrics(nll.detach()).mean().item())
            self._metrics[mode]["loss/preference"].append(
                self.accelerator.gather_for_metrics(preference.detach()).mean().item())
        return (loss, *result[1:]) if return_outputs else loss
