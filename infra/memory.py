"""Resident memory per stage, and giving it back between stages.

``peak_rss`` measures the highest resident set size (RSS) a block of code reached: on Linux the
kernel's high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``) and read on exit, so
each stage reports its own peak, not the process's so far. Where the reset is refused the figure
is the process's peak since start (``ru_maxrss``), flagged ``since_start``.

``release_memory`` hands freed memory back to the system after a stage: unreachable model
objects (reference cycles) are collected and glibc's allocator trims its free lists, which
otherwise keep a freed model's pages resident for the rest of the process.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss_mb() -> float:
    """Resident memory of this process now, in MB (MiB)."""
    now = _status_mb("VmRSS")
    if now is None:
        import psutil

        now = psutil.Process().memory_info().rss / 2**20
    return now


def _lifetime_peak_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def _reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False where refused."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class PeakRSS:
    start_mb: float = 0.0
    peak_mb: float = 0.0
    end_mb: float = 0.0
    since_start: bool = False  # the peak is the process's since it started, not the block's alone


@contextlib.contextmanager
def peak_rss() -> Iterator[PeakRSS]:
    """Measure the peak RSS of the ``with`` block (MB); the figures are filled in on exit."""
    figures = PeakRSS(start_mb=rss_mb())
    reset = _reset_peak()
    try:
        yield figures
    finally:
        figures.end_mb = rss_mb()
        hwm = _status_mb("VmHWM") if reset else None
        figures.since_start = hwm is None
        figures.peak_mb = max(hwm if hwm is not None else _lifetime_peak_mb(), figures.end_mb)


def release_memory() -> None:
    """Collect garbage, empty the accelerator's cache and return glibc's free pages to the system."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
