"""Peak resident memory and time of stages run one after another in one process, with glibc's
default allocator settings and with a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_``), each in
a fresh process.

glibc serves a request below its mmap threshold from heaps it keeps, and after freeing a mapped
block it raises the threshold to that block's size (up to 32 MB): once a model's weights have been
freed, the tensors of every later pass come from heaps that fragment and keep freed pages resident,
so the same work peaks higher the second time. A fixed threshold (which also stops the raising)
maps such blocks and hands them back on free, at the cost of a page fault per fresh page.

This runs the generate stage's core (``generate_candidates`` on the hf backend) and the train
stage's (``train_policy``) alternately, ``--repeat`` times each, and reports each call's peak
(the kernel's high-water mark, reset per call), its resident memory after, and its seconds.

Usage:  .venv/bin/python benchmarks/bench_allocator.py [--repeat 2] [--prompts 12] [--pairs 12] [--dtype auto]
Writes benchmarks/results/allocator-<machine kind>-<dtype>-<date>[-<label>].json (benchmarks/result_meta.py) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks.*` importable whether run as a file or with -m
# mode: the environment of its process (glibc reads MALLOC_* once, at start)
MODES = {"glibc-default": {}, "mmap-256k": {"MALLOC_MMAP_THRESHOLD_": "262144"}}


def run_sequence(spec: dict) -> list[dict]:
    """In this process: generation and training alternately, each call's memory and time."""
    from benchmarks.bench_memory import make_pairs
    from infra.memory import peak_rss, release_memory
    from infra.models import resolve_checkpoint
    from infra.records import Prompt
    from infra.settings import FlywheelConfig
    from tasks.generate import generate_candidates
    from tasks.sampling.backends import open_backend
    from tasks.train import TrainJob, train_policy

    config = FlywheelConfig.model_validate({"model": {"dtype": spec["dtype"]},
                                            "generate": {"n_candidates": 4, "max_new_tokens": spec["tokens"]}})
    checkpoint = resolve_checkpoint(config.model.base, Path(spec["data_dir"]))
    rows = [json.loads(line) for line in (ROOT / "tasks" / "data" / "unconstrained.jsonl").read_text().splitlines() if line]
    prompts = [Prompt(id=r["id"], text=r["text"]) for r in rows[: spec["prompts"]]]
    pairs = make_pairs(checkpoint, spec["pairs"], spec["tokens"])
    calls = []
    for _ in range(spec["repeat"]):
        for stage in ("generate", "train"):
            started = time.perf_counter()
            with peak_rss() as memory:
                if stage == "generate":
                    with open_backend(checkpoint, config.generate, config.model) as backend:
                        generate_candidates(backend, prompts, config.generate, seed=1, progress=False)
                else:
                    with tempfile.TemporaryDirectory() as out:
                        train_policy(TrainJob(checkpoint=checkpoint, pairs=pairs, config=config.train, model=config.model, round_index=1, output_dir=Path(out)))
                release_memory()
            calls.append({"stage": stage, "start_mb": memory.start_mb, "peak_mb": memory.peak_mb, "end_mb": memory.end_mb,
                          "seconds": time.perf_counter() - started})
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2, help="generate+train pairs of calls per process")
    parser.add_argument("--prompts", type=int, default=12, help="prompts to sample (x 4 candidates)")
    parser.add_argument("--pairs", type=int, default=12, help="preference pairs to train on")
    parser.add_argument("--tokens", type=int, default=120, help="max new tokens (and longest response in the pairs)")
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto")
    parser.add_argument("--data-dir", type=Path, default=Path(".flywheel"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--label", help="a word or two that ends the results file's name, e.g. 'run2'")
    args = parser.parse_args()
    if args.tokens < 60:
        parser.error("--tokens must be at least 60: the built pairs' chosen answers are 60 tokens or more")
    if args.child:
        print("RESULT " + json.dumps(run_sequence(json.loads(args.child))), flush=True)
        return
    from benchmarks.result_meta import build_meta, effective_dtype, write_result

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    results = {}
    for mode, malloc_env in MODES.items():
        spec = {"repeat": args.repeat, "prompts": args.prompts, "pairs": args.pairs, "tokens": args.tokens,
                "dtype": args.dtype, "data_dir": str(args.data_dir)}
        child = subprocess.run([sys.executable, "-m", "benchmarks.bench_allocator", "--child", json.dumps(spec)], cwd=ROOT, env={**env, **malloc_env},
                               capture_output=True, text=True)
        lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
        if child.returncode != 0 or not lines:
            raise SystemExit(f"{mode}: the child process failed (exit {child.returncode}):\n{child.stderr[-3000:]}")
        results[mode] = json.loads(lines[-1][len("RESULT "):])
        print(f"{mode}: " + " | ".join(f"{c['stage']} peak {c['peak_mb'] / 1024:.2f} GB {c['seconds']:.0f} s" for c in results[mode]),
              flush=True)
    path = write_result(build_meta(__file__, effective_dtype(args.dtype), label=args.label), {
        "load_average_after": os.getloadavg(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in ("out", "child", "label")},
        "calls": results}, args.out)
    print(f"{'call':<12}" + "".join(f"{m + ' peak GB':>22}{'s':>7}" for m in MODES))
    for i, first in enumerate(results["glibc-default"]):
        print(f"{first['stage'] + ' ' + str(i // 2 + 1):<12}" + "".join(
            f"{results[m][i]['peak_mb'] / 1024:>22.2f}{results[m][i]['seconds']:>7.0f}" for m in MODES))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
