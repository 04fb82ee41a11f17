"""How a round's cost grows with its prompts: one round on the embedded default at each size,
side by side in one process.

For each ``--sizes`` value (training prompts per round, ``prompts.n_train``) a fresh loop runs
round 1 with everything else at its default (or ``--config``), and the benchmark reads back what
the round logged to MLflow: every stage's wall time and peak resident memory, tokens generated,
pairs trained; and the share of the round's wall time spent outside the stages' own work
(orchestration, tracking, storage: the round's time minus the sum of its stages'). Cost should
grow linearly with the prompts and memory stay flat. The process's one-time costs (Prefect's
temporary API starting, the bundled model converted on first use) are paid by a warm-up before
the first size, so no size carries them.

With ``--engines local,ray1,ray2`` each size runs once per engine: ``local`` is the one-process round,
``rayN`` trains on N Ray Train workers and samples with N Ray actors (``train.engine`` and
``generate.backend`` 'ray') on a cluster of two ``ray start`` nodes of one CPU each started for the
benchmark (tests/ray_nodes.py). Ray's overhead is what a Ray round's stages take beyond the
one-process round's same stages (start-up of workers and actors, models loaded again in them,
checkpoints and answers moved through the store and the object store).

Usage:  .venv/bin/python benchmarks/bench_round.py [--sizes 32,64,128,256] [--engines local,ray1,ray2] [--config configs/demo.yaml]
Writes benchmarks/results/round-<machine kind>-<dtype>-<date>[-<label>].json and a .png of the same name
(benchmarks/result_meta.py), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks.*` importable whether run as a file or with -m

STAGES = ["prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote", "figures"]


def engine_overrides(engine: str, address: str | None) -> list[str]:
    """The config of an ``--engines`` entry: 'local', or 'rayN' (N training workers and N sampling actors)."""
    if engine == "local":
        return []
    n = int(engine.removeprefix("ray"))
    return [f"ray.address={address}", "train.engine=ray", f"train.ray.num_workers={n}", "generate.backend=ray",
            f"generate.ray.num_actors={n}"]


def run_size(n_train: int, base_overrides: list[str], config_file: Path | None, work: Path, engine: str = "local") -> dict:
    from mlflow import MlflowClient

    from flows.cli import _prepare_environment
    from flows.round import run_next_round
    from infra.tracking import tracking_uri
    from tasks.config_checks import load_checked_config

    overrides = [*base_overrides, f"prompts.n_train={n_train}", f"loop=scale-{n_train}-{engine}", f"storage.data_dir={work}"]
    config = load_checked_config(config_file, overrides)
    _prepare_environment(config)  # as `flywheel round` does: Prefect's temporary API under the data folder
    started = time.perf_counter()
    summary = run_next_round(config)
    wall = time.perf_counter() - started
    metrics = MlflowClient(tracking_uri(config.storage)).get_run(summary.mlflow_run_id).data.metrics
    seconds = {s: metrics[f"{s}/seconds"] for s in STAGES if f"{s}/seconds" in metrics}
    peaks = {s: metrics[f"{s}/peak_rss_mb"] for s in STAGES if f"{s}/peak_rss_mb" in metrics}
    candidates, mean_tokens = metrics.get("generate/n_candidates", 0), metrics.get("generate/mean_tokens", 0)
    return {
        "n_train": n_train, "engine": engine, "wall_s": wall, "stage_seconds": seconds, "stage_peak_rss_mb": peaks,
        "tokens_generated": round(candidates * mean_tokens), "pairs_trained": metrics.get("train/n_pairs", 0),
        "outside_stages_share": (wall - sum(seconds.values())) / wall, "peak_rss_mb": max(peaks.values(), default=0),
        "promoted": summary.promoted,
    }


def warm_up(base_overrides: list[str], config_file: Path | None, work: Path) -> None:
    """Pay the process's one-time costs before any size is timed: the bundled model converted,
    Prefect's temporary API started (by a flow that does nothing)."""
    from prefect import flow

    from flows.cli import _prepare_environment
    from infra.models import resolve_checkpoint
    from tasks.config_checks import load_checked_config

    config = load_checked_config(config_file, [*base_overrides, f"storage.data_dir={work}"])
    _prepare_environment(config)
    resolve_checkpoint(config.model.base, config.storage.data_dir)
    flow(name="bench-round-warm-up")(lambda: None)()


def row_label(row: dict) -> str:
    return str(row["n_train"]) if row.get("engine", "local") == "local" else f"{row['n_train']} {row['engine']}"


def ray_overhead(rows: list[dict]) -> None:
    """Each Ray row's seconds beyond the one-process row of its size, per stage and in all (in place)."""
    local = {r["n_train"]: r for r in rows if r["engine"] == "local"}
    for row in rows:
        base = local.get(row["n_train"])
        if row["engine"] == "local" or base is None:
            continue
        extra = {s: row["stage_seconds"].get(s, 0) - base["stage_seconds"].get(s, 0) for s in ("generate", "train", "evaluate")}
        row["ray_extra_seconds"] = extra
        row["ray_extra_share"] = (row["wall_s"] - base["wall_s"]) / row["wall_s"]


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row_label(r) for r in rows]
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 4))
    bottom = [0.0] * len(rows)
    for stage in STAGES:
        values = [r["stage_seconds"].get(stage, 0.0) / 60 for r in rows]
        if any(values):
            time_ax.bar([str(s) for s in sizes], values, bottom=bottom, label=stage)
            bottom = [b + v for b, v in zip(bottom, values)]
    time_ax.plot([str(s) for s in sizes], [r["wall_s"] / 60 for r in rows], "k.--", label="round (wall)")
    time_ax.set_xlabel("training prompts per round")
    time_ax.set_ylabel("minutes")
    time_ax.legend(fontsize=7)
    time_ax.set_title("time per stage")
    for stage in STAGES:
        values = [r["stage_peak_rss_mb"].get(stage) for r in rows]
        if any(v is not None for v in values):
            memory_ax.plot([str(x) for x in sizes], [v / 1024 if v else float("nan") for v in values], marker="o", label=stage)
    memory_ax.set_xlabel("training prompts per round")
    memory_ax.set_ylabel("peak resident memory (GB)")
    memory_ax.set_title("peak memory per stage")
    memory_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="32,64,128,256", help="training prompts per round, comma-separated")
    parser.add_argument("--config", type=Path, help="YAML config (default: the built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--engines", default="local", help="comma-separated: local, ray1, ray2, ... (see the module's docstring)")
    parser.add_argument("--label", help="a word or two that ends the results file's name, e.g. 'run2'")
    args = parser.parse_args()
    from benchmarks.result_meta import build_meta, effective_dtype, write_result
    from tasks.config_checks import load_checked_config

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rows = []
    load_before = os.getloadavg()
    engines = args.engines.split(",")
    cluster, cluster_start_s = None, None
    with tempfile.TemporaryDirectory(prefix="bench-round-") as work:
        warm_up(args.overrides, args.config, Path(work))
        try:
            if any(e != "local" for e in engines):
                from tests.conftest import free_port
                from tests.ray_nodes import LocalRayCluster

                started = time.perf_counter()
                cluster = LocalRayCluster(free_port())
                cluster_start_s = time.perf_counter() - started
            for size in [int(s) for s in args.sizes.split(",")]:
                for engine in engines:
                    overrides = [*args.overrides, *engine_overrides(engine, cluster and cluster.address)]
                    rows.append(run_size(size, overrides, args.config, Path(work), engine))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            if cluster is not None:
                import ray

                ray.shutdown()
                cluster.stop()
    ray_overhead(rows)
    dtype = effective_dtype(load_checked_config(args.config, args.overrides).model.dtype)
    path = write_result(build_meta(__file__, dtype, label=args.label), {
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "config": str(args.config) if args.config else "defaults", "overrides": args.overrides, "engines": engines,
        "ray_cluster_start_s": cluster_start_s, "rounds": rows}, args.out)
    figure(rows, path.with_suffix(".png"))
    header = f"{'prompts':>12} {'round min':>9} " + " ".join(f"{s[:8]:>8}" for s in STAGES) + f" {'tokens':>8} {'pairs':>5} {'outside':>7} {'peak GB':>7}"
    print(header)
    for r in rows:
        stages = " ".join(f"{r['stage_seconds'].get(s, 0) / 60:8.2f}" for s in STAGES)
        print(f"{row_label(r):>12} {r['wall_s'] / 60:9.2f} {stages} {r['tokens_generated']:>8} {r['pairs_trained']:>5.0f} "
              f"{r['outside_stages_share']:7.1%} {r['peak_rss_mb'] / 1024:7.2f}")
    for r in rows:
        if "ray_extra_share" in r:
            extra = ", ".join(f"{s} {v:+.0f} s" for s, v in r["ray_extra_seconds"].items())
            print(f"{row_label(r)}: {r['ray_extra_share']:.0%} of the round beyond the one-process round ({extra})")
    if cluster_start_s is not None:
        print(f"the two-node Ray cluster started in {cluster_start_s:.0f} s")
    print(f"written to {path} and its .png")


if __name__ == "__main__":
    main()
