"""How many CPUs this process may really use (affinity and cgroup quota, not the host's count).

Lambda gives fractional vCPUs below 1,769 MB and containers cap CPU with a cgroup
quota; ``os.cpu_count()`` reports the host and oversubscribes onnxruntime.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota_cpus() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            if quota != "max":
                return int(quota) / int(period)
            return None
        quota_f, period_f = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if quota_f.is_file() and period_f.is_file():
            v1_quota = int(quota_f.read_text())
            if v1_quota > 0:
                return v1_quota / int(period_f.read_text())
    except (OSError, ValueError):
        pass
    return None


def available_cpus() -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota_cpus()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)
