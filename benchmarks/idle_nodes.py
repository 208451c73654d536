"""What an idle federation costs in CPU: a SuperLink and N SuperNodes with their warm
ClientApp runners, no run submitted, at Flower's 3 s idle poll and at a shorter one.

    python benchmarks/idle_nodes.py [--nodes 10] [--polls 3.0 0.25] [--seconds 30] [--quick]

The processes are the ones ``federation=local`` starts (launcher/federation/local.py), in a
ProcessGroup of their own. After a settling time, the CPU time (user + system, /proc/<pid>/stat)
of every process of the group is read at the start and the end of a window; the figure is the
share of one core the whole idle federation used, per poll setting.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import parser

from flbackdoor.config import FederationConfig
from launcher.federation.local import runner_host_cmd, superlink_cmd, supernode_cmd
from launcher.federation.processes import ProcessGroup, descendants, free_port, port_open
from launcher.federation.submit import flwr_env, write_flwr_home

TICKS = os.sysconf("SC_CLK_TCK")
POLL_S = FederationConfig.superexec_poll_interval_s  # the runners' AcquireTask poll, as in a run


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            continue
    return total / TICKS


def idle_share(nodes: int, poll_s: float, settle_s: float, window_s: float) -> float:
    run_dir = Path(tempfile.mkdtemp(prefix="flbackdoor-idle-"))
    host = "127.0.0.1"
    fleet, http = free_port(host), free_port(host)
    env = flwr_env(write_flwr_home(run_dir, f"{host}:{http}"),
                   {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": str(POLL_S)})
    with ProcessGroup(run_dir / "logs", env) as procs:
        procs.start("superlink", superlink_cmd(host, fleet, http))
        procs.wait_for(lambda: port_open(host, fleet), 60, "SuperLink")
        runners = {}
        for pid in range(nodes):
            port = runners[f"clientapps-{pid}"] = free_port(host)
            procs.start(f"supernode-{pid}", supernode_cmd(host, fleet, port, pid, nodes, "benign",
                                                          True, poll_s))
        procs.start("clientapps", runner_host_cmd(runners, POLL_S, procs.log_dir,
                                                  run_dir / "ready"))
        time.sleep(settle_s)  # imports done, every node registered
        pids = [p.pid for p in procs.procs.values()]
        pids += descendants(pids)
        before, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(window_s)
        procs.check_alive()
        return (cpu_seconds(pids) - before) / (time.monotonic() - t0)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--polls", type=float, nargs="+", default=[3.0, 0.25])
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    nodes, window, settle = (2, 5.0, 15.0) if args.quick else (args.nodes, args.seconds, 40.0)
    shares = {p: idle_share(nodes, p, settle, window) for p in args.polls}
    for p, share in shares.items():
        print(f"{nodes} idle nodes, SuperNode idle poll {p} s: {100 * share:.1f}% of one core "
              f"({100 * share / nodes:.2f}% a node)")
    print("idle federation CPU: " + ", ".join(f"poll {p} s {100 * s:.1f}%"
                                              for p, s in shares.items()))


if __name__ == "__main__":
    main()
