"""Peak resident memory of the train stage, variant by variant, each in a fresh process.

Every variant trains the same pairs with ``tasks.train.train_policy`` (the bundled SmolLM2-135M-Instruct
unless --model, LoRA, the default TrainConfig otherwise) and reports the process's peak resident set
size (the kernel's high-water mark) and the highest resident memory seen in each phase: the
reference pass, the training steps, the held-out evaluation, the rest (loading, merging, saving).
The pairs are built from the repository's own prompts, with responses of up to --response-tokens
tokens as the generate stage writes them (generate.max_new_tokens 160), or read from a filter
stage's pairs.jsonl (--pairs-file).

Usage:  .venv/bin/python benchmarks/bench_memory.py                     (every variant, 12 pairs)
        .venv/bin/python benchmarks/bench_memory.py --variants today,default --pairs 24
        .venv/bin/python benchmarks/bench_memory.py --list               (the variants and what they change)
Writes benchmarks/results/memory-<machine kind>-mixed-<date>[-<label>].json (benchmarks/result_meta.py) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks.*` importable whether run as a file or with -m

# name: (what it changes, TrainConfig changes, ModelConfig changes, LM-head tile on a CPU, separate reference copy)
# As before the memory work: the whole batch per forward, and evaluation keeping the full-vocabulary logits.
TODAY = {"micro_batch_size": None, "dpo_args": {"prediction_loss_only": False}}
VARIANTS = {
    "today": ("before the memory work: the whole batch per forward, TRL's 32768-column LM-head tiles, eval logits kept", TODAY, {}, None, False),
    "default": ("the defaults: 2 pairs per forward with bf16 autocast, 1 in fp32; narrow tiles", {}, {}, 4096, False),
    "narrow_tiles": ("as today, with 4096-column LM-head tiles", TODAY, {}, 4096, False),
    "micro_4": ("4 pairs per forward (2 micro-batches a step)", {"micro_batch_size": 4}, {}, 4096, False),
    "micro_1": ("1 pair per forward (8 micro-batches a step)", {"micro_batch_size": 1}, {}, 4096, False),
    "micro_2_wide_tiles": ("2 pairs per forward, TRL's LM-head tiles", {}, {}, None, False),
    "reference_loaded": ("the defaults with a reference that is not the starting policy (reference: initial, "
                         "round 2 on): a second model loaded for the reference pass", {}, {}, 4096, True),
    "checkpointing": ("the defaults plus activation checkpointing", {"dpo_args": {"activation_checkpointing": True}}, {}, 4096,
                      False),
    "ref_batch_8": ("the defaults, the reference pass 8 pairs at a time",
                    {"dpo_args": {"precompute_ref_batch_size": 8}}, {}, 4096, False),
    "fp32": ("the defaults without bf16 autocast (fp32 throughout, 1 pair per forward)", {}, {"dtype": "fp32"}, 4096, False),
    "today_fp32": ("as today, without bf16 autocast", TODAY, {"dtype": "fp32"}, None, False),
    "no_dropout": ("the defaults without dropout on the LoRA branch (train.lora_dropout 0)", {"lora_dropout": 0.0}, {}, 4096, False),
    "fp32_no_dropout": ("fp32 throughout, without dropout on the LoRA branch", {"lora_dropout": 0.0}, {"dtype": "fp32"}, 4096, False),
    "fp32_micro_2": ("fp32 throughout, 2 pairs per forward (the fp32 default until 2026-11-30)", {"micro_batch_size": 2},
                     {"dtype": "fp32"}, 4096, False),
    "fp32_checkpoint_half": ("fp32 throughout, activation checkpointing of every 2nd layer",
                             {"dpo_args": {"activation_checkpointing": True, "activation_checkpointing_kwargs": {"every_n_layers": 2}}},
                             {"dtype": "fp32"}, 4096, False),
    "padding_free": ("the defaults plus TRL's padding_free (TRL 1.16: warns and falls back to padding)",
                     {"dpo_args": {"padding_free": True}}, {}, 4096, False),
}


def make_pairs(checkpoint: str, n: int, response_tokens: int, seed: int = 0):
    """``n`` pairs on the repository's everyday prompts: responses cut from the prompts' own words, the
    chosen 60 to ``response_tokens`` tokens long, the rejected 20 to ``response_tokens`` (some at it)."""
    from infra.models import load_tokenizer
    from infra.records import PreferencePair

    rows = [json.loads(line) for line in (ROOT / "tasks" / "data" / "unconstrained.jsonl").read_text().splitlines() if line]
    tokenizer = load_tokenizer(checkpoint)
    rng = random.Random(seed)
    words = " ".join(r["text"] for r in rows).split()

    def response(n_tokens: int) -> str:
        ids = tokenizer(" ".join(rng.choice(words) for _ in range(n_tokens)), add_special_tokens=False)["input_ids"]
        return tokenizer.decode(ids[:n_tokens]).strip()

    pairs = []
    for i in range(n):
        prompt = rows[i % len(rows)]
        chosen = response(rng.choice([response_tokens, rng.randint(60, response_tokens)]))
        rejected = response(rng.choice([response_tokens, rng.randint(20, response_tokens)]))
        pairs.append(PreferencePair(prompt_id=f"{prompt['id']}-{i}", prompt=prompt["text"], chosen=chosen, rejected=rejected,
                                    score_chosen=1.0, score_rejected=0.0, similarity=0.1))
    return pairs


def read_pairs(path: Path, n: int):
    from infra.records import PreferencePair

    return [PreferencePair(**json.loads(line)) for line in path.read_text().splitlines() if line][:n]


class PhasePeaks:
    """The highest resident memory seen (sampled every few ms) in each phase of a run."""

    def __init__(self):
        self.phase, self.peaks, self._stop = "load", {}, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        from infra.memory import rss_mb

        while not self._stop.is_set():
            now = rss_mb()
            self.peaks[self.phase] = max(now, self.peaks.get(self.phase, 0.0))
            time.sleep(0.005)

    def wrap(self, owner, name: str, phase: str) -> None:
        """Count the time spent in ``owner.name`` to ``phase``."""
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            before, self.phase = self.phase, phase
            try:
                return original(*args, **kwargs)
            finally:
                self.phase = before

        setattr(owner, name, wrapped)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_variant(spec: dict) -> dict:
    """One variant, in this process: train, and report the peaks."""
    import transformers

    import tasks.training.trl_internals as trl_internals
    from infra.memory import peak_rss
    from infra.settings import ModelConfig, TrainConfig
    from tasks.train import TrainJob, train_policy

    _, train_changes, model_changes, tile, separate_reference = VARIANTS[spec["variant"]]
    pairs = read_pairs(Path(spec["pairs_file"]), spec["pairs"]) if spec.get("pairs_file") else \
        make_pairs(spec["checkpoint"], spec["pairs"], spec["response_tokens"])
    trl_internals.CPU_VOCAB_TILE = tile
    config = TrainConfig(**{"heldout_share": spec["heldout_share"], **train_changes})
    dataset_bytes = {}
    trainer_class = trl_internals.flywheel_dpo_trainer()
    original_train = trainer_class.train

    def train(self, *args, **kwargs):  # the tokenized datasets, with their reference log-probs, as training starts
        dataset_bytes.update(train=self.train_dataset.data.nbytes,
                             eval=self.eval_dataset.data.nbytes if self.eval_dataset is not None else 0)
        return original_train(self, *args, **kwargs)

    trainer_class.train = train
    with tempfile.TemporaryDirectory() as tmp, PhasePeaks() as phases, peak_rss() as memory:
        phases.wrap(trainer_class, "_precompute_ref_logps", "reference")
        phases.wrap(transformers.Trainer, "training_step", "train_step")
        phases.wrap(transformers.Trainer, "evaluate", "evaluate")
        reference = None
        if separate_reference:  # a copy elsewhere: train_policy loads it as a model of its own
            reference = shutil.copytree(spec["checkpoint"], Path(tmp) / "reference")
        started = time.perf_counter()
        result = train_policy(TrainJob(checkpoint=spec["checkpoint"], pairs=pairs, config=config, model=ModelConfig(**model_changes), round_index=2,
                                       output_dir=Path(tmp) / "out", reference_checkpoint=str(reference) if reference else None))
        seconds = time.perf_counter() - started
    losses = [h["loss"] for h in result.log_history if "loss" in h and "train_loss" not in h]
    return {
        "variant": spec["variant"], "peak_rss_mb": memory.peak_mb, "start_rss_mb": memory.start_mb,
        "since_start": memory.since_start, "phase_peak_mb": phases.peaks, "dataset_mb": {k: v / 2**20 for k, v in dataset_bytes.items()},
        "n_pairs": result.n_pairs, "n_heldout": result.n_heldout, "n_steps": result.n_steps, "first_loss": losses[0] if losses else None,
        "seconds": seconds,
    }


def logits_to_keep_note() -> str | None:
    """Why TRL's use_logits_to_keep is not a variant, where it is not."""
    import trl
    from trl import DPOConfig

    if "use_logits_to_keep" in {f.name for f in dataclasses.fields(DPOConfig)}:
        return None
    return (f"TRL {trl.__version__}'s DPOConfig has no use_logits_to_keep: its fused LM head scores only the "
            "positions it is given, in tiles, and never builds the full logits")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="checkpoint (default: the bundled model)")
    parser.add_argument("--data-dir", type=Path, default=Path(".flywheel"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated; --list shows them")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--pairs", type=int, default=12, help="pairs (with --heldout-share 0.34: 8 trained, 4 held out)")
    parser.add_argument("--heldout-share", type=float, default=0.34)
    parser.add_argument("--response-tokens", type=int, default=160, help="longest response (generate.max_new_tokens)")
    parser.add_argument("--pairs-file", type=Path, help="a filter stage's pairs.jsonl instead of built pairs")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--label", help="a word or two that ends the results file's name, e.g. 'run2'")
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_variant(json.loads(args.child))), flush=True)
        return
    if args.list:
        for name, (what, *_) in VARIANTS.items():
            print(f"{name:20s} {what}")
        return

    from benchmarks.result_meta import build_meta, write_result
    from infra.models import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.model, args.data_dir)
    names = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    runs = []
    for name in names:
        spec = {"variant": name, "checkpoint": checkpoint, "pairs": args.pairs, "heldout_share": args.heldout_share,
                "response_tokens": args.response_tokens, "pairs_file": str(args.pairs_file) if args.pairs_file else None}
        done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], cwd=ROOT, capture_output=True, text=True)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            print(f"{name}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        runs.append(json.loads(line[len("RESULT "):]))
        r = runs[-1]
        print(f"{name:20s} peak {r['peak_rss_mb']:7.0f} MB  " + "  ".join(f"{k} {v:.0f}" for k, v in r["phase_peak_mb"].items())
              + f"  first loss {r['first_loss']:.4f}  {r['seconds']:.0f} s", flush=True)
    result = {"model": args.model, "pairs": args.pairs, "response_tokens": args.response_tokens,
              "variants": {name: VARIANTS[name][0] for name in names}, "runs": runs, "notes": [n for n in [logits_to_keep_note()] if n]}
    meta = build_meta(__file__, "mixed", label=args.label, note="each variant sets its own dtype (see results.variants)")
    path = write_result(meta, result, args.out)
    print(f"\nmachine: {meta['machine']}")
    print("| variant | peak RSS (MB) | reference pass | training step | held-out eval | first loss |\n|---|---|---|---|---|---|")
    for r in runs:
        p = r["phase_peak_mb"]
        print(f"| {r['variant']} | {r['peak_rss_mb']:.0f} | {p.get('reference', 0):.0f} | {p.get('train_step', 0):.0f} | "
              f"{p.get('evaluate', 0):.0f} | {r['first_loss']:.4f} |")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"written to {path}")


if __name__ == "__main__":
    main()
