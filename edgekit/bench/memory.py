"""Memory figures of one runner process, in MiB.

* ``idle``: resident memory after the runtime was imported, before the model was loaded: what
  the runtime costs with no model (the baseline).
* ``peak``: the highest resident memory from that point to the end of the timed runs. The
  runner resets the kernel's high-water mark (``/proc/self/clear_refs``) at the baseline, so a
  transient spike while importing the runtime does not count as the model's.
* ``increase``: ``peak - idle``, what loading and running this model added: the figure to
  compare between artifacts (an INT8 model's should be below its FP32 twin's).
* ``process_peak``: the whole process's high-water mark, import included; locally it is also
  taken from ``wait4()``'s ``ru_maxrss`` when the process ends.

Each artifact runs in its own fresh process, so one model's allocations never pollute
another's figures.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any

_KIB_PER_MIB = 1024.0


def wait_rusage(proc: subprocess.Popen, timeout: float) -> int | None:
    """Reap ``proc`` with ``wait4()`` (killing it after ``timeout`` seconds) and return its
    peak RSS in KiB; None where the platform has no wait4. Sets ``proc.returncode``."""
    if not hasattr(os, "wait4"):
        proc.wait(timeout)
        return None
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return int(usage.ru_maxrss)


def figures(ready: dict[str, Any], bye: dict[str, Any], wait4_kb: int | None = None) -> dict:
    """The memory block of a result from the runner's ready/bye events."""
    idle = ready.get("idle_rss_kb")
    peak = bye.get("peak_rss_kb")
    candidates = [v for v in (peak, ready.get("import_peak_rss_kb"), wait4_kb) if v]
    process_peak = max(candidates) if candidates else None
    reset = bool(ready.get("peak_reset"))
    return {
        "idle": _mib(idle),
        "peak": _mib(peak),
        "increase": _mib(peak - idle) if peak is not None and idle is not None else None,
        "process_peak": _mib(process_peak),
        "method": "VmHWM reset at the idle baseline" if reset else "VmHWM since process start",
    }


def _mib(kb: int | None) -> float | None:
    return None if kb is None else round(kb / _KIB_PER_MIB, 3)
