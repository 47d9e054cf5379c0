"""A Celery worker node's heartbeat in the database, beaten by a thread of its main process.

At ``worker_init`` (in the main process, before the pool forks) the node draws a fresh id for
this life, registers it in ``worker_nodes`` and starts a thread that beats it every
``SCHEDULER_WORKER_HEARTBEAT_INTERVAL`` seconds; the pool processes inherit the id and record it
on the tasks they receive and run (``tasks.node_id``). When the main process dies (SIGKILL, OOM),
its pool processes die with it (Celery's prefork pool asks the kernel for that) and the beats
stop: the reaper then hands the node's tasks on within a minute (see
:mod:`kat_scheduler.workers.reaper`). A plugin that runs for long keeps its node beating, so it is
never reaped.

The beat opens a connection, writes and disposes of it: no connection is held between beats, and
a fork waits for a beat in progress to finish (``os.register_at_fork``), so a pool process never
inherits a connection in use.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from sqlalchemy import Engine

from kat_scheduler.storage.db import make_engine
from kat_scheduler.storage.worker_nodes import WorkerNode, WorkerNodeStore

logger = logging.getLogger(__name__)

#: Held while a beat talks to the database; a fork of this process waits for it.
_fork_lock = threading.Lock()
os.register_at_fork(before=_fork_lock.acquire, after_in_parent=_fork_lock.release, after_in_child=_fork_lock.release)

_node: WorkerNode | None = None
_heart: NodeHeartbeat | None = None


def current_node_id() -> uuid.UUID | None:
    """This worker node's id for this life (in its main and pool processes); ``None`` outside a node."""
    return None if _node is None else _node.id


class NodeHeartbeat:
    """Registers ``node`` and beats it every ``interval`` seconds from a daemon thread."""

    def __init__(self, node: WorkerNode, engine: Engine, interval: float) -> None:
        self.node = node
        self.engine = engine
        self.store = WorkerNodeStore(engine)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="kat-scheduler-node-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)  # a daemon: a beat stuck on the database does not hold the shutdown

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        """One beat; never raises (a failure is logged once per streak of failures)."""
        with _fork_lock:
            try:
                self.store.beat(self.node)  # at the database's time
                if self._failing:
                    logger.warning("worker node %s beats again", self.node.name)
                self._failing = False
            except Exception as exc:
                if not self._failing:
                    logger.error("worker node %s cannot beat in the database: %s", self.node.name, exc)
                self._failing = True
            finally:
                self.engine.dispose()  # no connection kept between beats (nor across a fork)


def start_node(name: str, db_uri: str, interval: float) -> WorkerNode:
    """Begin this process's life as worker node ``name``: a fresh id, registered and beating."""
    global _node, _heart
    stop_node()
    _node = WorkerNode(id=uuid.uuid4(), name=name, host=socket.gethostname(), pid=os.getpid())
    _heart = NodeHeartbeat(_node, make_engine(db_uri, pool_size=1), interval)
    _heart.start()
    logger.info("worker node %s beats as %s every %ss", name, _node.id, interval)
    return _node


def stop_node() -> None:
    """Stop beating (a clean shutdown); the reaper hands on whatever the node still held."""
    global _heart
    if _heart is not None:
        _heart.stop()
        _heart = None
