"""Keep freed memory in the process instead of handing it back to the OS (glibc only).

A training step allocates and frees the same few hundred arrays every iteration. By default
glibc returns large freed blocks to the operating system (munmap, heap trimming) and the next
step takes them back page by page, paying a page fault per 4 KiB page: on the baby GPT that is
thousands of faults and a large share of the step. Raising the mmap and trim thresholds keeps
those blocks in the heap for reuse. ``python -m minillm`` calls this at start; it does nothing
on systems without glibc.
"""
import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold=32 * 1024 * 1024, trim_threshold=1024 * 1024 * 1024):
    """Set glibc's mmap threshold (at most 32 MiB on 64-bit glibc) and trim threshold.
    Returns True when both settings were accepted."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return (bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
            and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold)))
