"""Commands that operate the real stack: `stack up|down|env`, `deploy`, `trigger`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flows.exit_codes import FAILED, SUCCESS, USAGE_OR_CONFIG

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCHEDULED_CONFIG = "configs/demo.yaml"  # the scheduled loop's config when `flywheel deploy` names none


def run(args) -> int:
    from infra.k8s_job import JobVariablesError
    from infra.settings import ConfigError

    try:
        return {"stack": _stack, "deploy": _deploy, "trigger": _trigger}[args.command](args)
    except (ConfigError, JobVariablesError) as err:  # deploy --config naming a bad file; a Kubernetes deployment's job variables refused
        print(f"flywheel {args.command}: {err}", file=sys.stderr)
        return USAGE_OR_CONFIG
    except Exception as err:  # a clear line, not a traceback, for operators and CI logs
        from infra.stack import StackError

        if not isinstance(err, (StackError, RuntimeError, OSError, subprocess.SubprocessError)):
            raise
        print(f"flywheel {args.command}: {err}", file=sys.stderr)
        return FAILED


def _stack(args) -> int:
    from infra import stack

    if args.action == "up":
        state = stack.up(args.dir, REPO)
        print(stack.describe(state))
    elif args.action == "down":
        stopped = stack.down(args.dir)
        print(f"stopped: {', '.join(stopped)}" if stopped else f"no stack runs from {args.dir}")
    else:
        print("\n".join(f"export {k}={v}" for k, v in stack.client_env(stack.read_state(args.dir)).items()))
    return SUCCESS


def scheduled_config(path: str) -> str:
    """The config file the scheduled loop reads, as the deployment names it: relative to the repository
    the workers run from when it lies inside it, else absolute. It must load (values and keys)."""
    from infra.settings import ConfigError, load_config

    given = Path(path)
    found = given if given.is_absolute() or given.exists() else REPO / given
    if not found.is_file():
        raise ConfigError(f"--config {path}: no such file (here or in {REPO})")
    load_config(found)
    found = found.resolve()
    return str(found.relative_to(REPO)) if found.is_relative_to(REPO) else str(found)


def _deploy(args) -> int:
    """Apply prefect.yaml's deployments: those on process work pools, and with --kubernetes those on the
    Kubernetes pool too, after checking their job variables against its template (--check: only that)."""
    from infra import k8s_job

    config_file = scheduled_config(args.config)  # before the server is asked anything
    env = {**os.environ, "FLYWHEEL_REPO": str(REPO), "FLYWHEEL_CRON": args.cron, "FLYWHEEL_CONFIG": config_file}
    if args.image:
        env["FLYWHEEL_IMAGE"] = args.image
    if args.check or args.kubernetes:
        checked = k8s_job.check_deployments(env)
        if args.check:
            print(f"checked against {k8s_job.JOB_TEMPLATE.relative_to(REPO)} and the Kubernetes {k8s_job.KUBERNETES_VERSION} "
                  f"schema: {', '.join(checked)}")
            return SUCCESS
    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("PREFECT_API_URL is not set: point it at a Prefect server (see `flywheel stack env`)")
    names = deployment_names(kubernetes=args.kubernetes)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(REPO / "prefect.yaml"),
         *(f"--name={name}" for name in names)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    print(f"deployed from {REPO / 'prefect.yaml'}: {', '.join(names)} (the scheduled loop: cron {args.cron!r}, config {config_file})")
    return SUCCESS


def deployment_names(kubernetes: bool) -> list[str]:
    """prefect.yaml's deployments to apply, by name: every one, less those on the Kubernetes work pool
    unless asked (that pool exists only where a cluster does, and `prefect deploy` refuses a missing pool)."""
    import yaml

    from infra.k8s_job import KUBERNETES_POOL

    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    return [d["name"] for d in deployments if kubernetes or d["work_pool"]["name"] != KUBERNETES_POOL]


def _trigger(args) -> int:
    """Run the loop deployment, wait, print the round summary (and write it to the GitHub job summary)."""
    from prefect.deployments import run_deployment

    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("PREFECT_API_URL is not set: point it at the Prefect server that holds the deployment")
    parameters = {"config_file": args.config_file, "overrides": args.overrides, "rounds": args.rounds}
    flow_run = run_deployment(name=args.deployment, parameters=parameters, timeout=args.timeout)
    completed = flow_run.state is not None and flow_run.state.is_completed()
    record = trigger_record(flow_run, _run_summary(flow_run.id) if completed else None)
    text = trigger_markdown(record)
    print(json.dumps(record, indent=2) if args.json else text)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as out:
            out.write(text + "\n")
    return SUCCESS if completed else FAILED


def trigger_record(flow_run, summary: str | None) -> dict:
    """What `flywheel trigger --json` prints: the run, its final state, and the round summary it published."""
    state = flow_run.state
    return {
        "flow_run": flow_run.name,
        "flow_run_id": str(flow_run.id),
        "state": state.name if state else "unknown",
        "completed": state is not None and state.is_completed(),
        "message": state.message if state else "no state",
        "summary": summary,
    }


def trigger_markdown(record: dict) -> str:
    """The same record as the job summary CI shows."""
    lines = [f"## Flywheel: {record['flow_run']} ({record['state']})", ""]
    if record["completed"]:
        lines.append(record["summary"] or "(the run published no summary)")
    else:
        lines.append(f"The run did not complete: {record['message']}")
    return "\n".join(lines)


def _run_summary(flow_run_id) -> str | None:
    """The markdown summary the loop run published as a Prefect artifact."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

    async def read() -> str | None:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["markdown"]))
            )
            return found[-1].data if found else None

    return asyncio.run(read())
