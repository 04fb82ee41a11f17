"""Does a process that runs round after round hold on to memory? Rounds in one process (each a
new loop's round 1, so each does the same work), and after each: the resident memory once garbage
is collected and freed pages are handed back, the live tensors and their bytes, and the live
models, found by walking the garbage collector's objects. Each stage's own peak is in the Prefect
log line of the stage (and in MLflow, ``<stage>/peak_rss_mb``).

Usage:  .venv/bin/python benchmarks/bench_round_memory.py [--rounds 3] [--set SECTION.FIELD=VALUE ...]
(default: small rounds that still train: 12 prompts, 4 candidates of 100 tokens, 8 held-out prompts,
answers of 40 tokens in the pairwise eval, benchmarks at 4 items). Prints one line per round.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import tempfile
import time

SMALL = ["prompts.n_train=12", "prompts.n_eval=8", "generate.n_candidates=4", "generate.max_new_tokens=100",
         "evaluate.max_new_tokens=40", "evaluate.n_unconstrained=2", "regression.limit=4"]


def live_objects() -> dict:
    """Resident memory after collecting and trimming, and what torch objects are still reachable."""
    import torch

    from infra.memory import release_memory, rss_mb

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
    return {"rss_mb": round(rss_mb()), "tensor_storages": len(storages), "tensor_mb": round(sum(storages.values()) / 2**20, 1),
            "models": dict(models)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from flows.cli import _prepare_environment
    from flows.round import run_next_round
    from tasks.config_checks import load_checked_config

    print("before", json.dumps(live_objects()), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-round-memory-") as work:
        for i in range(args.rounds):
            config = load_checked_config(None, [*SMALL, *args.overrides, f"storage.data_dir={work}", f"loop=memory-{i}"])
            _prepare_environment(config)
            started = time.perf_counter()
            run_next_round(config)
            print(f"after round {i + 1} ({time.perf_counter() - started:.0f} s)", json.dumps(live_objects()), flush=True)


if __name__ == "__main__":
    main()
