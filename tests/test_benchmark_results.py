"""benchmarks/results/ keeps one schema and one naming rule (benchmarks/result_meta.py), its INDEX.md is
the one benchmarks/index.py writes today, every file there is cited, and every file a page cites exists."""

import datetime
import itertools
import json
import re
from pathlib import Path

import pytest

from benchmarks import result_meta
from benchmarks.index import INDEX_NAME, render_index
from benchmarks.result_meta import RESULTS_DIR

REPO = Path(__file__).resolve().parents[1]
RESULT_FILES = sorted(RESULTS_DIR.glob("*.json"))
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
BENCH_SCRIPTS = sorted([*(REPO / "benchmarks").glob("bench_*.py"), REPO / "benchmarks" / "probe_gpu.py"])
COMMIT = re.compile(r"^[0-9a-f]{7,40}(-dirty)?$")
# A results file as pages name it: a name ending in .json or .png with a dated part, braces and * allowed.
CITED = re.compile(r"[\w{},*.-]*-(?:\d{4}-\d{2}-\d{2}|\*)[\w{},*.-]*\.(?:json|png)")


def _ids(paths):
    return [p.name for p in paths]


def test_there_are_results():
    assert len(RESULT_FILES) >= 10, f"benchmarks/results/ holds {len(RESULT_FILES)} JSON files"


@pytest.mark.parametrize("path", RESULT_FILES, ids=_ids(RESULT_FILES))
def test_file_has_the_full_meta_schema(path: Path):
    data = json.loads(path.read_text())
    assert set(data) == {"meta", "results"}, f"{path.name}: top-level keys {sorted(data)}, expected meta and results"
    meta = data["meta"]
    missing = [k for k in result_meta.META_KEYS if k not in meta]
    assert not missing, f"{path.name}: meta lacks {missing}"
    assert meta["schema"] == result_meta.SCHEMA
    assert datetime.date.fromisoformat(meta["date"]).year >= 2026, f"{path.name}: date {meta['date']!r}"
    assert meta["commit"] == "unknown" or COMMIT.match(meta["commit"]), f"{path.name}: commit {meta['commit']!r}"
    machine = meta["machine"]
    assert set(result_meta.MACHINE_KEYS) <= set(machine), f"{path.name}: machine lacks {set(result_meta.MACHINE_KEYS) - set(machine)}"
    assert set(machine["flags"]) == set(result_meta.SPEED_FLAGS), f"{path.name}: flags {sorted(machine['flags'])}"
    assert all(v in (True, False, "unknown") for v in machine["flags"].values()), f"{path.name}: flags {machine['flags']}"
    assert machine["kind"] == result_meta.machine_kind(machine["cpu_model"], machine["flags"], machine["gpu"]), \
        f"{path.name}: machine kind {machine['kind']!r} does not follow from its CPU, flags and GPU"
    assert meta["dtype"] in result_meta.DTYPES, f"{path.name}: dtype {meta['dtype']!r}"
    assert {"python", *result_meta.LIBRARIES} <= set(meta["versions"]), f"{path.name}: versions {sorted(meta['versions'])}"
    assert (REPO / "benchmarks" / meta["script"]).is_file(), f"{path.name}: script {meta['script']!r} is not in benchmarks/"
    assert meta["args"] == "unknown" or isinstance(meta["args"], list)
    assert isinstance(data["results"], dict) and data["results"], f"{path.name}: no results"


@pytest.mark.parametrize("path", RESULT_FILES, ids=_ids(RESULT_FILES))
def test_file_name_follows_the_rule(path: Path):
    meta = json.loads(path.read_text())["meta"]
    assert result_meta.NAME_PATTERN.match(path.name), f"{path.name} does not read <bench>-<machine kind>-<dtype>-<YYYY-MM-DD>[-<label>].json"
    assert path.name == result_meta.result_name(meta), f"{path.name}: its meta names it {result_meta.result_name(meta)}"


def test_figures_go_with_a_results_file():
    for png in RESULTS_DIR.glob("*.png"):
        assert png.with_suffix(".json").exists(), f"{png.name} has no results file of the same name"
    others = {p.name for p in RESULTS_DIR.iterdir()} - {p.name for p in RESULT_FILES} - {p.name for p in RESULTS_DIR.glob("*.png")} - {INDEX_NAME}
    assert not others, f"benchmarks/results/ holds files outside the rule: {sorted(others)}"


def test_index_is_not_stale():
    written = (RESULTS_DIR / INDEX_NAME).read_text()
    assert written == render_index(RESULTS_DIR), "benchmarks/results/INDEX.md is stale: run `python -m benchmarks.index`"


def test_index_lists_every_results_file():
    index = (RESULTS_DIR / INDEX_NAME).read_text()
    assert [p.name for p in RESULT_FILES if f"[{p.name}]({p.name})" not in index] == []


def _expand_braces(pattern: str) -> list[str]:
    parts = re.split(r"(\{[^}]*\})", pattern)
    choices = [p[1:-1].split(",") if p.startswith("{") else [p] for p in parts]
    return ["".join(c) for c in itertools.product(*choices)]


def _citations() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for page in PAGES:
        for name in CITED.findall(page.read_text()):
            found.setdefault(Path(name).name, set()).add(page.name)
    return found


def test_every_cited_results_file_exists():
    names = {p.name for p in RESULTS_DIR.iterdir()}
    dangling = []
    for cited, pages in sorted(_citations().items()):
        for pattern in _expand_braces(cited):
            if not (any(Path(n).match(pattern) for n in names) if "*" in pattern else pattern in names):
                dangling.append(f"{pattern} (cited in {', '.join(sorted(pages))})")
    assert not dangling, "pages cite results files that do not exist:\n  " + "\n  ".join(dangling)


def test_every_figure_is_cited():
    text = "".join(page.read_text() for page in PAGES)
    uncited = [p.name for p in RESULTS_DIR.glob("*.png") if p.name not in text]
    assert not uncited, f"figures no page shows: {uncited} (remove them or cite them in docs/)"


@pytest.mark.parametrize("script", BENCH_SCRIPTS, ids=_ids(BENCH_SCRIPTS))
def test_every_bench_script_writes_through_result_meta(script: Path):
    text = script.read_text()
    assert "result_meta import" in text and ("write_result" in text or "dump_result" in text), \
        f"{script.name} does not write its results through benchmarks/result_meta.py"


@pytest.mark.parametrize(("cpu", "flags", "gpu", "kind"), [
    ("AMD EPYC 9R14", {"avx512f": True, "avx512_bf16": True, "amx_tile": False, "amx_bf16": False}, None, "epyc-avx512bf16"),
    ("Intel(R) Xeon(R) Platinum 8488C", {"avx512f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}, None, "xeon-amx"),
    ("Intel(R) Xeon(R) Processor", {"avx512f": True, "avx512_bf16": False, "amx_tile": False, "amx_bf16": False}, None, "xeon-avx512"),
    ("Intel(R) Xeon(R) Processor", dict.fromkeys(result_meta.SPEED_FLAGS, "unknown"), "NVIDIA H200", "h200"),
    ("Apple M2", dict.fromkeys(result_meta.SPEED_FLAGS, False), None, "cpu"),
])
def test_machine_kind(cpu, flags, gpu, kind):
    assert result_meta.machine_kind(cpu, flags, gpu) == kind


def test_a_run_is_written_under_its_name_and_never_overwritten(tmp_path: Path):
    meta = result_meta.build_meta("benchmarks/bench_judge.py", "none", label="Side by Side", args=["--pairs", "4"])
    path = result_meta.write_result(meta, {"speedup": 2.0}, tmp_path)
    assert path.name == f"judge-{meta['machine']['kind']}-none-{datetime.datetime.now(datetime.UTC).date()}-side-by-side.json"
    data = json.loads(path.read_text())
    assert data["meta"]["commit"] == "unknown" or COMMIT.match(data["meta"]["commit"])
    assert data["meta"]["versions"]["torch"] != "not installed" and data["results"] == {"speedup": 2.0}
    with pytest.raises(FileExistsError, match="--label"):
        result_meta.write_result(meta, {"speedup": 3.0}, tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        result_meta.build_meta("bench_judge.py", "float16")
