"""Commands that operate the real stack: `stack up|down|env`, `deploy`, `trigger`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args) -> int:
    try:
        return {"stack": _stack, "deploy": _deploy, "trigger": _trigger}[args.command](args)
    except Exception as err:  # a clear line, not a traceback, for operators and CI logs
        from infra.stack import StackError

        if not isinstance(err, (StackError, RuntimeError, OSError, subprocess.SubprocessError)):
            raise
        print(f"flywheel {args.command}: {err}", file=sys.stderr)
        return 1


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
    return 0


def _deploy(args) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("PREFECT_API_URL is not set: point it at a Prefect server (see `flywheel stack env`)")
    env = {**os.environ, "FLYWHEEL_REPO": str(REPO), "FLYWHEEL_CRON": args.cron}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(REPO / "prefect.yaml")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"prefect deploy failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    print(f"deployed from {REPO / 'prefect.yaml'}: flywheel-scheduled-loop/scheduled (cron {args.cron!r}), flywheel-train/gpu, flywheel-generate/gpu")
    return 0


def _trigger(args) -> int:
    """Run the loop deployment, wait, print the round summary (and write it to the GitHub job summary)."""
    from prefect.deployments import run_deployment

    if not os.environ.get("PREFECT_API_URL"):
        raise RuntimeError("PREFECT_API_URL is not set: point it at the Prefect server that holds the deployment")
    parameters = {"config_file": args.config_file, "overrides": args.overrides, "rounds": args.rounds}
    flow_run = run_deployment(name=args.deployment, parameters=parameters, timeout=args.timeout)
    state = flow_run.state
    ok = state is not None and state.is_completed()
    lines = [f"## Flywheel: {flow_run.name} ({state.name if state else 'unknown'})", ""]
    if ok:
        lines.append(_run_summary(flow_run.id) or "(the run published no summary)")
    else:
        lines.append(f"The run did not complete: {state.message if state else 'no state'}")
    text = "\n".join(lines)
    print(text)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with open(os.environ["GITHUB_STEP_SUMMARY"], "a") as out:
            out.write(text + "\n")
    return 0 if ok else 1


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
