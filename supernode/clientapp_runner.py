"""A warm ClientApp runner: one long-lived process beside a SuperNode started with
``--isolation process``, playing Flower's SuperExec for ClientApp tasks.

Flower 1.39 runs every message a SuperNode takes as a new ``flwr-clientapp`` process
(``supercore/superexec/executor/subprocess_executor.py`` starts it, and
``supernode/runtime/run_clientapp.py`` is single-shot: pull the input, install the FAB, load the
app, run it, push the reply, exit), so every message imports Python, Flower and PyTorch again:
seconds a message, most of a round's overhead in a deployment. This process imports them once
and then loops over the SuperNode's Runtime API:

1. ``AcquireTask`` (the call ``flower-superexec`` makes) for a ``flwr-clientapp`` task and its
   token;
2. with that token, the task's input (message, context, run, FAB): Flower's
   ``pull_task_input`` calls, with a shorter backoff on the message's objects;
3. the ClientApp, loaded once per FAB hash (a new hash drops the old app's modules first, so
   the new code runs, not the cached one);
4. ``push_message`` (the reply) and ``push_task_output`` (the context and the task's status).

It follows ``run_clientapp.py`` for the protocol and the error path: an exception in the app
becomes an error reply and a FAILED task, never the runner's death. Unlike Flower's helpers it
never raises SIGINT at itself (Flower's heartbeat sends one when a token is gone, and its HTTP
retry policy on a 401: both would end a process meant to outlive the task). A running task
sends heartbeats, so a long handler keeps its token (Flower expires it after 2 x 30 s without).

If the runner dies, the SuperNode's task waits for someone to acquire it (a pending task never
expires): whoever started it starts it again (a local federation: the runner host of
:mod:`supernode.runner_host` forks it anew, and the launcher restarts the host; a container: the
engine's restart policy; on separate machines, a process manager). A task the dead runner was
running expires after 60 s and the SuperNode replies with Flower's "ClientApp stopped
responding" error.

Keep the Runtime API on loopback (``flower-supernode --host`` default): ``AcquireTask`` is not
authenticated unless a SuperExec auth secret is set.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from supernode.compute_slots import ComputeSlots, default_count
from supernode.flower_version import check as check_flower
from supernode.runner_host import Node, RunnerHost

log = logging.getLogger("flbackdoor.clientapp_runner")

CLIENT_APP_TASK = "flwr-clientapp"
HEARTBEAT_S = 20.0  # Flower's own cadence: (30 s interval - 5 s call timeout) x 0.8
# The app's heavy imports, before the first task. The app's own modules (client.app) come from
# the installed project here; the first FAB drops them and loads its own copy, while the
# third-party modules they pulled in stay imported. The defenses' libraries are imported by the
# config's registries on a node's first message (scikit-learn and pandas: about 0.9 s of CPU).
DEFAULT_PRELOAD = "torch,torchvision,numpy,client.app,sklearn.cluster,scipy.stats,scipy.fft"


def _retry_transport_errors():
    """Retry only a connection that failed (the SuperNode starting or restarting); an HTTP
    status error is an answer and is raised to the caller."""
    import httpx
    from flwr.supercore.retry import RetryInvoker, exponential

    return RetryInvoker(lambda: exponential(base_delay=0.2, max_delay=2), httpx.TransportError,
                        max_tries=5, max_time=10.0)


def runtime_client(address: str, component: str, token: str = "", root_certificates: str = ""):
    """A Runtime API client for ``address``; with ``token``, a task's."""
    from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor,
                                             RuntimeVersionHttpInterceptor)
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=not root_certificates,
        root_certificates=root_certificates or None, interceptors=interceptors,
        retry_invoker=_retry_transport_errors())


def app_modules(app_dir: Path) -> set[str]:
    """The top-level module names an installed Flower App provides (its packages and modules)."""
    names = {p.name for p in app_dir.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    return names | {p.stem for p in app_dir.glob("*.py")}


def forget_modules(names: set[str]) -> int:
    """Drop ``names`` and their submodules from ``sys.modules``: the next import loads them
    from disk (Flower's ``load_app`` would otherwise hand back the cached module)."""
    gone = [m for m in sys.modules if m.split(".", 1)[0] in names]
    for m in gone:
        del sys.modules[m]
    importlib.invalidate_caches()
    return len(gone)


@dataclass
class LoadedApp:
    fab_hash: str
    app_dir: Path
    app: object  # flwr.clientapp.ClientApp


class AppCache:
    """The ClientApp of the last FAB seen, loaded once; a FAB with another hash replaces it."""

    def __init__(self) -> None:
        self.loaded: LoadedApp | None = None

    def get(self, run, fab):
        from flwr.cli.install import install_from_fab
        from flwr.clientapp.utils import get_load_client_app_fn
        from flwr.common.config import get_project_dir

        if self.loaded is not None and self.loaded.fab_hash == fab.hash_str:
            return self.loaded.app
        install_from_fab(fab.content, skip_prompt=True)
        app_dir = Path(get_project_dir(run.fab_id, run.fab_version, fab.hash_str))
        names = app_modules(app_dir)
        if self.loaded is not None:
            names |= app_modules(self.loaded.app_dir)
            old = str(self.loaded.app_dir.absolute())
            sys.path[:] = [p for p in sys.path if p != old]
            log.info("new FAB %s: reloading the app's modules", fab.hash_str[:12])
        forget_modules(names)
        app = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)(
            run.fab_id, run.fab_version, fab.hash_str)
        self.loaded = LoadedApp(fab.hash_str, app_dir, app)
        return app


class TaskHeartbeat:
    """Keeps a running task's token alive; a failed or refused heartbeat is logged, never
    signalled (the task is lost then, the runner is not)."""

    def __init__(self, client, interval_s: float = HEARTBEAT_S) -> None:
        self.client, self.interval_s = client, interval_s
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="task-heartbeat")

    def __enter__(self) -> "TaskHeartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()

    def _run(self) -> None:
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

        while not self.stopped.wait(self.interval_s):
            try:
                if not self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success:
                    log.warning("the SuperNode refused a heartbeat: the task's token is gone")
                    return
            except Exception as err:  # noqa: BLE001 - a lost heartbeat must not end anything
                log.warning("task heartbeat failed: %s", err)


PULL_BACKOFF_S, PULL_BACKOFF_CAP_S = 0.02, 0.2


def pull_task_input(client):
    """Flower's ``run_clientapp.pull_task_input`` with a short backoff on the message's objects.

    A SuperNode creates the task before it has pulled the message's objects from the SuperLink,
    so a runner that acquires at once asks for objects still on their way; Flower's default
    backoff (1 s, doubling to 10 s) suits a ClientApp process that took seconds to start, not a
    warm one: it cost 1.2-3.5 s a message here. Same calls, same order, otherwise."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import (PullAppMessagesRequest,  # pylint: disable=E0611
                                        PullTaskInputRequest)
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf, make_pull_object_fn_protobuf)
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id = res.task_id, res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = (context_from_proto(res.context), run_from_proto(res.run),
                         fab_from_proto(res.fab))
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node = Node(node_id=context.node_id)
    tree = pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                  context.run_id),
        return_type=Message, initial_backoff=PULL_BACKOFF_S, backoff_cap=PULL_BACKOFF_CAP_S,
        # Flower's 500 tries would be 100 s at this cap, too short for a large model on a slow
        # link: only Flower's overall limit (PULL_MAX_TIME, 2 h) bounds the wait
        max_tries_per_object=None)
    message.metadata.__dict__["_message_id"] = tree.object_id  # not part of the deflated tree
    return message, context, run, fab


def serve_task(address: str, token: str, apps: AppCache, root_certificates: str = "",
               slots: ComputeSlots | None = None) -> str:
    """Run one acquired task to its end, the way ``run_clientapp`` does; returns the task's
    final sub-status. Never raises: whatever the app or the connection does, the runner goes
    on to the next task. ``slots``: the app runs holding one of the host's compute slots."""
    from flwr.app import Message
    from flwr.app.error import Error
    from flwr.clientapp.client_app import LoadClientAppError
    from flwr.common.constant import ErrorCode, SubStatus
    from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

    client = runtime_client(address, "flwr-clientapp", token, root_certificates)
    message = context = reply = None
    sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
    started = time.monotonic()
    phases: dict[str, float] = {}
    try:
        with TaskHeartbeat(client):
            try:
                message, context, run, fab = pull_task_input(client)
                phases["pull"] = time.monotonic() - started
                with slots or contextlib.nullcontext():
                    if slots is not None:
                        phases["wait"] = slots.waited_s
                    reply = apps.get(run, fab)(message=message, context=context)
                phases["app"] = time.monotonic() - started - sum(phases.values())
                sub_status, details = SubStatus.COMPLETED, ""
            except (Exception, SystemExit) as ex:  # noqa: BLE001 - the app's failure, not ours
                code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
                reason = str(type(ex)) + ":<'" + str(ex) + "'>"  # Flower's own format
                if isinstance(ex, LoadClientAppError):
                    code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                    reason = "An exception was raised when attempting to load `ClientApp`"
                log.error("ClientApp raised an exception", exc_info=ex)
                details = reason
                if message is not None:
                    reply = Message(Error(code=code, reason=reason), reply_to=message)
            if reply is not None and context is not None:
                try:
                    push_message(client, reply, context)
                    phases["push"] = time.monotonic() - started - sum(phases.values())
                except Exception as ex:  # noqa: BLE001
                    log.error("failed to push the reply", exc_info=ex)
                    sub_status, details = SubStatus.FAILED, f"pushing the reply failed: {ex}"
            push_task_output(client, context, sub_status, details)
    except Exception as ex:  # noqa: BLE001 - e.g. the SuperNode went away mid-task
        log.error("task ended abnormally", exc_info=ex)
    finally:
        client.close()
    kind = message.metadata.message_type if message is not None else "?"
    log.info("task %s %s in %.2f s (%s)", kind, sub_status, time.monotonic() - started,
             ", ".join(f"{k} {v:.2f} s" for k, v in phases.items()))
    return sub_status


class WarmRunner:
    """Acquires the SuperNode's ClientApp tasks one by one and serves them in this process."""

    def __init__(self, address: str, poll_interval_s: float, root_certificates: str = "",
                 give_up_after_s: float = 0.0, slots: ComputeSlots | None = None) -> None:
        self.address, self.poll_interval_s = address, poll_interval_s
        self.root_certificates = root_certificates
        self.give_up_after_s = give_up_after_s  # 0: retry forever
        self.slots = slots
        self.apps = AppCache()

    def acquire(self, client) -> str:
        """A task's token, or "" when none is pending."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611

        res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
        return res.token if res.HasField("task") and res.token else ""

    def run(self) -> None:
        """Serve until stopped."""
        client = runtime_client(self.address, "SuperExec", root_certificates=self.root_certificates)
        unreachable_since: float | None = None
        try:
            while True:
                try:
                    token = self.acquire(client)
                except Exception as err:  # noqa: BLE001 - the SuperNode is not up (yet, again)
                    if unreachable_since is None:
                        unreachable_since = time.monotonic()
                        log.warning("SuperNode at %s unreachable (%s); retrying", self.address,
                                    err)
                    elif (self.give_up_after_s
                          and time.monotonic() - unreachable_since > self.give_up_after_s):
                        raise SystemExit(
                            f"flbackdoor-clientapp-runner: SuperNode at {self.address} "
                            f"unreachable for {self.give_up_after_s:.0f} s; exiting (a "
                            "restarted node's container has a new network namespace: the "
                            "engine's restart joins it)")
                    time.sleep(self.poll_interval_s)
                    continue
                if unreachable_since is not None:
                    log.info("SuperNode at %s reachable again after %.1f s", self.address,
                             time.monotonic() - unreachable_since)
                    unreachable_since = None
                if not token:
                    time.sleep(self.poll_interval_s)
                    continue
                serve_task(self.address, token, self.apps, self.root_certificates, self.slots)
        finally:
            client.close()


def preload(modules: str) -> None:
    """Import the app's heavy dependencies now, before the first task, so that task (the
    identify wave) pays only for the FAB and the app's own modules."""
    for name in filter(None, (m.strip() for m in modules.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as err:
            log.warning("preload %s: %s", name, err)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="flbackdoor-clientapp-runner",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--runtime-api-address", default="127.0.0.1:9094",
                    help="the SuperNode's Runtime API (flower-supernode --port), served by this "
                         "process")
    ap.add_argument("--node", action="append", default=[], metavar="NAME=HOST:PORT",
                    help="instead: serve this SuperNode's Runtime API from a runner forked after "
                         "the preload (repeatable: one host process for every node of a machine; "
                         "supernode/runner_host.py); its log is LOG_DIR/NAME.log")
    ap.add_argument("--log-dir", type=Path, default=Path("."),
                    help="with --node: where each runner's log goes")
    ap.add_argument("--poll-interval", type=float, default=0.2,
                    help="seconds between AcquireTask calls while no task is pending")
    ap.add_argument("--root-certificates", default="",
                    help="CA of a SuperNode whose Runtime API serves TLS (default: plaintext)")
    ap.add_argument("--preload", default=DEFAULT_PRELOAD,
                    help="modules imported at start (comma-separated)")
    ap.add_argument("--give-up-after", type=float, default=0.0, metavar="SECONDS",
                    help="exit (code 1) once the SuperNode has been unreachable this long "
                         "(default 0: retry forever); for a container whose restart policy "
                         "starts it again")
    ap.add_argument("--ready-file", type=Path,
                    help="created once the preload is done (a launcher waits for it)")
    ap.add_argument("--ready-dir", type=Path,
                    help="with --node: each runner creates READY_DIR/NAME once it serves")
    ap.add_argument("--compute-slots", type=int, default=0, metavar="N",
                    help="with --node: at most N of the runners run their ClientApp at once "
                         "(default 0: the CPUs this process may use; supernode/compute_slots.py)")
    args = ap.parse_args(argv)
    check_flower("flbackdoor-clientapp-runner")
    # Our own lines only: Flower's logger (the app's lines too) prints through its own handler,
    # and a root handler would print each of them twice.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    if not 0.01 <= args.poll_interval <= 60:
        ap.error(f"--poll-interval {args.poll_interval}: need 0.01..60 seconds")
    if args.give_up_after < 0:
        ap.error(f"--give-up-after {args.give_up_after}: need 0 (never) or more seconds")
    if args.compute_slots < 0:
        ap.error(f"--compute-slots {args.compute_slots}: need 0 (the CPUs) or more")
    try:
        nodes = [Node.parse(spec) for spec in args.node]
    except ValueError as err:
        ap.error(str(err))
    preload(args.preload)
    if args.ready_file:
        args.ready_file.touch()

    def serve(address: str, slots: ComputeSlots | None = None) -> None:
        log.info("serving ClientApp tasks of the SuperNode at %s", address)
        WarmRunner(address, args.poll_interval, args.root_certificates,
                   args.give_up_after, slots).run()

    if not nodes:
        try:
            serve(args.runtime_api_address)
        except KeyboardInterrupt:
            pass
        return
    count = args.compute_slots or default_count()
    with tempfile.TemporaryDirectory(prefix="flbackdoor-slots-") as folder:
        log.info("%d compute slots for %d runners", count, len(nodes))
        try:
            code = RunnerHost(nodes, lambda node: serve(node.address,
                                                        ComputeSlots(Path(folder), count)),
                              args.log_dir, args.ready_dir).run()
        except KeyboardInterrupt:
            code = 0
    # Every runner has ended and nothing is left to clean up: the interpreter's teardown of
    # PyTorch and the app's modules would keep the launcher's stop waiting 1-3 s for nothing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
