"""Stop a launcher's federation when the launcher dies without doing it (SIGKILL, the OOM killer).

:class:`launcher.federation.processes.ProcessGroup` starts this file (stdlib only, run by path)
in a session of its own, with the read end of a pipe as its stdin; only the launcher holds the
write end. End of file on stdin means the launcher is gone, or has stopped its processes and
closed the pipe (having written ``STOPPED`` first, so a straggler swept up then is not reported as
a death). Then every live process whose environment carries ``FLBACKDOOR_FEDERATION=
<token>`` (every process the group started, and everything those started: Flower's SuperExec,
ServerApp, ClientApps, Ray's workers, wherever they were reparented) gets SIGTERM, and SIGKILL
after ``grace`` seconds.

The processes the group starts also get a parent-death signal (``PR_SET_PDEATHSIG``), and
Flower's own children watch their parent's pid: this is the net under both.

Usage: ``python reaper.py TOKEN [GRACE_S]``
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

MARKER_VAR = "FLBACKDOOR_FEDERATION"
STOPPED = b"stopped"  # the launcher's word that it stopped its federation itself


def marked(token: str) -> list[int]:
    """Live (non-zombie) processes whose environment holds ``MARKER_VAR=token``."""
    marker = f"{MARKER_VAR}={token}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
        except (OSError, IndexError):  # gone, or not ours to read
            continue
        if int(proc.name) != os.getpid():
            found.append(int(proc.name))
    return found


def reap(token: str, grace: float) -> int:
    """SIGTERM every marked process, SIGKILL what is left after ``grace``; how many there were."""
    first = marked(token)
    if not first:
        return 0
    for pid in first:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while (left := marked(token)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for _ in range(20):  # a dying parent may still start a child: until none is left
        if not (left := marked(token)):
            break
        for pid in left:
            _kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    return len(first)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> None:
    token, grace = argv[0], float(argv[1]) if len(argv) > 1 else 5.0
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's Ctrl-C or hangup is the launcher's
        signal.signal(sig, signal.SIG_IGN)
    said = b""
    while chunk := sys.stdin.buffer.read(4096):  # until EOF: the launcher's stop or death
        said += chunk
    n = reap(token, grace)
    if n and STOPPED not in said:
        print(f"reaper: the launcher died; stopped {n} process(es) of its federation",
              file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
