"""glibc's allocator set for the agent: one arena, large blocks given back when freed.

Two glibc defaults cost a long-running agent memory it never uses again
(docs/architecture.md "Footprint"):

- Every thread that allocates gets an arena of its own, kept for the life of the process. The
  agent's Python runs on one thread (the GIL); the only other one is asyncio's default
  executor (name lookups; aiomqtt ran paho's blocking connect there), and its arena held
  ~0.4 MiB.
- A freed block above the mmap threshold (128 KiB) raises the threshold to its size, so from
  the first sealed batch on, the zstd workspace of each seal (~1 MiB) and the packers' buffers
  are carved from the heap and stay resident. With the threshold fixed, they are mapped for
  the seal and returned after it: a few system calls per batch.

Both measured with ``benchmarks/footprint.py``: together ~1.3 MiB of peak RSS at 1,000
readings/s. The price: asyncio reads a socket into a fresh 256 KiB buffer and shrinks it, so
each read of a Modbus answer is now a mapping (~100 mmap, mremap and munmap each per second
at 50 devices polled every second; +0.2-0.4 % of one core, within the machine's noise). A
threshold above 256 KiB avoids that and keeps about half the saving. Elsewhere (musl, another
libc), ``mallopt`` is missing or ignores these and nothing changes.
"""

from __future__ import annotations

import ctypes

# <malloc.h>
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, kept from now on


def tune_allocator() -> bool:
    """Set one arena and a fixed mmap threshold; whether the C library took both."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error
    return bool(mallopt(M_ARENA_MAX, 1)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
