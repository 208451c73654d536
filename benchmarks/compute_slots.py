"""What ten single-threaded trainings at once cost on this machine, against the same ten
through the runner host's compute slots (``supernode/compute_slots.py``).

Each task trains the experiment's model (README command 1's: the MNIST CNN, batch 32) for one
pass over 6,000 images in a process forked after PyTorch was imported, as the runner host forks
its runners: no tensor exists before the fork (each task builds its model and data), as none
does in the runner host. Reported: each task's CPU seconds (mean) and
the wall time of all of them, for every task at once and through one slot per CPU. The figure
printed last is the CPU a task needs at once over the CPU it needs through the slots.

    python benchmarks/compute_slots.py [--tasks 10] [--quick]
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path

import torch

from common import experiment, parser
from supernode.compute_slots import ComputeSlots, default_count


def _task(model_cfg, n, batch, slots_dir, slot_count, out) -> None:
    from flbackdoor.models import build_model

    torch.set_num_threads(1)  # as client.num_threads: one thread a ClientApp
    slots = ComputeSlots(Path(slots_dir), slot_count, poll_s=0.02) if slots_dir else None
    if slots:
        slots.acquire()
    cpu = time.process_time()
    torch.manual_seed(0)
    model = build_model(model_cfg, 1, 28, 10)
    images, labels = torch.randn(n, 1, 28, 28), torch.randint(0, 10, (n,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for i in range(0, len(images), batch):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images[i:i + batch]), labels[i:i + batch]).backward()
        opt.step()
    out.put(time.process_time() - cpu)
    if slots:
        slots.release()


def run(tasks: int, slot_count: int, model_cfg, n: int, batch: int) -> tuple[float, float]:
    """Mean CPU seconds a task and the wall seconds of all ``tasks`` (slot_count 0: no slots)."""
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        procs = [ctx.Process(target=_task, args=(model_cfg, n, batch, folder if slot_count else "",
                                                 slot_count, out))
                 for _ in range(tasks)]
        started = time.monotonic()
        for p in procs:
            p.start()
        cpu = [out.get() for _ in procs]
        for p in procs:
            p.join()
        return sum(cpu) / tasks, time.monotonic() - started


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--tasks", type=int, default=10)
    args = ap.parse_args()
    import flbackdoor.models  # noqa: F401  imported before the fork, as the runner host does

    cfg = experiment(["experiment=demo", *args.overrides])
    n = 1000 if args.quick else 6000
    slots = default_count()
    at_once = run(args.tasks, 0, cfg.model, n, cfg.client.batch_size)
    gated = run(args.tasks, slots, cfg.model, n, cfg.client.batch_size)
    print(f"{args.tasks} tasks at once: {at_once[0]:.2f} CPU s a task, {at_once[1]:.1f} s wall")
    print(f"{args.tasks} tasks through {slots} slots: {gated[0]:.2f} CPU s a task, "
          f"{gated[1]:.1f} s wall")
    print(f"CPU a task, all at once / through the slots: {at_once[0] / gated[0]:.2f}")


if __name__ == "__main__":
    main()
