"""The stage cores in tasks/ know nothing of Prefect, MLflow or S3: each imports with those
packages blocked, so a stage can be read, tested and reused without the orchestration around it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("prefect", "mlflow", "boto3", "botocore")

IMPORT_WITH_BLOCKED = """
import importlib, sys

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is blocked: tasks/ must not import it")
        return None

sys.meta_path.insert(0, Blocked())
failed = {{}}
for module in {modules!r}:  # one process for all: each import fails on its own, the rest go on
    try:
        importlib.import_module(module)
    except Exception as exc:
        failed[module] = repr(exc)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {blocked!r})
assert not failed and not leaked, (failed, leaked)
"""


def stage_modules() -> list[str]:
    return sorted(f"tasks.{p.stem}" for p in (REPO / "tasks").glob("*.py") if p.stem != "__init__") + \
        sorted(f"tasks.training.{p.stem}" for p in (REPO / "tasks" / "training").glob("*.py") if p.stem != "__init__")


def test_every_stage_core_imports_without_prefect_mlflow_or_boto3():
    assert "tasks.train" in stage_modules() and "tasks.judge" in stage_modules()
    done = subprocess.run([sys.executable, "-c", IMPORT_WITH_BLOCKED.format(blocked=BLOCKED, modules=stage_modules())],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]


def test_the_check_itself_catches_an_import(tmp_path):
    """The blocker really blocks: a module importing prefect fails under it."""
    (tmp_path / "leaky.py").write_text("import prefect\n")
    done = subprocess.run([sys.executable, "-c", IMPORT_WITH_BLOCKED.format(blocked=BLOCKED, modules=["leaky"])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "blocked" in done.stderr


def test_the_training_machinery_imports_no_stage_module():
    """tasks/training/ is what the train stage uses: it imports from tasks/ nothing but itself."""
    import ast

    upward = []
    for path in sorted((REPO / "tasks" / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            upward += [f"{path.name}: {name}" for name in names
                       if name.split(".")[0] == "tasks" and not name.startswith("tasks.training")]
    assert upward == []
