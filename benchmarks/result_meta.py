"""The one schema and naming rule of the files in benchmarks/results/, shared by every bench script.

A results file is JSON with two top-level keys:

* ``meta``: where and how the figures were measured. ``schema`` (this module's ``SCHEMA``), ``date``
  (ISO ``YYYY-MM-DD``, UTC), ``commit`` (the git sha of the code measured, ``-dirty`` appended when the
  work tree had changes; ``unknown`` when not recorded), ``machine`` (``kind``, ``cpu_model``, ``cores``,
  ``flags``: the CPU features that decide the speed, each true, false or ``unknown``; ``gpu``: its name
  or null), ``dtype`` (``bf16``, ``fp32``, ``auto`` where the file records only the request, ``mixed``
  where variants differ, ``none`` where no model runs), ``versions`` (Python and the libraries that
  set the speed), ``script`` and ``args`` (the command line, or ``unknown``); optionally ``label``,
  ``note`` and, for files written before this schema, ``migrated_from``.
* ``results``: the script's own figures (a file with several runs holds ``{"runs": [...]}``).

The file's name is derived from its meta (``result_name``):
``<bench>-<machine kind>-<dtype>-<YYYY-MM-DD>[-<label>].json``, where ``<bench>`` is the script's
name without ``bench_`` (``speed``, ``round``, ``probe-gpu``...) and the machine kind is the GPU's
short name when there is one (``h200``), else the CPU family and its best matrix feature
(``xeon-amx``, ``epyc-avx512bf16``, ``xeon-avx512``).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

SCHEMA = 1
RESULTS_DIR = Path(__file__).with_name("results")
REPO = Path(__file__).resolve().parents[1]

# The CPU features that decide which kernels run: AMX tiles, AVX-512 and its bf16 products.
SPEED_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
# The libraries whose versions change the figures.
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "lm_eval")
DTYPES = ("bf16", "fp32", "auto", "mixed", "none")
META_KEYS = ("schema", "date", "commit", "machine", "dtype", "versions", "script", "args")
MACHINE_KEYS = ("kind", "cpu_model", "cores", "flags", "gpu")
UNKNOWN = "unknown"
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*-(bf16|fp32|auto|mixed|none)-\d{4}-\d{2}-\d{2}(-[a-z0-9]+)*\.json$")


def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo gives it (``lscpu``'s "Model name")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def cpu_flags() -> dict[str, bool | str]:
    """Each of SPEED_FLAGS: whether this CPU has it (``unknown`` without /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {flag: UNKNOWN for flag in SPEED_FLAGS}
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    present = set(line.split(":", 1)[-1].split())
    return {flag: flag in present for flag in SPEED_FLAGS}


def gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def machine_kind(cpu: str, flags: dict, gpu: str | None) -> str:
    """A short name for the kind of machine: the GPU when there is one, else CPU family + best matrix feature."""
    if gpu:
        return re.sub(r"[^a-z0-9]+", "-", gpu.lower().replace("nvidia", "")).strip("-")
    lowered = cpu.lower()
    family = next((name for name in ("epyc", "xeon", "ryzen", "core") if name in lowered), None)
    family = family or ("amd" if "amd" in lowered else "intel" if "intel" in lowered else "cpu")
    for flag, feature in (("amx_bf16", "amx"), ("avx512_bf16", "avx512bf16"), ("avx512f", "avx512")):
        if flags.get(flag) is True:
            return f"{family}-{feature}"
    return family


def this_machine() -> dict:
    cpu, flags, gpu = cpu_model(), cpu_flags(), gpu_name()
    return {"kind": machine_kind(cpu, flags, gpu), "cpu_model": cpu, "cores": os.cpu_count(), "flags": flags, "gpu": gpu}


def git_commit() -> str:
    """HEAD's sha, with ``-dirty`` when tracked files differ from it; ``unknown`` outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return UNKNOWN
    return sha + ("-dirty" if dirty.strip() else "")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def effective_dtype(requested: str) -> str:
    """What ``model.dtype: auto`` resolves to here (bf16 on a GPU or a CPU with native bf16), else the request."""
    if requested != "auto":
        return requested
    from infra.models import cpu_supports_bf16

    return "bf16" if gpu_name() or cpu_supports_bf16() else "fp32"


def build_meta(script: str, dtype: str, label: str | None = None, note: str | None = None, args: list[str] | None = None) -> dict:
    """The meta block of a run made now, on this machine, with this code."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    meta = {"schema": SCHEMA, "date": datetime.datetime.now(datetime.UTC).date().isoformat(), "commit": git_commit(),
            "machine": this_machine(), "dtype": dtype, "versions": library_versions(),
            "script": Path(script).name, "args": list(sys.argv[1:] if args is None else args)}
    label = re.sub(r"[^a-z0-9]+", "-", (label or "").lower()).strip("-")
    if label:
        meta["label"] = label
    if note:
        meta["note"] = note
    return meta


def bench_name(script: str) -> str:
    return Path(script).stem.removeprefix("bench_").replace("_", "-")


def result_name(meta: dict) -> str:
    """``<bench>-<machine kind>-<dtype>-<YYYY-MM-DD>[-<label>].json``, from the file's meta."""
    label = f"-{meta['label']}" if meta.get("label") else ""
    return f"{bench_name(meta['script'])}-{meta['machine']['kind']}-{meta['dtype']}-{meta['date']}{label}.json"


def new_result_path(meta: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """Where the run's file goes; an existing file is never overwritten (a second run the same day takes a label)."""
    path = Path(out_dir) / result_name(meta)
    if path.exists():
        raise FileExistsError(f"{path} exists: a second run the same day needs --label (e.g. --label run2)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def dump_result(path: Path, meta: dict, results: dict) -> None:
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str) + "\n")


def write_result(meta: dict, results: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``{"meta", "results"}`` under its rule's name, in out_dir."""
    path = new_result_path(meta, out_dir)
    dump_result(path, meta, results)
    return path

