"""One PDF child process seen from the server: start it, talk to it over its pipes, kill it,
reap it. The scheduling (spare, slots, deadlines) is ``gateway.files.pdf``'s.

The child is started with ``subprocess`` (fork+exec of ``sys.executable``: the server has torch
and many threads loaded and must not be ``fork``ed; ``multiprocessing``'s spawn and forkserver
would re-import the server's ``__main__`` in the child).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

from gateway.files.pdf_wire import Broken

__all__ = ("exchange", "kill", "reap", "spawn")

T = TypeVar("T")

_ROOT = str(Path(__file__).resolve().parents[2])


def spawn(boot: str) -> subprocess.Popen[bytes]:
    """A new child running the Python code ``boot``, with the gateway's root as ``argv[1]``."""
    # ``-P``: no current directory on sys.path (only the gateway's root); stderr is dropped
    # (PDFium's warnings are noise and could be very long), failures are reported on stdout.
    return subprocess.Popen(
        [sys.executable, "-P", "-c", boot, _ROOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()  # a no-op once the exchange thread has reaped it


def reap(proc: subprocess.Popen[bytes]) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    proc.wait()


def exchange(
    proc: subprocess.Popen[bytes], request: tuple[bytes, bytes], read: Callable[[IO[bytes]], T]
) -> T:
    """Send the request and read the reply (a worker thread; blocking). The caller enforces
    the deadline by killing the child, which ends any read or write here."""
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        try:
            for part in request:
                proc.stdin.write(part)
            proc.stdin.close()
        except OSError:
            pass  # the child died before reading it all; the read below says so
        try:
            return read(proc.stdout)
        except (OSError, ValueError, RecursionError) as exc:  # bad JSON, text, sizes, pipe
            raise Broken from exc
    finally:
        reap(proc)
