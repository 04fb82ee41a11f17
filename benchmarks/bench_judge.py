"""Judging throughput of the OpenAI-compatible judge: 16 requests in flight against one at a
time, side by side in one run, against a local OpenAI-compatible endpoint answering with a
fixed latency (the scripted server of the tests, on a loopback socket).

Usage (from the repository root):  .venv/bin/python -m benchmarks.bench_judge [--pairs 32] [--latency 0.25]
Writes benchmarks/results/judge-<machine kind>-none-<date>[-<label>].json (benchmarks/result_meta.py).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.result_meta import RESULTS_DIR, build_meta, write_result
from infra.records import Prompt
from infra.settings import JudgeConfig
from tasks.judge import build_judge
from tests.openai_stub import OpenAIStub


def judged_per_second(url: str, pairs, in_flight: int) -> tuple[float, int]:
    config = JudgeConfig(name="openai", openai={"base_url": url, "model": "stub", "max_in_flight": in_flight})
    judge = build_judge(config)  # no store: nothing cached, every request is sent
    started = time.perf_counter()
    results = judge.compare_many(pairs)
    elapsed = time.perf_counter() - started
    assert all(r is not None for r in results)
    return judge.stats.requests / elapsed, judge.stats.requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=32, help="pairs (each judged in both orders)")
    parser.add_argument("--latency", type=float, default=0.25, help="server latency per request, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--label", help="a word or two that ends the results file's name, e.g. 'run2'")
    args = parser.parse_args()
    server = OpenAIStub(latency_s=args.latency)
    prompt = Prompt(id="p", text="Name a colour.", constraints=[], topic="t", split="train")
    pairs = [(prompt, f"GOOD answer {i}", f"answer {i}") for i in range(args.pairs)]
    try:
        sequential, n = judged_per_second(server.url, pairs, 1)
        concurrent, _ = judged_per_second(server.url, pairs, 16)
    finally:
        server.close()
    result = {"requests": n, "latency_s": args.latency, "sequential_per_s": sequential, "in_flight_16_per_s": concurrent,
              "speedup": concurrent / sequential}
    path = write_result(build_meta(__file__, "none", label=args.label), result, args.out)
    print(f"{n} judge requests at {args.latency:.2f} s latency: sequential {sequential:.1f}/s, "
          f"16 in flight {concurrent:.1f}/s, ratio {concurrent / sequential:.1f}x\nwritten to {path}")


if __name__ == "__main__":
    main()
