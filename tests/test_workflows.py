"""The GitHub workflows pass actionlint, and they call what the README and CLI provide."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))


def _actionlint() -> str:
    local = Path(sys.executable).parent / "actionlint"
    return str(local) if local.exists() else shutil.which("actionlint")


def test_workflows_pass_actionlint():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "retrain.yml"}
    done = subprocess.run([_actionlint(), *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ci_runs_the_readme_test_command():
    steps = yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())["jobs"]["test"]["steps"]
    assert any(step.get("run", "").strip() == "make test" for step in steps)
    assert "make test" in (REPO / "README.md").read_text()
    assert "make test" in (REPO / ".ci/run").read_text()


def test_retrain_triggers_on_data_config_dispatch():
    workflow = yaml.safe_load((REPO / ".github/workflows/retrain.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as a boolean
    assert {"push", "workflow_dispatch", "repository_dispatch"} <= set(triggers)
    assert "configs/**" in triggers["push"]["paths"]
    steps = workflow["jobs"]["retrain"]["steps"]
    assert any("flywheel trigger" in step.get("run", "") for step in steps)
