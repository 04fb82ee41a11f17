"""Does a process that runs round after round hold on to memory? Rounds in one process (each a
new loop's round 1, so each does the same work), and after each: the resident memory once garbage
is collected and freed pages are handed back, the live tensors and their bytes, and the live
models, found by walking the garbage collector's objects. Each stage's own peak is in the Prefect
log line of the stage (and in MLflow, ``<stage>/peak_rss_mb``).

Usage:  .venv/bin/python benchmarks/bench_round_memory.py [--rounds 3] [--set SECTION.FIELD=VALUE ...]
(default: small rounds that still train: 12 prompts, 4 candidates of 100 tokens, 8 held-out prompts,
answers of 40 tokens in the pairwise eval, benchmarks at 4 items). Prints one line per round; --save also writes
benchmarks/results/round-memory-<machine kind>-<dtype>-<date>[-<label>].json (benchmarks/result_meta.py).
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` importable whether run as a file or with -m

SMALL = ["prompts.n_train=12", "prompts.n_eval=8", "generate.n_candidates=4", "generate.max_new_tokens=100",
         "evaluate.max_new_tokens=40", "evaluate.n_unconstrained=2", "regression.limit=4"]


def live_objects() -> dict:
    """Resident memory after collecting and trimming; what is allocated through glibc's malloc
    (``malloc_in_use_mb``: resident memory that grows while this stays is fragmentation, not memory
    held); Python's small-object blocks; and what torch objects are still reachable."""
    import torch

    from infra.memory import malloc_in_use_mb, release_memory, rss_mb

    release_memory()
    storages, models = {}, collections.Counter()
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor):
                storage = obj.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            elif isinstance(obj, torch.nn.Module) and type(obj).__name__.endswith("ForCausalLM"):
                models[type(obj).__name__] += 1
        except (RuntimeError, ReferenceError):  # meta tensors, dead weak proxies
            continue
    in_use = malloc_in_use_mb()
    return {"rss_mb": round(rss_mb()), "malloc_in_use_mb": None if in_use is None else round(in_use, 1),
            "python_blocks": sys.getallocatedblocks(), "tensor_storages": len(storages), "tensor_mb": round(sum(storages.values()) / 2**20, 1),
            "models": dict(models)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--save", action="store_true", help="also write the rounds' figures to benchmarks/results/")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results"), help="folder for --save")
    parser.add_argument("--label", help="a word or two that ends the results file's name, e.g. 'run2'")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mlflow import MlflowClient

    from benchmarks.bench_round import STAGES
    from flows.cli import _prepare_environment
    from flows.round import run_next_round
    from infra.tracking import tracking_uri
    from tasks.config_checks import load_checked_config

    rows = [{"round": 0, **live_objects()}]
    print("before", json.dumps(rows[0]), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-round-memory-") as work:
        for i in range(args.rounds):
            config = load_checked_config(None, [*SMALL, *args.overrides, f"storage.data_dir={work}", f"loop=memory-{i}"])
            _prepare_environment(config)
            started = time.perf_counter()
            summary = run_next_round(config)
            seconds = time.perf_counter() - started
            metrics = MlflowClient(tracking_uri(config.storage)).get_run(summary.mlflow_run_id).data.metrics
            peaks = {s: round(metrics[f"{s}/peak_rss_mb"]) for s in STAGES if f"{s}/peak_rss_mb" in metrics}
            rows.append({"round": i + 1, "seconds": round(seconds), **live_objects(), "stage_peak_rss_mb": peaks})
            print(f"after round {i + 1} ({seconds:.0f} s)", json.dumps(rows[-1]), flush=True)
    if args.save:
        from benchmarks.result_meta import build_meta, effective_dtype, write_result

        dtype = effective_dtype(load_checked_config(None, [*SMALL, *args.overrides]).model.dtype)
        path = write_result(build_meta(__file__, dtype, label=args.label), {"overrides": [*SMALL, *args.overrides], "rounds": rows}, args.out)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
