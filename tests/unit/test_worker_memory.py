"""Preprocessing workers keep a case's large freed buffers for the next case instead of returning
them to the kernel (and faulting in fresh zeroed pages for every case)."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

HEAP = """
import ctypes, json, sys
import numpy as np
from swinray.runtime import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuned = sys.argv[1] == "tuned" and keep_freed_memory()
volume = np.ones(5 << 20)                                # a 40 MB output volume
while_alive = libc.mallinfo2()
del volume
after_free = libc.mallinfo2()
print(json.dumps({"tuned": tuned, "mapped_alive": while_alive.hblkhd, "heap_free_after": after_free.fordblks}))
"""
MB = 1 << 20


def heap(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", HEAP, mode], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="mallopt and mallinfo2 are glibc's")
def test_a_tuned_worker_keeps_a_freed_case_buffer_in_its_heap():
    default, tuned = heap("default"), heap("tuned")
    assert default["mapped_alive"] >= 40 * MB and default["heap_free_after"] < 40 * MB   # mapped, then unmapped
    assert tuned["tuned"] and tuned["mapped_alive"] < 40 * MB                            # from the heap...
    assert tuned["heap_free_after"] >= 40 * MB                                           # ...and kept there
