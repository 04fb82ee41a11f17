"""The import graph of flows/, tasks/ and infra/: no circles, and the layers point one way.

What counts as an import. The graph is read from the source (``ast``), without importing
anything. An edge ``a -> b`` is any ``import`` or ``from ... import`` in ``a`` naming ``b`` (or a
module inside ``b``: ``from tasks.sampling import sampler`` is an edge to ``tasks.sampling.sampler``),
relative imports resolved against ``a``'s package. Importing ``p.q.m`` also runs the ``__init__``
of ``p`` and ``p.q``, so those are edges too, except the packages that hold ``a`` itself (Python
has them loaded before ``a`` runs).

- **Module-level** imports are the statements run when the module is imported: the module's body,
  class bodies, ``try``/``if`` blocks, and ``if TYPE_CHECKING:`` blocks too. A circle through
  type-only imports is still two modules that each need the other to be read (records tangled
  with what shows them), so it counts.
- **Lazy** imports sit inside a function. They run later and do not break an import, but one
  that closes a circle still ties the two modules together; the circles that need a lazy import
  to close are asserted absent separately, so the failure says which kind it is.

The layers, for every import of either kind: infra/ imports neither flows/ nor tasks/; tasks/ never
imports flows/; and the machinery in a subpackage of tasks/ (``tasks/<pkg>/...``) never imports a
top-level stage module (``tasks/generate.py`` and the other seven): stages use machinery, not the
other way round.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "infra")
STAGE_MODULES = {f"tasks.{name}" for name in ("prompts", "generate", "judge", "filter", "train", "evaluate", "regression", "promote")}


@dataclass
class ImportGraph:
    """Modules (dotted names) and, for each, the known modules it imports at module level and lazily."""

    modules: dict[str, Path] = field(default_factory=dict)
    eager: dict[str, set[str]] = field(default_factory=dict)
    lazy: dict[str, set[str]] = field(default_factory=dict)

    def edges(self, with_lazy: bool) -> dict[str, set[str]]:
        return {m: self.eager[m] | (self.lazy[m] if with_lazy else set()) for m in self.modules}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a ``from`` import names, relative levels resolved against ``importer``."""
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _named(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """Every dotted name an import statement may load: a ``from`` import's names may be submodules."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    source = _resolve(node, importer, is_package)
    return [source] + [f"{source}.{alias.name}" for alias in node.names if alias.name != "*"]


def _targets(name: str, importer: str, known: set[str]) -> set[str]:
    """The known modules that loading ``name`` runs: its longest known prefix and the packages
    above it, less the packages that hold the importer."""
    parts = name.split(".")
    prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    own_packages = {".".join(importer.split(".")[:i]) for i in range(1, importer.count(".") + 1)}
    return {p for p in prefixes if p in known and p not in own_packages and p != importer}


def _imports(tree: ast.Module) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """The module's import statements: (module-level, inside a function)."""
    eager, lazy = [], []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else eager).append(child)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return eager, lazy


def build_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> ImportGraph:
    """The import graph of the ``.py`` files under ``root/<package>`` for each of ``packages``."""
    graph = ImportGraph()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            graph.modules[module_name(path, root)] = path
    known = set(graph.modules)
    for module, path in graph.modules.items():
        is_package = path.name == "__init__.py"
        eager, lazy = _imports(ast.parse(path.read_text(), filename=str(path)))
        for kind, statements in ((graph.eager, eager), (graph.lazy, lazy)):
            kind[module] = {t for node in statements for name in _named(node, module, is_package) for t in _targets(name, module, known)}
    return graph


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle, as a path ``[a, b, ..., a]``, for each tangle (strongly connected component) of
    two or more modules; the tangle's other members are named by :func:`tangles`."""
    return [_cycle_within(sorted(members), edges) for members in tangles(edges)]


def tangles(edges: dict[str, set[str]]) -> list[set[str]]:
    """The sets of modules that each reach all the others (Kosaraju: finish order, then the reversed graph)."""
    order, seen = [], set()
    for start in sorted(edges):
        stack = [(start, iter(sorted(edges[start])))] if start not in seen else []
        seen.add(start)
        while stack:
            node, children = stack[-1]
            child = next((c for c in children if c not in seen), None)
            if child is None:
                order.append(stack.pop()[0])
            else:
                seen.add(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    reverse = {m: {a for a in edges if m in edges[a]} for m in edges}
    found, placed = [], set()
    for start in reversed(order):
        if start in placed:
            continue
        members, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node not in placed:
                placed.add(node)
                members.add(node)
                todo.extend(reverse.get(node, ()))
        if len(members) > 1:
            found.append(members)
    return sorted(found, key=min)


def _cycle_within(members: list[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the tangle's first member, by breadth-first search inside the tangle."""
    start, came_from = members[0], {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & set(members)):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if child not in came_from:
                    came_from[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no circle through {start}")  # a tangle always has one


def describe(edges: dict[str, set[str]], graph: ImportGraph) -> str:
    """Each tangle as one circle ``a -> b -> a``, then every file in the tangle."""
    where = lambda m: str(graph.modules[m].relative_to(REPO) if graph.modules[m].is_relative_to(REPO) else graph.modules[m])  # noqa: E731
    return "\n".join(" -> ".join(_cycle_within(sorted(members), edges)) + "\n    files: " + ", ".join(map(where, sorted(members)))
                     for members in tangles(edges))


def layering_violations(graph: ImportGraph) -> list[str]:
    """Every import, module-level or lazy, that points up a layer or from machinery up to a stage."""
    found = []
    for module, targets in graph.edges(with_lazy=True).items():
        layer = module.split(".")[0]
        # tasks/<pkg>/__init__.py (tasks.<pkg>) is machinery too.
        in_subpackage = layer == "tasks" and (module.count(".") >= 2 or (module != "tasks" and graph.modules[module].name == "__init__.py"))
        for target in sorted(targets):
            upward = (layer == "infra" and target.split(".")[0] in ("flows", "tasks")) or (layer == "tasks" and target.startswith("flows"))
            if upward or (in_subpackage and target in STAGE_MODULES):
                found.append(f"{module} imports {target}")
    return sorted(found)


# --- the project --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph(REPO)


def test_the_stage_modules_named_here_exist(graph):
    assert STAGE_MODULES <= set(graph.modules), f"stage modules renamed or moved: {sorted(STAGE_MODULES - set(graph.modules))}"


def test_no_circle_of_module_level_imports(graph):
    edges = graph.edges(with_lazy=False)
    assert not find_cycles(edges), "import circles (module-level imports):\n" + describe(edges, graph)


def test_no_circle_closed_by_a_lazy_import(graph):
    edges = graph.edges(with_lazy=True)
    assert not find_cycles(edges), "import circles closed by an import inside a function:\n" + describe(edges, graph)


def test_layers_point_down(graph):
    violations = layering_violations(graph)
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


# --- the checker, on a made-up package -----------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_circle_and_its_path(tmp_path):
    root = write_package(tmp_path, {
        "flows/__init__.py": "", "flows/a.py": "from flows.b import x\n", "flows/b.py": "import flows.c\n",
        "flows/c.py": "from flows import a\n", "flows/d.py": "from flows.a import y\n",
    })
    assert find_cycles(build_graph(root, ("flows",)).edges(with_lazy=False)) == [["flows.a", "flows.b", "flows.c", "flows.a"]]


def test_checker_resolves_relative_imports_and_packages(tmp_path):
    root = write_package(tmp_path, {
        "tasks/__init__.py": "", "tasks/sampling/__init__.py": "from .sampler import sample\n",
        "tasks/sampling/sampler.py": "from ..generate import Result\n",
        "tasks/generate.py": "from tasks.sampling import sample\n",
    })
    graph = build_graph(root, ("tasks",))
    assert graph.eager["tasks.sampling.sampler"] == {"tasks.generate"}
    assert graph.eager["tasks.generate"] == {"tasks.sampling"}
    assert find_cycles(graph.edges(with_lazy=False)) == [["tasks.generate", "tasks.sampling", "tasks.sampling.sampler", "tasks.generate"]]
    assert layering_violations(graph) == ["tasks.sampling.sampler imports tasks.generate"]


def test_checker_counts_type_checking_imports_and_keeps_lazy_ones_apart(tmp_path):
    root = write_package(tmp_path, {
        "flows/__init__.py": "",
        "flows/rows.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from flows.summary import RoundSummary\n",
        "flows/summary.py": "from flows.rows import history_table\n",
        "flows/report.py": "def write():\n    from flows.cli import main\n",
        "flows/cli.py": "from flows.report import write\n",
    })
    graph = build_graph(root, ("flows",))
    assert find_cycles(graph.edges(with_lazy=False)) == [["flows.rows", "flows.summary", "flows.rows"]]
    assert find_cycles(graph.edges(with_lazy=True)) == [["flows.cli", "flows.report", "flows.cli"],
                                                        ["flows.rows", "flows.summary", "flows.rows"]]


def test_checker_finds_imports_against_the_layers(tmp_path):
    root = write_package(tmp_path, {
        "flows/__init__.py": "", "flows/round.py": "import tasks.train\n",
        "tasks/__init__.py": "", "tasks/train.py": "def f():\n    from flows.round import x\n",
        "infra/__init__.py": "", "infra/store.py": "from tasks import train\n",
    })
    assert layering_violations(build_graph(root)) == ["infra.store imports tasks", "infra.store imports tasks.train",
                                                      "tasks.train imports flows", "tasks.train imports flows.round"]
