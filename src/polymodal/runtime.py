"""Process-wide settings that make torch's eager CPU path faster: the C allocator.

glibc serves a large allocation (over 128 KiB at first; over 32 MiB at most, once its
threshold has adapted) with a fresh mmap and returns it to the kernel on free, so each
large activation tensor (a ViT-B/32 MLP at batch 64 is 39 MB)
page-faults all of its memory in again on every forward pass. On the reference machine
that made an elementwise multiply of such a tensor cost 13 ms instead of 1 ms; ViT-B/32
images at batch 64 went from about 20 to 25 per second with the setting below.

`tune_allocator()` tells glibc to serve large blocks from its heap and to keep freed
memory for reuse (`mallopt`), which is what jemalloc or tcmalloc would give without an
LD_PRELOAD. The price: the process keeps its peak memory instead of shrinking after a
large batch. The command line applies it at start; library users may call it themselves.
Set POLYMODAL_ALLOCATOR=system to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_FREED_BYTES = 1 << 30  # free memory at the heap's top that is kept rather than trimmed
# glibc's own defaults, restored by `tune_allocator(False)`
SYSTEM_MMAP_MAX = 65536
SYSTEM_TRIM_THRESHOLD = 128 * 1024


def tune_allocator(enabled: bool = True) -> bool:
    """Serve large allocations from the heap and keep freed memory (or, with `enabled=False`,
    put back glibc's default values). Returns whether the setting was applied: False off
    glibc (macOS, musl, Windows), or when POLYMODAL_ALLOCATOR=system asks to leave it alone.

    Any mallopt call of these parameters switches off glibc's adaptive mmap threshold for
    good: `enabled=False` restores the default values, not the adaptation, so a process
    that called this is never again quite a default one (the benchmarks say so)."""
    if os.environ.get("POLYMODAL_ALLOCATOR", "tuned") == "system" or not sys.platform.startswith("linux"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mmap_max, trim = (0, KEEP_FREED_BYTES) if enabled else (SYSTEM_MMAP_MAX, SYSTEM_TRIM_THRESHOLD)
    # mallopt returns 1 on success
    return bool(libc.mallopt(M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(M_TRIM_THRESHOLD, trim))


def _glibc() -> ctypes.CDLL | None:
    # The process's own symbols: libc is already loaded, and ctypes.util.find_library would
    # run ldconfig in a subprocess on every command-line start.
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 (present in glibc only)
    except (OSError, AttributeError):
        return None
    return libc
