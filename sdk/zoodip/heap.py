"""The C heap's settings for a memory budget and for the VAE decoder (glibc's ``mallopt``/``malloc_trim``; no-ops
elsewhere).

onnxruntime allocates its tensors through ``malloc`` wherever its own arena is off, and frees a
released session's buffers into the C heap. What glibc then keeps mapped counts in the resident
set although nothing uses it; these calls make the resident set follow what is alive. On other C
libraries (Android's bionic, musl) the calls do nothing or are absent, and nothing changes.
"""
from __future__ import annotations

from typing import Any

# mallopt parameters (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
LARGE_BLOCK_BYTES = 1 << 20  # return_large_blocks' default: tensors are larger, small Python objects smaller

_LIBC: Any = None


def _libc() -> Any:
    """The C library through ctypes, or False where it cannot be opened."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _mallopt(parameter: int, value: int) -> None:
    libc = _libc()
    function = getattr(libc, "mallopt", None) if libc else None
    if function is not None:
        function(parameter, value)


def trim_heap() -> None:
    """Hand memory the C heap holds but no longer uses back to the OS (glibc's ``malloc_trim``).

    onnxruntime frees a session's buffers into the C heap, which keeps them mapped: without this a
    released VAE encoder still counts in the resident set while the UNet runs.
    """
    libc = _libc()
    function = getattr(libc, "malloc_trim", None) if libc else None
    if function is not None:
        import ctypes

        function.argtypes = [ctypes.c_size_t]
        function(0)


def limit_heap_arenas() -> None:
    """Make glibc serve every thread from one heap arena (``mallopt(M_ARENA_MAX, 1)``).

    By default each onnxruntime worker thread gets its own arena, and memory freed in one is not
    reused by another: the resident set creeps up from forward to forward.
    """
    _mallopt(_M_ARENA_MAX, 1)


def return_large_blocks(min_bytes: int = LARGE_BLOCK_BYTES) -> None:
    """Give every allocation of ``min_bytes`` or more its own mapping, unmapped when it is freed
    (``mallopt(M_MMAP_THRESHOLD, min_bytes)``).

    glibc raises its threshold as large blocks are freed (up to 32 MiB), so a graph that allocates
    and frees feature maps of a few MiB to 32 MiB each, as the VAE decoder does at every
    resolution, leaves them in the heap, where the next, differently sized ones do not fit and the
    heap grows past what is ever alive at once. A fixed threshold keeps the resident set at what
    is alive; the price is a page fault for each fresh page of those blocks.
    """
    _mallopt(_M_MMAP_THRESHOLD, int(min_bytes))
