"""The stage cores in tasks/ know nothing of Prefect, MLflow or S3: each imports with those
packages blocked, so a stage can be read, tested and reused without the orchestration around it.
The same holds for the machinery in tasks/' subpackages, which in turn imports no stage module:
the stages use the machinery, never the other way round."""

from __future__ import annotations

import ast
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
    """The top-level modules of tasks/: the stage cores and what they share."""
    return sorted(f"tasks.{p.stem}" for p in (REPO / "tasks").glob("*.py") if p.stem != "__init__")


def tasks_modules() -> list[str]:
    """Every module under tasks/, those of its subpackages (the machinery) included."""
    return sorted(".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "tasks").rglob("*.py") if p.stem != "__init__")


def imported_modules(source: str, package: str) -> set[str]:
    """What the module ``source`` of ``package`` imports anywhere in it (in functions too), as absolute
    dotted names: ``from tasks import generate`` and ``from tasks.generate import x`` both give ``tasks.generate``."""
    parts = package.split(".")
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join((*parts[:len(parts) - node.level + 1], *([node.module] if node.module else []))) if node.level else node.module
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    return names


def test_every_stage_core_imports_without_prefect_mlflow_or_boto3():
    assert "tasks.train" in stage_modules() and "tasks.judge" in stage_modules()
    assert "tasks.sampling.backends" in tasks_modules() and "tasks.sampling.backends" not in stage_modules()
    done = subprocess.run([sys.executable, "-c", IMPORT_WITH_BLOCKED.format(blocked=BLOCKED, modules=tasks_modules())],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1]


def test_the_check_itself_catches_an_import(tmp_path):
    """The blocker really blocks: a module importing prefect fails under it."""
    (tmp_path / "leaky.py").write_text("import prefect\n")
    done = subprocess.run([sys.executable, "-c", IMPORT_WITH_BLOCKED.format(blocked=BLOCKED, modules=["leaky"])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "blocked" in done.stderr


def test_the_sampling_machinery_imports_no_stage_module():
    stages = set(stage_modules())
    found = sorted(f"{path.relative_to(REPO)} imports {name}" for path in (REPO / "tasks" / "sampling").rglob("*.py")
                   for name in imported_modules(path.read_text(), "tasks.sampling") if name in stages)
    assert not found, found


def test_the_import_reader_sees_every_form_of_import():
    """``imported_modules`` finds a stage module however it is imported: plain, from the package,
    from the module, relative, and inside a function."""
    forms = {"import tasks.generate\n": "tasks.generate", "from tasks import evaluate\n": "tasks.evaluate",
             "from tasks.judge import Judge\n": "tasks.judge", "from .. import llm_judge\n": "tasks.llm_judge",
             "def f():\n    from ..train import train_policy\n": "tasks.train"}
    for source, stage in forms.items():
        assert stage in imported_modules(source, "tasks.sampling"), source


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
