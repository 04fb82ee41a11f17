"""The ``flywheel`` command line.

    flywheel loop --rounds 2                 # two rounds on the embedded default
    flywheel round --config configs/demo.yaml --set 'train.beta=[0.2]'
    flywheel check --config configs/demo.yaml   # config, input files and services, writing nothing
    flywheel history                         # the loop's rounds so far
    flywheel compare                         # the champion against round 0 (the base model)
    flywheel proof --seeds 3 --config configs/proof.yaml   # round 1 over 3 seeds: mean ± spread of every figure
    flywheel ablate                          # DPO vs SimPO at LoRA r16 and r8 on the latest round's pairs
    flywheel sweep-beta --values 0.01,0.05,0.1,0.3,0.5
    flywheel loop --adopt-ablation 1         # the next rounds train with ablation 1's recommended cell
    flywheel --help                          # every command, and the exit codes (flows/exit_codes.py)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

from flows.exit_codes import FAILED, LOOP_BUSY, SERVICE_DOWN, SUCCESS, USAGE_OR_CONFIG, exit_codes_text
from flows.operate import DEFAULT_SCHEDULED_CONFIG
from infra.settings import ConfigError, FlywheelConfig


def _prepare_environment(config: FlywheelConfig) -> None:
    """Point Prefect at a home under the data folder (ephemeral API, offline) unless the user chose one;
    keep the Hugging Face hub out of reach unless model.base is a hub id (which it may have to download)."""
    data_dir = Path(config.storage.data_dir).resolve()
    prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(data_dir / "prefect")))
    prefect_home.mkdir(parents=True, exist_ok=True)  # Prefect creates only the last folder
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from flows.preflight import EPHEMERAL_STARTUP_TIMEOUT_S  # Prefect reads it once, at import: set it first

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    from infra.model_source import hub_model

    if not hub_model(config.model.base):  # the bundled model and local folders load without the hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="FILE", help="YAML config file (default: the built-in defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override a config value, e.g. --set train.epochs=1 or --set 'train.beta=[0.1]' (quoted: zsh reads brackets); "
             "repeatable; values parsed as YAML; fields: flywheel config --describe",
    )


def _add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def _command(sub, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with its examples, as written."""
    return sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:] + ".",
                          epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_ablation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--round", dest="ablate_round", type=int, default=0, metavar="N",
                        help="the finished round whose pairs, held-out prompts and champion are used (default: the latest)")
    parser.add_argument("--benchmarks", action="store_true", help="also run the capability benchmarks per cell")
    parser.add_argument("--parallel", type=int, default=0, metavar="N",
                        help="cells run at once (default: all when training goes to train.deployment, else one at a time)")
    _add_config_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flywheel", description="Iterative self-play DPO as a Prefect workflow.",
                                     epilog=exit_codes_text(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _round_commands(sub)
    _reading_commands(sub)
    _ablation_commands(sub)
    _config_commands(sub)
    _stack_commands(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flywheel")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _round_commands(sub) -> None:
    loop = _command(sub, "loop", "run N rounds, each from the current champion", """
        flywheel loop --rounds 2 --config configs/demo.yaml
        flywheel loop --set train.epochs=1 --set 'train.beta=[0.1, 0.2]'
        flywheel loop --adopt-ablation 1     # train with ablation 1's recommended cell""")
    loop.add_argument("--rounds", type=int, default=1, metavar="N", help="rounds to run (default 1)")
    loop.add_argument("--adopt-ablation", type=int, metavar="N",
                      help="train with ablation N's recommended objective, LoRA rank and beta (recorded with each round)")
    _add_config_options(loop)
    proof = _command(sub, "proof", "run round 1 (or N rounds) once per seed and report every figure over the seeds", """
        flywheel proof --seeds 3 --config configs/proof.yaml              # round 1, three seeds
        flywheel proof --seeds 2 --rounds 4 --config configs/proof.yaml   # the 4-round loop per seed
        flywheel proof --seeds 3 --config configs/proof.yaml --json > proof.json""")
    proof.add_argument("--seeds", type=int, default=3, metavar="N",
                       help="seeds (default 3): seed k runs the loop <loop>-seed<k> with generate.seed and train.seed plus k")
    proof.add_argument("--rounds", type=int, default=1, metavar="N", help="rounds per seed (default 1); rounds a seed loop has are read, not rerun")
    _add_json_option(proof, "the proof report (every figure per seed, with mean and spread)")
    _add_config_options(proof)
    rnd = _command(sub, "round", "run the next round of the loop", """
        flywheel round --config configs/demo.yaml
        flywheel round --set 'train.beta=[0.2]'""")
    _add_config_options(rnd)


def _reading_commands(sub) -> None:
    hist = _command(sub, "history", "print the loop's rounds so far", """
        flywheel history --config configs/demo.yaml
        flywheel history --json | python -m json.tool""")
    _add_json_option(hist, "the rounds' summary records")
    _add_config_options(hist)
    report = _command(sub, "report", "print the loop's history and write it as an HTML page with figures", """
        flywheel report --config configs/demo.yaml --out loop.html""")
    report.add_argument("--out", type=Path, metavar="FILE", help="HTML file (default: <data_dir>/reports/<loop>.html)")
    _add_config_options(report)
    compare = _command(sub, "compare", "pairwise eval of the champion against an earlier round's policy (default: round 0)", """
        flywheel compare --config configs/demo.yaml              # the champion against the base model
        flywheel compare --against 1 --round 3 --json""")
    compare.add_argument("--against", type=int, default=0, metavar="ROUND", help="baseline round (default 0: the base model)")
    compare.add_argument("--round", dest="challenger_round", type=int, metavar="ROUND",
                         help="the later policy: this round's trained policy (default: the current champion)")
    _add_json_option(compare, "the comparison record")
    _add_config_options(compare)


def _ablation_commands(sub) -> None:
    ablate = _command(sub, "ablate", "train and evaluate a matrix of objectives x LoRA ranks x betas on one round's pairs", """
        flywheel ablate --config configs/demo.yaml
        flywheel ablate --objectives dpo,ipo --ranks 16 --betas 0.05,0.1 --round 2""")
    ablate.add_argument("--objectives", default="dpo,simpo", help="comma-separated objectives (default dpo,simpo)")
    ablate.add_argument("--ranks", default="16,8", help="comma-separated LoRA ranks (default 16,8)")
    ablate.add_argument("--betas", default="", help="comma-separated betas (default: each objective's configured beta)")
    _add_ablation_options(ablate)
    sweep = _command(sub, "sweep-beta", "the ablation over beta for one objective: where the policy barely moves, where it degenerates", """
        flywheel sweep-beta --values 0.01,0.05,0.1,0.3,0.5 --config configs/demo.yaml""")
    sweep.add_argument("--values", required=True, help="comma-separated betas, e.g. 0.01,0.05,0.1,0.3,0.5")
    sweep.add_argument("--objective", help="objective (default: the config's, train.objective)")
    sweep.add_argument("--rank", type=int, help="LoRA rank (default: train.lora_r)")
    _add_ablation_options(sweep)


def _config_commands(sub) -> None:
    show = _command(sub, "config", "print the merged configuration as YAML, or the reference of every field", """
        flywheel config --config configs/demo.yaml --set 'train.beta=[0.2]'
        flywheel config --describe                # every field: type, default, range, description
        flywheel config --describe --markdown > docs/configuration.md""")
    show.add_argument("--describe", action="store_true", help="print every field's type, default, range and description instead")
    show.add_argument("--markdown", action="store_true", help="with --describe: as markdown (docs/configuration.md)")
    _add_config_options(show)
    check = _command(sub, "check", "check the config, its input files and the services a round would use; writes nothing", """
        flywheel check --config configs/demo.yaml
        flywheel check --set prompts.source=jsonl --set prompts.path=my-prompts.jsonl""")
    _add_config_options(check)


def _stack_commands(sub) -> None:
    stack = _command(sub, "stack", "start or stop the real stack on loopback (S3, MLflow, Prefect, workers)", """
        flywheel stack up
        eval "$(flywheel stack env)"      # point this shell at it
        flywheel stack down""")
    stack.add_argument("action", choices=["up", "down", "env"], help="up: start it; down: stop it; env: print its export lines")
    stack.add_argument("--dir", type=Path, default=Path(".flywheel/stack"), help="where its state and logs live (default .flywheel/stack)")
    deploy = _command(sub, "deploy", "apply prefect.yaml's deployments to the Prefect server (PREFECT_API_URL)", """
        flywheel deploy --config configs/demo.yaml --cron '0 3 * * *'
        flywheel deploy --kubernetes --image registry.example.com/flywheel:cuda""")
    deploy.add_argument("--cron", default="0 3 * * *", help="schedule of the loop deployment (default: 03:00 UTC daily)")
    deploy.add_argument("--config", default=DEFAULT_SCHEDULED_CONFIG, metavar="FILE",
                        help=f"config of the scheduled loop, inside the repository the workers run from (default {DEFAULT_SCHEDULED_CONFIG})")
    deploy.add_argument("--kubernetes", action="store_true",
                        help="also the deployments on the Kubernetes work pool 'gpu-k8s' (docs/scaling.md), after --check")
    deploy.add_argument("--check", action="store_true",
                        help="only check the Kubernetes deployments' job variables against docker/k8s/gpu-job-template.json "
                             "and the rendered Job against the Kubernetes schema; no server needed")
    deploy.add_argument("--image", metavar="IMAGE", help="the Kubernetes jobs' image (sets FLYWHEEL_IMAGE; default: that variable)")
    trigger = _command(sub, "trigger", "run the loop deployment now, wait for it, and print its round summary", """
        flywheel trigger --config configs/demo.yaml --set train.epochs=1
        flywheel trigger --json > run.json""")
    trigger.add_argument("--deployment", default="flywheel-scheduled-loop/scheduled", help="flow/deployment to run (default: the scheduled loop)")
    trigger.add_argument("--config", "--config-file", dest="config_file", metavar="FILE",
                         help="config YAML, relative to the repository the worker runs from (default: the deployment's)")
    trigger.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override a config value where the run reads it, e.g. --set 'train.beta=[0.2]' (repeatable)")
    trigger.add_argument("--rounds", type=int, default=1, metavar="N", help="rounds the run goes (default 1)")
    trigger.add_argument("--timeout", type=float, default=6 * 3600, metavar="SECONDS", help="seconds to wait for the run (default 6 h)")
    _add_json_option(trigger, "the run's record (name, state, summary)")


def _print_outcome(config: FlywheelConfig, summaries) -> None:
    from flows.render import summary_table
    from infra.mlflow_links import round_links
    from infra.tracking import tracking_uri

    print()
    print(summary_table(summaries))
    for s in summaries:
        print(f"\nround {s.round}: {'PROMOTED' if s.promoted else 'rejected'}")
        for reason in s.reasons:
            print(f"  - {reason}")
    print(f"\nartifacts: {Path(config.storage.resolved_artifact_root()).resolve() / config.loop}")
    links = round_links(tracking_uri(config.storage), summaries)
    print("\n".join(links.lines()) if links else f"mlflow:    {tracking_uri(config.storage)}")


def _show_config(config: FlywheelConfig, args) -> int:
    import yaml

    if args.describe:
        from infra.settings.reference import reference_markdown, reference_text

        print(reference_markdown() if args.markdown else reference_text(), end="")
        return SUCCESS
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return SUCCESS


def _check(config: FlywheelConfig, args) -> int:
    """The config and its input files are checked by now (main loaded them); ask the services, start and write nothing."""
    from flows.preflight import ServiceUnavailable, check_services, service_lines
    from infra.settings import config_origin

    prompts = config.prompts.path if config.prompts.source == "jsonl" else f"the {config.prompts.source} prompt set"
    print(f"config: valid ({config_origin(args.config, args.overrides)})")
    print(f"inputs: readable (prompts: {prompts}, {config.prompts.n_train} training and {config.prompts.n_eval} held-out a round)")
    try:
        check_services(config, start_ephemeral=False)
    except ServiceUnavailable as err:
        print(f"flywheel check: {err}", file=sys.stderr)
        return SERVICE_DOWN
    print("services: ok\n  " + "\n  ".join(service_lines(config)))
    return SUCCESS


def _history(config: FlywheelConfig, args) -> int:
    from flows.render import summary_table
    from flows.round_records import read_history
    from infra.store_factory import store_from_config

    history = read_history(store_from_config(config.storage), config.loop)
    print(json.dumps([r.model_dump(mode="json") for r in history], indent=2) if args.json else summary_table(history))
    return SUCCESS


def _report(config: FlywheelConfig, args) -> int:
    from flows.report import write_report
    from flows.round_records import read_history
    from infra.mlflow_links import round_links
    from infra.store_factory import store_from_config
    from infra.tracking import tracking_uri

    store = store_from_config(config.storage)
    out = args.out or Path(config.storage.data_dir) / "reports" / f"{config.loop}.html"
    history = read_history(store, config.loop)
    links = round_links(tracking_uri(config.storage), history)
    print(write_report(store, config.loop, history, out, links))
    print(f"\nreport: {out.resolve()}")
    if links:
        print("\n".join(links.lines()))
    return SUCCESS


def _compare(config: FlywheelConfig, args) -> int:
    from flows.compare import CompareError, compare_rounds
    from flows.publish import examples_markdown
    from flows.render import as_text
    from flows.rows import comparison_rows
    from flows.table import figure_table
    from infra.champion import ChampionError

    try:
        comparison = compare_rounds(config=config, baseline_round=args.against, challenger_round=args.challenger_round)
    except (CompareError, ChampionError) as err:
        print(f"flywheel: {err}", file=sys.stderr)
        return USAGE_OR_CONFIG
    if args.json:
        print(comparison.model_dump_json(indent=2))
        return SUCCESS
    print(f"\nround {comparison.challenger_round} against round {comparison.baseline_round} "
          f"on {comparison.n_prompts} held-out prompts:")
    print(as_text(figure_table(comparison_rows(comparison))))
    print()
    print(examples_markdown(comparison.best, comparison.worst, comparison.challenger_round, comparison.baseline_round))
    print(f"artifacts: {comparison.artifacts}")
    return SUCCESS


def _round(config: FlywheelConfig, args) -> int:
    from flows.round import run_next_round

    _print_outcome(config, [run_next_round(config)])
    return SUCCESS


def _loop(config: FlywheelConfig, args) -> int:
    from flows.loop import run_loop

    if args.adopt_ablation is not None:
        from flows.ablate import AblationError, adopt_ablation

        try:
            config, advice = adopt_ablation(config, args.adopt_ablation)
        except AblationError as err:
            print(f"flywheel: {err}", file=sys.stderr)
            return USAGE_OR_CONFIG
        adopted = advice.cell.name if advice.cell else "no change (the current settings stay)"
        print(f"ablation {args.adopt_ablation}: {adopted}")
    _print_outcome(config, run_loop(config=config, rounds=args.rounds))
    return SUCCESS


def _proof(config: FlywheelConfig, args) -> int:
    from flows.proof import proof_markdown, run_proof

    report = run_proof(config=config, seeds=args.seeds, rounds=args.rounds)
    if args.json:
        print(report.model_dump_json(indent=2))
        return SUCCESS
    print(proof_markdown(report))
    print(f"artifacts: {report.artifacts}")
    return SUCCESS


def _split(text: str, kind: type) -> list:
    return [kind(item) for item in text.split(",") if item.strip()]


def _run_ablation(config: FlywheelConfig, spec) -> int:
    from flows.ablate import AblationError, ablation_table, run_ablation
    from flows.render import as_text

    try:
        result = run_ablation(config=config, spec=spec)
    except AblationError as err:
        print(f"flywheel: {err}", file=sys.stderr)
        return USAGE_OR_CONFIG
    print(f"\nablation {result.number}: round {result.spec.round}'s pairs, against round {result.champion_round}'s policy")
    print(as_text(ablation_table(result)))
    print("\nrecommendation:")
    for reason in result.recommendation.reasons:
        print(f"  - {reason}")
    if result.recommendation.cell is not None:
        print(f"\nadopt it with: flywheel loop --adopt-ablation {result.number}")
    print(f"artifacts: {result.artifacts}")
    return SUCCESS if all(c.status == "done" for c in result.cells) else FAILED


def _ablate(config: FlywheelConfig, args) -> int:
    from flows.ablate import AblationSpec

    spec = _spec(lambda: AblationSpec(round=args.ablate_round, objectives=_split(args.objectives, str), ranks=_split(args.ranks, int),
                        betas=_split(args.betas, float) or [None], benchmarks=args.benchmarks, parallel=args.parallel))
    return _run_ablation(config, spec) if spec else USAGE_OR_CONFIG


def _sweep_beta(config: FlywheelConfig, args) -> int:
    from flows.ablate import AblationSpec

    spec = _spec(lambda: AblationSpec(round=args.ablate_round, objectives=[args.objective or config.train.objective[-1]],
                                      ranks=[args.rank or config.train.lora_r], betas=_split(args.values, float),
                                      benchmarks=args.benchmarks, sweep=True, parallel=args.parallel))
    return _run_ablation(config, spec) if spec else USAGE_OR_CONFIG


def _spec(build):
    """The matrix the options ask for; None (the problem printed) when it is not one."""
    from pydantic import ValidationError

    try:
        return build()
    except (ValueError, ValidationError) as err:  # a value that is no number, an unknown objective, ...
        print(f"flywheel: {err}", file=sys.stderr)
        return None


# Commands that need a loop's config; those that operate the stack (flows/operate.py) do not.
# Commands that run flows: Prefect, MLflow and S3 must answer before they start.
NEEDS_SERVICES = {"round", "loop", "proof", "compare", "ablate", "sweep-beta"}
HOLD_THE_LOOP = {"round", "loop"}  # they choose and write the loop's next round numbers
COMMANDS = {"config": _show_config, "check": _check, "history": _history, "report": _report, "compare": _compare, "round": _round, "loop": _loop,
            "proof": _proof, "ablate": _ablate, "sweep-beta": _sweep_beta}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in COMMANDS:
        from flows import operate

        return operate.run(args)
    try:
        from tasks.config_checks import load_checked_config

        config = load_checked_config(args.config, args.overrides)  # every name checked before anything runs
    except (ConfigError, ValueError) as err:
        print(f"flywheel: {err}", file=sys.stderr)
        return USAGE_OR_CONFIG
    if args.command == "check":
        return _check(config, args)
    if args.command == "proof" and (args.seeds < 1 or args.rounds < 1):
        print(f"flywheel proof: --seeds and --rounds must be at least 1 (got {args.seeds} and {args.rounds})", file=sys.stderr)
        return USAGE_OR_CONFIG
    if args.command != "config":
        _prepare_environment(config)
    if args.command in NEEDS_SERVICES:
        from flows.preflight import ServiceUnavailable, check_services

        try:
            check_services(config)  # before the round writes anything
        except ServiceUnavailable as err:
            print(f"flywheel {args.command}: {err}", file=sys.stderr)
            return SERVICE_DOWN
    if args.command in HOLD_THE_LOOP:
        return _holding_the_loop(config, args)
    return COMMANDS[args.command](config, args)


def _holding_the_loop(config: FlywheelConfig, args) -> int:
    """Run the command holding the loop's lease: a second process on the same loop waits or is refused (exit 4)."""
    from infra.lease import LoopBusyError, hold_loop
    from infra.store_factory import store_from_config

    try:
        with hold_loop(store_from_config(config.storage), config.loop, config.storage.loop_wait_s, config.storage.loop_lease_s):
            return COMMANDS[args.command](config, args)
    except LoopBusyError as err:
        print(f"flywheel {args.command}: {err}", file=sys.stderr)
        return LOOP_BUSY


if __name__ == "__main__":
    sys.exit(main())
