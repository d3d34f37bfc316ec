"""Peak resident memory of one piece of work in a process that does many (a Ray worker).

``ru_maxrss`` is a process's lifetime high-water mark, and Ray reuses worker processes across
tasks, and across the runs of one driver: a worker that once held a large case would report it for
every later one. Linux keeps the same mark as ``VmHWM`` in ``/proc/self/status`` and resets it to
the current resident size when "5" is written to ``/proc/self/clear_refs`` (Linux 4.0 on; proc(5)).
So a case starts with ``reset()`` and ends with ``peak_mb()``: the most the process held while that
case ran, including what it already held (interpreter, libraries, the heap ``keep_freed_memory``
keeps). Where the reset is not possible (not Linux, a read-only /proc) the mark is the process's
lifetime one, and ``reset()`` says so by returning False.

    python -c "from swinray import peak_rss; print(peak_rss.reset(), peak_rss.peak_mb())"
"""
from __future__ import annotations

import resource

_STATUS, _CLEAR_REFS = "/proc/self/status", "/proc/self/clear_refs"
_RESET_PEAK = "5"       # proc(5): "reset the peak resident set size ("high water mark") to the current value"


def reset() -> bool:
    """Start the peak anew from the current resident size; False when only the lifetime peak exists."""
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write(_RESET_PEAK)
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """The peak resident size in MiB since the last ``reset()`` (else since the process started)."""
    try:
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)     # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # kB on Linux
