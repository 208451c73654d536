"""The ServerApp: identify the nodes, optionally start from a clean pretrained model, then run
the experiment's rounds with one message wave each.

We drive the rounds ourselves instead of ``Strategy.start`` for three reasons: one wave per
round (evaluation is central, on the server, not a second wave to the clients), a short poll
loop instead of ``send_and_receive``'s 3 s sleeps, and a round that goes on with the replies
that came when a node is late or dead. The strategy's own hooks (``configure_train``,
``aggregate_train``) still send and aggregate.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from attacker.poisoning import backdoor_test_set, poisoned_partitions
from attacker.roles import roles_for
from attacker.tasks import build_task
from flbackdoor.config import from_run_config
from flbackdoor.data.cache import prepare
from flbackdoor.models import build_model
from server import checkpoint
from server.evaluation import CentralEvaluator
from server.registry import identify
from server.results import ResultsWriter
from server.rounds import RoundRunner, progress_line
from server.strategies import build_strategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.monotonic()
    # 1. The experiment, exactly as flbackdoor resolved it.
    cfg, out_dir = from_run_config(context.run_config)
    out_dir = out_dir or Path.cwd() / "flbackdoor-results"
    torch.manual_seed(cfg.seed)

    # 2. Data (the cache exists already when flbackdoor launched us), roles, backdoor task.
    cache = prepare(cfg)
    roles = roles_for(cfg, cache)
    task = build_task(cfg, cache, roles)
    # ASR: the malicious nodes' backdoor task, else the outsider's poisoning trigger (if any).
    backdoor = task.test_set() if task else backdoor_test_set(cfg, cache)
    evaluator = CentralEvaluator(cfg, cache, backdoor)

    # 3. The starting model: fresh, or a saved checkpoint (its round number carries on).
    d = cfg.dataset
    state = build_model(cfg.model, d.channels, d.image_size, d.num_classes).state_dict()
    start_round = 0
    if cfg.checkpoint:
        state, start_round = checkpoint.load(Path(cfg.checkpoint))
    arrays = ArrayRecord(state)
    initial = evaluator(state)
    log(INFO, "initial global model (round %d): %s", start_round, initial)

    # 4. Who is out there: partition id -> node (and its role).
    s = cfg.server
    nodes = identify(grid, cfg.num_clients, s.identify_timeout_s, s.poll_interval_s)
    if not nodes:
        raise RuntimeError("no node answered the identify query: nothing to train with")
    reported = tuple(sorted(p for p, n in nodes.items() if n.role == "malicious"))
    if reported != tuple(sorted(roles.malicious)):
        log(WARNING, "nodes report malicious partitions %s; the experiment assigns %s",
            list(reported), sorted(roles.malicious))
    noise = torch.Generator().manual_seed(cfg.seed)  # weak DP's noise: its state is saved
    clip = cfg.defense.norm_bound if cfg.defense.name in (
        "norm_clipping", "weak_dp", "flower_dp_fixed") else None
    runner = RoundRunner(grid, cfg, nodes, evaluator, clip)

    # 5. Resuming: this run's last checkpoint (model, round, RNG state); the sampling, the
    #    attacker schedule and every client's randomness are functions of (seed, round), so
    #    nothing else needs saving.
    resume_from = out_dir / "checkpoint.pt" if cfg.resume else None
    pretrain: dict = {}
    if resume_from is not None and resume_from.exists():
        state, done_round = checkpoint.load(resume_from)
        saved = checkpoint.load_extra(resume_from)
        noise.set_state(saved["noise_rng"])
        arrays, experiment_start = ArrayRecord(state), int(saved["experiment_start"])
        pretrain = saved.get("pretrain", {})
        log(INFO, "resuming %s after round %d", out_dir, done_round)
    else:
        if resume_from is not None:
            log(WARNING, "resume=%s has no checkpoint.pt yet: starting over", out_dir)
        # 6. Clean pretraining, trained once per clean setting and reused from data.cache_dir.
        if cfg.pretrain_rounds:
            path = checkpoint.pretrained_path(cfg)
            if path.exists():
                state, start_round = checkpoint.load(path)
                arrays = ArrayRecord(state)
                pretrain = {"reused": True}
            else:
                clean = build_strategy(cfg, noise, defended=False)
                last = start_round + cfg.pretrain_rounds
                for rnd in range(start_round + 1, last + 1):
                    arrays, row = runner.run(rnd, arrays, clean, phase="pretrain",
                                             attacks_on=False)
                    log(INFO, progress_line(row, last))
                start_round = last
                checkpoint.save(path, arrays.to_torch_state_dict(), start_round)
                pretrain = {"reused": False}
            pretrain.update(rounds=cfg.pretrain_rounds, checkpoint=str(path),
                            **evaluator(arrays.to_torch_state_dict()))
            log(INFO, "pretrained clean model: %s", pretrain)
        experiment_start = done_round = start_round

    # 7. The experiment: rounds with attackers and defenses; a metrics row and (every
    #    server.checkpoint_every rounds) a checkpoint each.
    strategy = build_strategy(cfg, noise)
    writer = ResultsWriter(out_dir, cfg, keep_until=done_round if cfg.resume else None)
    last = experiment_start + cfg.num_rounds
    for rnd in range(done_round + 1, last + 1):
        arrays, row = runner.run(rnd, arrays, strategy)
        writer.write_round(row)
        log(INFO, progress_line(row, last))
        if (rnd - experiment_start) % s.checkpoint_every == 0 or rnd == last:
            checkpoint.save(out_dir / "checkpoint.pt", arrays.to_torch_state_dict(), rnd,
                            noise_rng=noise.get_state(), experiment_start=experiment_start,
                            pretrain=pretrain)

    # 8. Wu et al.'s defense after training: pruning rounds, extreme weights, fine-tuning.
    #    The defended model (its channel mask included) goes to pruned.pt; checkpoint.pt stays
    #    the trained model, the starting point for another defense run.
    extra: dict = {}
    if cfg.pruning.name != "none":
        from server.pruning import PruningDefense, phase_block

        trained = [r for r in writer.rows if r.get("phase") == "train"]
        train_block = phase_block(trained[-1] if trained else {"round": last, **initial})
        arrays, phases, saved = PruningDefense(cfg, runner, evaluator, cache,
                                               writer).run(arrays, last, strategy)
        extra["phases"] = {"train": train_block, **phases}
        checkpoint.save(out_dir / "pruned.pt", arrays.to_torch_state_dict(),
                        last + cfg.pruning.finetune_rounds, pruning=saved)

    summary = writer.finish(time.monotonic() - started, initial=initial, pretrain=pretrain,
                            num_nodes=len(nodes), roles={"malicious": list(roles.malicious),
                                                         "targets": list(roles.targets),
                                                         "poisoned": list(poisoned_partitions(
                                                             cfg, roles.malicious))},
                            **extra)
    log(INFO, "done: final %s after %d rounds in %.1fs (results in %s)",
        {k: v for k, v in summary["final"].items() if k.endswith("accuracy")},
        summary["rounds"], summary["wall_time_s"], out_dir)
