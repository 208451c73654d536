"""The trigger report: where the attack re-optimises its trigger every round (A3FL; a backdoor
task with ``adaptive = True``), the server measures the backdoor with the trigger the attackers
actually trained with, not the one they started from.

The testbed plays the measurement side here, as it plays the colluding attackers' side channel
in ``server/rounds.py``: after every round in which attackers trained, the server asks one live
attacker of the round (the lowest partition) for its trigger (``query.trigger_report``; the
attack keeps it in its node's ``context.state``). The trigger goes to the central evaluator's
backdoor test set and nowhere else: no defense sees it.

A reply is checked as strictly as a train reply (``server/validation.py``): exactly one record,
``trigger``, an ArrayRecord holding exactly the task's arrays (``report_spec``); each array's
declared and decoded shape and dtype are the spec's, its bytes no more than the array needs,
every value finite; then the task's budget (``check_report``; A3FL's patch: zero off its mask,
in [0, 1], within ``trigger_eps`` of the starting patch). A missing, failed or rejected reply is
logged with its reason and the previous trigger kept: a malicious node must never crash the
server. A future trigger generator (IBA) reports its weights the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.logger import log

from attacker.tasks import BackdoorTask
from flbackdoor import protocol as P
from flbackdoor.evaluation import CentralEvaluator
from server.messaging import Wave

# An .npy header takes a few hundred bytes; beyond the array's own size plus this, the bytes
# are padding a hostile node sent.
NPY_HEADER_BYTES = 4096


def trigger_query(node_id: int, rnd: int) -> Message:
    return Message(RecordDict({P.CONFIG: ConfigRecord({P.SERVER_ROUND: rnd})}),
                   dst_node_id=node_id, message_type=P.TRIGGER_REPORT)


def check_trigger_reply(content: RecordDict, task: BackdoorTask
                        ) -> tuple[str | None, dict[str, np.ndarray]]:
    """(None, the trigger's arrays) when the reply may be adopted, else (why not, {})."""
    try:
        return _check(content, task)
    except Exception as err:  # a reply no check foresaw must still be a rejection, not a crash
        return f"unreadable reply ({type(err).__name__}: {str(err)[:120]})", {}


def _check(content: RecordDict, task: BackdoorTask) -> tuple[str | None, dict[str, np.ndarray]]:
    names = sorted(content.keys())
    if names != [P.TRIGGER]:
        return f"records {names} are not exactly [{P.TRIGGER!r}]", {}
    record = content[P.TRIGGER]
    if not isinstance(record, ArrayRecord):
        return f"record {P.TRIGGER!r} is a {type(record).__name__}, not an ArrayRecord", {}
    spec = task.report_spec()
    if sorted(record.keys()) != sorted(spec):
        return f"arrays {sorted(record.keys())} are not exactly {sorted(spec)}", {}
    arrays = {}
    for name, (shape, dtype) in spec.items():
        array = record[name]
        if tuple(array.shape) != tuple(shape) or array.dtype != dtype:
            return (f"{name}: {array.dtype} {tuple(array.shape)} is not {dtype} "
                    f"{tuple(shape)}"), {}
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(array.data) > size + NPY_HEADER_BYTES:
            return f"{name}: {len(array.data)} bytes for a {dtype} {tuple(shape)} array", {}
        try:
            values = array.numpy()
        except Exception as err:  # bytes that do not decode as an array
            return f"{name}: undecodable array ({type(err).__name__})", {}
        if values.shape != tuple(shape) or values.dtype != np.dtype(dtype):
            return (f"{name}: bytes decode to {values.dtype} {values.shape}, declared "
                    f"{array.dtype} {tuple(array.shape)}"), {}
        if not np.isfinite(values).all():
            return f"{name}: non-finite values", {}
        arrays[name] = values
    reason = task.check_report(arrays)
    if reason is not None:
        return f"outside the trigger's budget: {reason}", {}
    return None, arrays


class TriggerReport:
    """The measurement's copy of an adaptive trigger: ``task`` holds it, ``evaluator`` measures
    the backdoor with it."""

    def __init__(self, task: BackdoorTask, evaluator: CentralEvaluator) -> None:
        self.task, self.evaluator = task, evaluator

    def refresh(self, send: Callable[[list[Message]], Wave], rnd: int, partition: int,
                node_id: int) -> dict:
        """Ask ``partition``'s node for its trigger; adopt it if it passes. Returns the row's
        ``trigger_report`` entry."""
        wave = send([trigger_query(node_id, rnd)])
        if wave.ok:
            reason, arrays = check_trigger_reply(wave.ok[0].content, self.task)
        else:
            reason, arrays = (f"error reply: {wave.errors[node_id]}" if node_id in wave.errors
                              else "no reply"), {}
        if reason is None:
            self.task.adopt(arrays)
            self.evaluator.set_backdoor(self.task.test_set())
            log(INFO, "round %d: backdoor measured with partition %d's reported trigger", rnd,
                partition)
            return {"partition": partition, "accepted": True}
        log(WARNING, "round %d: trigger report of partition %d rejected: %s; the previous "
            "trigger is kept", rnd, partition, reason)
        return {"partition": partition, "accepted": False, "reason": reason}
