"""Tells glibc's allocator to keep freed memory for reuse rather than return it at once.

binhoard's pipelines allocate and free buffers of 64 KiB to a few MiB at hundreds of MB/s.
glibc serves blocks above a (dynamic) threshold with a fresh ``mmap`` and trims the heap
when its top is free, so those buffers keep going back to the kernel and every reuse
page-faults on zeroed memory. On the virtual machines measured here that costs ~2 CPU
s/GiB touched (docs/benchmarks.md). Measured on a 1 GiB compress + encrypt + upload: 0.3
CPU s less (6.45-6.85 -> 6.13-6.37 s) and 4-12% less wall time; peak RSS stays within
the pipeline's bound, since what is kept is what the pipeline already used at its peak.

That holds only with one arena. glibc gives threads arenas of their own, and memory
freed in one is kept for that arena alone: an archive pass indexes a binlog in the
main thread, then uploads it from the pipeline's, zstd's and obstore's threads, which
could not reuse what the index had freed. A 2 GiB incompressible binlog to S3 peaked at
221 MiB with the default arenas, 212 MiB with two, 187 MiB with one; a storage upload
alone was unchanged (179-183 MiB) in memory and speed. binhoard's threads allocate
buffers of a MiB or so, a few hundred times a second, so they hardly contend for it.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger("binhoard.allocator")

_M_TRIM_THRESHOLD: Final = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8
# Above every buffer binhoard allocates at the default levels (zstd's jobs are 1 MiB),
# below anything a runaway would need; a fixed value also stops glibc adjusting it.
MMAP_THRESHOLD: Final = 32 * 1024 * 1024
# Free memory kept at the top of the heap before trimming: a few pipeline buffers' worth.
TRIM_THRESHOLD: Final = 64 * 1024 * 1024
ARENA_MAX: Final = 1  # see the module's docstring


def keep_freed_memory() -> bool:
    """Applies the settings above; False where the C library has no ``mallopt``.

    Call it before starting threads: a thread keeps the arena it was given.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
    if not applied:
        log.debug("mallopt refused the thresholds; the allocator keeps its defaults")
    return applied


def release_freed_memory() -> bool:
    """Gives the memory freed so far back to the kernel (glibc's ``malloc_trim(0)``);
    False where the C library has none.

    The thresholds above keep up to ``TRIM_THRESHOLD`` of freed buffers for the next
    burst, right for a command that ends anyway. A daemon that has finished a backup then
    sits idle for hours: without this it kept the backup's buffers (16 MiB parts, x5),
    ~75 MB of RSS more than before the backup (docs/benchmarks.md, ``bench/daemon.py``).
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
