"""Fate-sharing for the embedded local Ray: when the job's process dies, even by kill -9, its Ray
processes go too, at once.

Ray's own agents (DashboardAgent, RuntimeEnvAgent) notice a dead raylet within 2 s, then try to
report it to the GCS, which is dead too, and linger for a minute or more (measured with Ray
2.60: 60-90 s; its GCS reconnect setting did not shorten it). `watch()` starts a small sentinel
process that holds the read end of a pipe whose write end only the job holds: when the job
exits, however it exits, the kernel closes that end, the sentinel reads end-of-file and kills
the Ray processes it was given (and their children), each checked by its start time, so that a
reused process id is never hit. After a clean `ray.shutdown()` they are gone already.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import psutil  # a dependency of Ray


def watch(processes: list[psutil.Process]) -> subprocess.Popen:
    """Start the sentinel for `processes`; it lives as long as this process does."""
    sentinel = subprocess.Popen(
        [sys.executable, "-m", "batch.reaper"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not in the job's process group: a ^C must not stop it first
    )
    listing = "".join(f"{p.pid} {p.create_time()!r}\n" for p in processes)
    sentinel.stdin.write(listing.encode() + b"\n")  # a blank line ends the list
    sentinel.stdin.flush()
    return sentinel  # its stdin stays open, unread, until this process exits


def reap(listing: list[str]) -> None:
    """Kill each listed process still running with the same start time, children first."""
    doomed = []
    for line in listing:
        pid, started = line.split()
        try:
            p = psutil.Process(int(pid))
            if repr(p.create_time()) == started:
                doomed += [*p.children(recursive=True), p]
        except psutil.NoSuchProcess:
            continue
    for p in doomed:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _sentinel() -> None:
    listing = []
    for line in sys.stdin:
        if not line.strip():
            break
        listing.append(line)
    sys.stdin.read()  # blocks until the job's end of the pipe closes: the job is gone
    reap(listing)


if __name__ == "__main__":
    _sentinel()
