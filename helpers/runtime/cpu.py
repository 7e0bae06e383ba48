"""CPU time and memory of a process (the runtime, or this one), from ``/proc`` on Linux."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (0.0 where ``/proc`` is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MB (0.0 where ``/proc`` is missing)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class CpuSpan:
    """CPU used by this process and by the runtime between ``start()`` and ``stop()``."""

    runtime_pid: int | None
    wall: float = 0.0
    client: float = 0.0
    runtime: float = 0.0

    def start(self) -> CpuSpan:
        self._t = (time.perf_counter(), time.process_time(), self._runtime_now())
        return self

    def stop(self) -> CpuSpan:
        wall, client, runtime = self._t
        self.wall = time.perf_counter() - wall
        self.client = time.process_time() - client
        self.runtime = self._runtime_now() - runtime
        return self

    def _runtime_now(self) -> float:
        return cpu_seconds(self.runtime_pid) if self.runtime_pid else 0.0

    def per_request_ms(self, requests: int) -> dict[str, float]:
        """Wall, client CPU and runtime CPU per request, in milliseconds."""
        return {
            "wall ms": round(1000 * self.wall / requests, 1),
            "client CPU ms": round(1000 * self.client / requests, 1),
            "runtime CPU ms": round(1000 * self.runtime / requests, 1),
        }
