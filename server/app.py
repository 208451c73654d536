"""The ServerApp: identify the nodes, optionally start from a clean pretrained model, then run
the experiment's rounds with one message wave each, the post-training defense, the summary.

We drive the rounds ourselves instead of ``Strategy.start`` for three reasons: one wave per
round (evaluation is central, on the server, not a second wave to the clients), a short poll
loop instead of ``send_and_receive``'s 3 s sleeps, and a round that goes on with the replies
that came when a node is late or dead. Aggregation is the run's registered defense
(``defenses/``), fed the updates the round loop computed once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from attacker.poisoning import backdoor_test_set, poisoned_partitions
from attacker.tasks import build_task
from defenses.base import Defense, build_defense
from defenses.detection import totals
from flbackdoor.config import ExperimentConfig, from_run_config
from flbackdoor.data.cache import load_meta, prepare
from flbackdoor.evaluation import CentralEvaluator
from flbackdoor.models import build_model
from flbackdoor.results import ResultsWriter
from flbackdoor.roles import Roles, roles_for
from server import checkpoint
from server.nodes import Membership, identify
from server.rounds import RoundRunner, eta_s, progress_line
from server.trigger_report import TriggerReport

app = ServerApp()


@dataclass
class Run:
    """What the phases share: the experiment, where it writes, and the model as it goes."""

    cfg: ExperimentConfig
    out_dir: Path
    roles: Roles
    evaluator: CentralEvaluator
    defense: Defense
    arrays: ArrayRecord
    start_round: int = 0  # the round the (pre)trained model is at
    experiment_start: int = 0  # the round the experiment's first round follows
    done_round: int = 0  # the last round already on disk (resuming)
    initial: dict = field(default_factory=dict)
    pretrain: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    trigger_report: TriggerReport | None = None  # an adaptive trigger's, for the measurement


@app.main()
def main(grid: Grid, context: Context) -> None:
    started = time.monotonic()
    run = setup(context)
    members = identify_nodes(grid, run)
    runner = RoundRunner(grid, run.cfg, members, run.evaluator, run.trigger_report)
    if not resume(run):
        pretrain(run, runner)
    runner.experiment_start = run.experiment_start
    writer = ResultsWriter(run.out_dir, run.cfg,
                           keep_until=run.done_round if run.cfg.resume else None)
    last = train(run, runner, writer)
    if run.cfg.pruning.enabled:
        post_training_defense(run, runner, writer, last)
    summarize(run, writer, members, time.monotonic() - started)


def setup(context: Context) -> Run:
    """The experiment exactly as flbackdoor resolved it, its data (the cache exists already
    when flbackdoor launched us), roles, backdoor task (and its trigger report, where the
    attack adapts the trigger), defense and starting model."""
    cfg, out_dir = from_run_config(context.run_config)
    torch.manual_seed(cfg.seed)
    cache = prepare(cfg)
    roles = roles_for(cfg, cache)
    task = build_task(cfg, cache, roles)
    # ASR: the malicious nodes' backdoor task, else the outsider's poisoning trigger (if any).
    backdoor = task.test_set() if task else backdoor_test_set(cfg, cache)
    evaluator = CentralEvaluator(cfg, cache, backdoor)
    d = cfg.dataset
    state = build_model(cfg.model, d.channels, d.image_size, d.num_classes).state_dict()
    start_round = 0
    if cfg.checkpoint:  # a saved model; its round number carries on
        state, start_round = checkpoint.load(Path(cfg.checkpoint))
    run = Run(cfg, out_dir or Path.cwd() / "flbackdoor-results", roles, evaluator,
              build_defense(cfg), ArrayRecord(state), start_round)
    if task is not None and task.adaptive:  # the attackers re-optimise it: ask them each round
        run.trigger_report = TriggerReport(task, evaluator)
    run.initial = evaluator(state)
    log(INFO, "initial global model (round %d): %s", start_round, run.initial)
    return run


def identify_nodes(grid: Grid, run: Run) -> Membership:
    """Who is out there: partition id -> node (and its role)."""
    s = run.cfg.server
    started = time.monotonic()
    nodes = identify(grid, run.cfg.num_clients, s.identify_timeout_s, s.poll_interval_s)
    run.extra["identify_s"] = time.monotonic() - started  # the wave, waiting for nodes included
    if not nodes:
        raise RuntimeError("no node answered the identify query: nothing to train with")
    members = Membership(grid, nodes, run.cfg.num_clients, s.round_timeout_s, s.poll_interval_s,
                         sizes=partition_sizes(prepare(run.cfg)), ping_timeout=s.ping_timeout_s)
    if (reported := members.reported("malicious")) != sorted(run.roles.malicious):
        log(WARNING, "nodes report malicious partitions %s; the experiment assigns %s",
            reported, sorted(run.roles.malicious))
    return members


def partition_sizes(cache: Path) -> list[int]:
    """Every partition's number of training examples, from the server's own partition cache."""
    return [sum(counts) for counts in load_meta(cache)["label_counts"]]


def resume(run: Run) -> bool:
    """Continue this run's last checkpoint (model, round, defense state): the sampling, the
    attacker schedule and every client's randomness are functions of (seed, round), so nothing
    else needs saving. False when there is nothing to resume."""
    path = run.out_dir / "checkpoint.pt"
    if not run.cfg.resume:
        return False
    if not path.exists():
        log(WARNING, "resume=%s has no checkpoint.pt yet: starting over", run.out_dir)
        return False
    state, run.done_round = checkpoint.load(path)
    saved = checkpoint.load_extra(path)
    run.defense.load_state_dict(saved.get("defense", {}))
    run.arrays, run.experiment_start = ArrayRecord(state), int(saved["experiment_start"])
    run.pretrain = saved.get("pretrain", {})
    log(INFO, "resuming %s after round %d", run.out_dir, run.done_round)
    return True


def pretrain(run: Run, runner: RoundRunner) -> None:
    """Clean rounds before the experiment, trained once per clean setting and reused from
    data.cache_dir."""
    cfg = run.cfg
    if cfg.pretrain_rounds:
        path = checkpoint.pretrained_path(cfg)
        if path.exists():
            state, run.start_round = checkpoint.load(path)
            run.arrays = ArrayRecord(state)
            run.pretrain = {"reused": True}
        else:
            clean = build_defense(cfg, defended=False)
            last = run.start_round + cfg.pretrain_rounds
            for rnd in range(run.start_round + 1, last + 1):
                run.arrays, row = runner.run(rnd, run.arrays, clean, phase="pretrain",
                                             attacks_on=False)
                log(INFO, progress_line(row, last))
            run.start_round = last
            checkpoint.save(path, run.arrays.to_torch_state_dict(), run.start_round)
            run.pretrain = {"reused": False}
        run.pretrain.update(rounds=cfg.pretrain_rounds, checkpoint=str(path),
                            **run.evaluator(run.arrays.to_torch_state_dict()))
        log(INFO, "pretrained clean model: %s", run.pretrain)
    run.experiment_start = run.done_round = run.start_round


def train(run: Run, runner: RoundRunner, writer: ResultsWriter) -> int:
    """The experiment: rounds with attackers and the defense; a metrics row and (every
    server.checkpoint_every rounds) a checkpoint each. Returns the last round."""
    cfg = run.cfg
    last = run.experiment_start + cfg.num_rounds
    first, started = run.done_round + 1, time.monotonic()
    for rnd in range(first, last + 1):
        run.arrays, row = runner.run(rnd, run.arrays, run.defense)
        writer.write_round(row)
        log(INFO, progress_line(row, last, eta_s(time.monotonic() - started, rnd - first + 1,
                                                 last - rnd)))
        if (rnd - run.experiment_start) % cfg.server.checkpoint_every == 0 or rnd == last:
            checkpoint.save(run.out_dir / "checkpoint.pt", run.arrays.to_torch_state_dict(), rnd,
                            defense=run.defense.state_dict(),
                            experiment_start=run.experiment_start, pretrain=run.pretrain)
    return last


def post_training_defense(run: Run, runner: RoundRunner, writer: ResultsWriter,
                          last: int) -> None:
    """Wu et al.'s defense after training: pruning rounds, extreme weights, fine-tuning. The
    defended model (its channel mask included) goes to pruned.pt; checkpoint.pt stays the
    trained model, the starting point for another defense run."""
    from server.pruning import PruningDefense, phase_block

    trained = [r for r in writer.rows if r.get("phase") == "train"]
    train_block = phase_block(trained[-1] if trained else {"round": last, **run.initial})
    run.arrays, phases, saved = PruningDefense(run.cfg, runner, run.evaluator, prepare(run.cfg),
                                               writer).run(run.arrays, last, run.defense)
    run.extra["phases"] = {"train": train_block, **phases}
    checkpoint.save(run.out_dir / "pruned.pt", run.arrays.to_torch_state_dict(),
                    last + run.cfg.pruning.finetune_rounds, pruning=saved)


def summarize(run: Run, writer: ResultsWriter, members: Membership, wall_time_s: float) -> None:
    """summary.json: the final row, the roles, and the defense's detection totals over the
    attack rounds. ``malicious`` is who attacked: the partitions whose nodes said so (a compose
    file or hand-started nodes may differ from the experiment's seeded assignment, which is
    then kept as ``assigned_malicious``)."""
    attack_rounds = [r for r in writer.rows if r.get("phase") == "train" and "detector" in r
                     and r.get("num_malicious", 0) > 0]
    if attack_rounds:
        run.extra["detection"] = (
            totals([{k: r[f"detection_{k}"] for k in ("tp", "fp", "fn", "tn")}
                    for r in attack_rounds]) if run.defense.detects
            else {"detector": False, "rounds": len(attack_rounds)})
    malicious = members.reported("malicious")
    roles = {"malicious": malicious, "targets": list(run.roles.targets),
             "poisoned": list(poisoned_partitions(run.cfg, run.roles.malicious))}
    if malicious != sorted(run.roles.malicious):
        roles["assigned_malicious"] = sorted(run.roles.malicious)
    summary = writer.finish(wall_time_s, initial=run.initial, pretrain=run.pretrain,
                            num_nodes=len(members.nodes), roles=roles, **run.extra)
    log(INFO, "done: final %s after %d rounds in %.1fs (results in %s)",
        {k: v for k, v in summary["final"].items() if k.endswith("accuracy")},
        summary["rounds"], summary["wall_time_s"], run.out_dir)
