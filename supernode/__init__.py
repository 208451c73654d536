"""What runs beside each SuperNode, never inside the Flower App: the warm ClientApp runner
(:mod:`supernode.clientapp_runner`), the host that forks one per SuperNode of a machine after
importing PyTorch once (:mod:`supernode.runner_host`), the slots that let one ClientApp a CPU
compute at a time (:mod:`supernode.compute_slots`), and a SuperNode entry point with a shorter
idle poll (:mod:`supernode.short_poll`).

Both lean on Flower 1.39's runtime internals (the SuperNode's Runtime API, its task protocol,
its module-level sleeps); :mod:`supernode.flower_version` checks the installed version once at
start, so a different Flower fails in one line instead of misbehaving.
"""
