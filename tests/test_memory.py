"""Peak resident memory per block (what `run_stage` logs as `<stage>/peak_rss_mb`)."""

import sys

import numpy as np
import pytest

from infra.memory import peak_rss, release_memory, rss_mb


def _touch(mb: int) -> np.ndarray:
    return np.ones(mb * 2**20 // 8)  # written, so resident


def test_peak_is_the_blocks_own_not_the_process_so_far():
    big = _touch(400)
    del big
    release_memory()
    with peak_rss() as outer:
        with peak_rss() as memory:
            block = _touch(150)
            del block
    assert memory.peak_mb >= memory.start_mb + 140
    if not memory.since_start:  # Linux: the high-water mark was reset on entry, so the earlier 400 MB do not count
        assert memory.peak_mb < memory.start_mb + 350
    assert outer.peak_mb >= memory.peak_mb - 1 or outer.since_start


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_memory_hands_freed_pages_back():
    """Freed small allocations between live ones stay resident (glibc keeps them for reuse) until trimmed."""
    before = rss_mb()
    chunks = [np.ones(8000) for _ in range(5000)]  # 64 KB each, under the mmap threshold: on the heap
    kept = chunks[::50]
    del chunks
    assert rss_mb() > before + 200  # freed, but not handed back
    release_memory()
    assert rss_mb() < before + 50
    del kept


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise and /proc/self/maps")
def test_dropped_file_pages_leave_the_resident_set_and_the_values_stay(tmp_path):
    """A tensor viewing a private mapping of a file (as transformers maps a checkpoint) gives its
    pages back; read again, it holds the file's values. Ordinary memory is left alone."""
    import mmap

    import torch

    from infra.memory import _status_mb, drop_file_pages

    values = torch.arange(16 * 2**20, dtype=torch.float32)  # 64 MB
    path = tmp_path / "weights.bin"
    path.write_bytes(values.numpy().tobytes())
    with path.open("r+b") as file:
        mapping = mmap.mmap(file.fileno(), 0, flags=mmap.MAP_PRIVATE)
    mapped = torch.frombuffer(mapping, dtype=torch.float32)
    assert torch.equal(mapped, values)  # read: resident now
    resident = _status_mb("RssFile")
    assert drop_file_pages([mapped]) >= 63 * 2**20
    assert _status_mb("RssFile") < resident - 60
    assert torch.equal(mapped, values)
    ordinary = values.clone()
    assert drop_file_pages([ordinary]) == 0 and torch.equal(ordinary, values)
    del mapped
    mapping.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_malloc_in_use_counts_what_is_held_not_what_is_resident():
    """Freed heap chunks kept resident (not yet trimmed) leave the in-use figure; held ones stay in it."""
    from infra.memory import malloc_in_use_mb

    before = malloc_in_use_mb()
    if before is None:
        pytest.skip("glibc older than 2.33")
    chunks = [np.ones(8000) for _ in range(5000)]  # 64 KB each, on the heap: 320 MB
    assert malloc_in_use_mb() > before + 300
    kept = chunks[::50]
    del chunks
    held = malloc_in_use_mb()
    assert before + 5 < held < before + 20  # 100 chunks of 64 KB held, the rest freed though resident
    release_memory()
    assert abs(malloc_in_use_mb() - held) < 5  # trimming hands back pages, not allocations
    del kept
