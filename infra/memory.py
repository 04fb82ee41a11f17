"""Resident memory per stage, and giving it back between stages.

``peak_rss`` measures the highest resident set size (RSS) a block of code reached: on Linux the
kernel's high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``) and read on exit, so
each stage reports its own peak, not the process's so far. Where the reset is refused the figure
is the process's peak since start (``ru_maxrss``), flagged ``since_start``.

``drop_file_pages`` hands back the pages a tensor read from a file mapping holds resident (a
checkpoint's fp32 weights once they are converted), without waiting for the whole file to be unmapped.

``release_memory`` hands freed memory back to the system after a stage: unreachable model
objects (reference cycles) are collected and glibc's allocator trims its free lists, which
otherwise keep a freed model's pages resident for the rest of the process.

``malloc_in_use_mb`` is what the program holds through glibc's allocator (``mallinfo2``), apart
from what the allocator keeps resident: a process whose resident memory grows while this does not
is fragmenting its heap, not holding more.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_in_use_mb() -> float | None:
    """Bytes allocated and not freed through glibc's malloc, in every arena and in mapped blocks
    (MB); None without glibc >= 2.33. Python objects of over 512 bytes, native libraries' memory and
    CPU tensors are all allocated here; Python's small objects live in its own arenas, which it maps apart."""
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return (info.uordblks + info.hblkhd) / 2**20


_MADV_DONTNEED = 4  # Linux's number; the same on every architecture


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges of this process's private mappings of files (``/proc/self/maps``)."""
    ranges = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/") and fields[1].endswith("p"):
                low, high = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((low, high))
    return ranges


def drop_file_pages(tensors) -> int:
    """Hand back the resident pages of ``tensors`` that lie in a private mapping of a file (a
    safetensors checkpoint transformers maps instead of reading); returns the bytes handed back.
    Reading such a tensor again reads the file again, so its values stay what they were, as long
    as nothing wrote to it (writes to a private mapping are lost); tensors in ordinary memory are
    left alone. Only whole pages inside a tensor are dropped. The mappings are read once, so
    ``tensors`` may be a generator that makes each tensor as the last one's pages go."""
    if not sys.platform.startswith("linux"):
        return 0
    mappings = _file_mappings()
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    page, dropped = mmap.PAGESIZE, 0
    for tensor in tensors:
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        low, high = -(-start // page) * page, end // page * page
        if high > low and any(a <= start and end <= b for a, b in mappings):
            if madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), _MADV_DONTNEED) == 0:
                dropped += high - low
    return dropped
