"""glibc's memory settings (minillm/training/malloc.py): accepted where glibc is the C library."""
import platform

import pytest

from minillm.training.malloc import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="not a glibc system")
def test_glibc_accepts_the_thresholds():
    assert keep_freed_memory() is True
