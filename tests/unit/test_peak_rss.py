"""A Ray worker's peak memory is measured per case: a case that once made the process large does
not show in the peaks of the cases after it, while its own peak is seen whole."""
import json
import subprocess
import sys

import pytest

from conftest import REPO
from swinray import peak_rss

WORKER = """
import json, resource
import numpy as np
from swinray import peak_rss
peak_rss.reset()
start = peak_rss.peak_mb()
big = np.ones(25 << 20)                 # a 200 MB case, every page touched
del big                                 # mapped, so returned to the kernel on free
lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
first = peak_rss.peak_mb()
reset = peak_rss.reset()
small = np.ones(1 << 20)                # an 8 MB case next
second = peak_rss.peak_mb()
print(json.dumps({"start": start, "first": first, "lifetime": lifetime, "reset": reset, "second": second}))
"""


@pytest.mark.skipif(not peak_rss.reset(), reason="no resettable peak RSS here (not Linux, or /proc read-only)")
def test_a_case_after_a_large_one_reports_its_own_peak():
    out = subprocess.run([sys.executable, "-c", WORKER], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout.splitlines()[-1])
    assert m["first"] >= m["start"] + 190                   # the large case's peak, seen whole
    assert m["lifetime"] >= m["start"] + 190                # ru_maxrss keeps it for ever...
    assert m["reset"] and m["second"] < m["start"] + 30     # ...the next case's peak does not
