"""CPU-load discipline for the benchmarks.

Policy on load: the development machine has 2 cores shared with other jobs, so every figure is
recorded with the CPU share other processes took during it (from /proc/stat minus our own
processes' CPU time) and the 1-minute load average. ``wait_for_quiet`` waits (bounded) for the
machine to be idle before a measurement starts; when it is not, the measurement runs anyway and
the contention is reported with it, never hidden.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ("MARK", "LoadSampler", "busy_pct", "load1", "run_child", "wait_for_quiet")

MARK = "RESULT-JSON:"
"""Prefix of the line a benchmark's child process prints its JSON result on (its last one)."""


def load1() -> float:
    return os.getloadavg()[0]


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, all cores, in clock ticks."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def _process_jiffies(pid: int) -> int:
    """utime + stime of a live process (all its threads), in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # stat fields 14 and 15


def _own_jiffies(pids: Sequence[int]) -> int:
    """CPU ticks of ``pids``, this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    return sum(_process_jiffies(p) for p in pids) + round(seconds * os.sysconf("SC_CLK_TCK"))


def busy_pct(window_s: float = 2.0) -> float:
    """Share of the machine's CPU capacity in use over ``window_s`` (all processes), percent."""
    b0, t0 = _machine_jiffies()
    time.sleep(window_s)
    b1, t1 = _machine_jiffies()
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


def wait_for_quiet(
    max_busy_pct: float = 15.0, max_wait_s: float = 60.0, quiet: bool = False
) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until the machine is idle but for ``max_busy_pct`` of its
    CPU capacity, measured over 2-second windows while our own servers are idle. The 1-minute
    load average is reported too but not waited on: it still counts our previous measurement
    for a minute after it ended."""
    deadline = time.monotonic() + max_wait_s
    busy = busy_pct()
    while busy > max_busy_pct and time.monotonic() < deadline:
        busy = busy_pct()
    if busy > max_busy_pct and not quiet:
        print(
            f"  (other jobs use {busy:.0f}% of the CPU after {max_wait_s:.0f}s; measuring anyway)"
        )
    return {"busy_pct_before": round(busy, 1), "load1_before": round(load1(), 2)}


class LoadSampler:
    """While a measurement runs: the 1-minute load average once a second, and at the end the
    share of the machine's CPU capacity that other processes took (everything busy minus the
    ``pids`` we measure, this process and its children), in percent."""

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = list(pids)
        self.samples: list[float] = []
        self.others_pct = 0.0
        self.ours_pct = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.samples.append(load1())

    def __enter__(self) -> LoadSampler:
        self.samples.append(load1())
        self._start = (*_machine_jiffies(), _own_jiffies(self.pids))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total, ours = (*_machine_jiffies(), _own_jiffies(self.pids))
        self._stop.set()
        self._thread.join()
        self.samples.append(load1())
        span = max(1, total - self._start[1])
        ours_delta = ours - self._start[2]
        self.ours_pct = 100.0 * ours_delta / span
        self.others_pct = max(0.0, 100.0 * (busy - self._start[0] - ours_delta) / span)

    def summary(self) -> dict[str, float]:
        return {
            "load_start": round(self.samples[0], 2),
            "load_mean": round(statistics.fmean(self.samples), 2),
            "load_max": round(max(self.samples), 2),
            "others_cpu_pct": round(self.others_pct, 1),
            "ours_cpu_pct": round(self.ours_pct, 1),
        }


def run_child(
    name: str, argv: Sequence[str], args: argparse.Namespace, cwd: Path
) -> dict[str, Any]:
    """One variant of a study in a child process (a clean allocator and thread pool, a hard time
    bound, a crash ends only the variant), ``argv`` printing ``MARK`` + its JSON result; again,
    up to ``args.retries`` times, when other jobs took more than ``args.max_others`` percent of
    the CPU during it. The least disturbed run is kept, with its contention figures. Also reads
    ``args.max_busy``, ``args.max_wait`` and ``args.timeout`` (seconds)."""
    best: dict[str, Any] | None = None
    for attempt in range(1 + args.retries):
        quiet = wait_for_quiet(args.max_busy, args.max_wait)
        started = time.perf_counter()
        with LoadSampler() as sampler:
            try:
                proc = subprocess.run(
                    list(argv), capture_output=True, text=True, timeout=args.timeout, cwd=cwd
                )
            except subprocess.TimeoutExpired:
                proc = None
        contention = {**quiet, **sampler.summary(), "attempt": attempt + 1}
        if proc is None:
            return {
                "variant": name,
                "error": f"did not finish in {args.timeout:.0f} s",
                **contention,
            }
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr or proc.stdout)[-2000:]
            return {"variant": name, "error": f"exit {proc.returncode}: {tail}", **contention}
        result = json.loads(lines[-1][len(MARK) :])
        result.update(wall_s=time.perf_counter() - started, contention=contention)
        if best is None or contention["others_cpu_pct"] < best["contention"]["others_cpu_pct"]:
            best = result
        if contention["others_cpu_pct"] <= args.max_others:
            break
        if attempt < args.retries:
            print(f"  {name}: other jobs took {contention['others_cpu_pct']}% of the CPU; again")
    assert best is not None
    return best
