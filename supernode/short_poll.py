"""``flbackdoor-supernode``: Flower's ``flower-supernode`` with its fixed waits shortened.

Flower 1.39's SuperNode sleeps a fixed 3 s after a pull that found no message and 0.5 s
between looks for its ClientApp's reply (``supernode/start_client_internal.py``; neither is
configurable). With warm ClientApps those sleeps are most of what is left of a round: a message
waits on average half the idle sleep before its node sees it, and the round waits for its
slowest node. A third wait: the node sees a message before the ServerApp has finished pushing
its objects, and ``pull_objects`` then backs off 1 s (doubling) before asking again.

This entry point shortens the idle sleep of that one module to ``--idle-poll-s``, starts the
object backoff at 20 ms (capped at ``--idle-poll-s``), and then runs Flower's own
``flower_supernode()`` with the remaining arguments, unchanged. The 0.5 s waits around a reply
stay Flower's: with them shortened too, one reply in about thirty failed to upload here and left
its SuperNode waiting forever for an object (Flower 1.39 deletes a sent reply's objects from
the node's store while the ClientApp may still be pushing one the SuperLink already held). The price is an idle node
pulling the SuperLink that much more often (docs/BENCHMARKS.md measures it).

    flbackdoor-supernode --idle-poll-s 0.25 --insecure --superlink 127.0.0.1:9092 ...
"""

from __future__ import annotations

import argparse
import sys
import time
import types

from supernode.flower_version import check as check_flower


IDLE_SLEEP_S = 3.0  # Flower's sleep after an empty pull; its other sleeps are 0.5 s


class CappedSleep(types.ModuleType):
    """Stands in for the ``time`` module inside one module: the idle sleep (3 s) waits
    ``cap`` seconds instead; every other sleep and everything else is ``time``'s."""

    def __init__(self, cap_s: float) -> None:
        super().__init__("time")
        self.cap_s = cap_s

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap_s) if seconds >= IDLE_SLEEP_S else seconds)

    def __getattr__(self, name: str):
        return getattr(time, name)


OBJECT_BACKOFF_S = 0.02


def install(cap_s: float) -> None:
    import functools

    import flwr.supernode.start_client_internal as loop

    loop.time = CappedSleep(cap_s)
    # No try count: at this cap Flower's 500 tries would give up on a large model within
    # minutes; its overall time limit (2 h) still bounds the wait.
    loop.pull_objects = functools.partial(loop.pull_objects, initial_backoff=OBJECT_BACKOFF_S,
                                          backoff_cap=cap_s, max_tries_per_object=None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flbackdoor-supernode", add_help=False)
    ap.add_argument("--idle-poll-s", type=float, default=3.0)
    args, flower_args = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not 0.01 <= args.idle_poll_s <= 3.0:
        raise SystemExit(f"flbackdoor-supernode: --idle-poll-s {args.idle_poll_s}: need 0.01..3 "
                         "seconds (3 is Flower's own)")
    check_flower("flbackdoor-supernode")
    install(args.idle_poll_s)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *flower_args]
    flower_supernode()


if __name__ == "__main__":
    main()
