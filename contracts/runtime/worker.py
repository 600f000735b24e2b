"""Defence in depth: executing blocks in a child process under resource limits.

Metering is the real protection: gas and the runtime's limits stop every contract
deterministically, and that decides outcomes. This module guards the *node* in
case metering has a flaw: :class:`IsolatedExecutor` runs ``execute_block`` in a
persistent child process with ``RLIMIT_AS`` (address space) and ``RLIMIT_CPU`` (CPU
seconds per block) set, and the parent waits at most a wall-clock limit. Hitting any
of them never produces a receipt: the parent raises :class:`ExecutorUnavailable`,
kills the child and starts a fresh one on the next call, and the node decides what
to do (retry, stop following the chain, alert). So these limits can protect a node
without ever making validators disagree about a transaction.

The child is a plain ``python -m contracts.runtime.worker`` process (so it never
depends on how the node's own main module was started) talking pickled messages
over a socket pair. It reads state through the parent (the state reader stays in the
parent, next to the store): each read is a round trip, cached per block.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["ExecutorUnavailable", "IsolatedExecutor"]

_DEFAULT_MEMORY = 2 << 30  # address space of the child, bytes
_DEFAULT_CPU_SECONDS = 60  # CPU seconds one block may use in the child
_DEFAULT_WALL_SECONDS = 120.0  # how long the parent waits for one block


class ExecutorUnavailable(RuntimeError):
    """The isolated worker could not execute the block (limit hit, crash or timeout).

    Never a transaction outcome: the block was not executed.
    """


class _RemoteReader:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, key: bytes) -> bytes | None:
        self.conn.send(("get", key))
        kind, value = self.conn.recv()
        if kind != "value":
            raise RuntimeError("protocol error: expected a value")
        return value


def _set_limits(memory: int | None) -> None:
    import resource

    if memory:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))


def _cpu_budget(seconds: int) -> None:
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = int(used.ru_utime + used.ru_stime) + 1
    soft = spent + seconds
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY and soft > hard:
        soft = hard
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _worker_main(conn: Connection, memory: int | None, cpu_seconds: int) -> None:
    """The child: apply limits, then execute blocks until told to stop."""
    _set_limits(memory)
    from contracts.executor import Executor  # imported in the child only

    executor: Any = None
    reader = _RemoteReader(conn)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        kind = message[0]
        if kind == "stop":
            return
        try:
            _cpu_budget(cpu_seconds)
            if kind == "init":
                executor = Executor(**message[1])
                conn.send(("done", os.getpid()))
            elif kind == "block":
                _, block_context, txs = message
                result = executor.execute_block(reader, block_context, txs)
                conn.send(("done", result))
            elif kind == "probe":  # self-test of the limits (tests/test_executor_isolated.py)
                _, what, amount = message
                if what == "memory":
                    blob = bytearray(amount)
                    conn.send(("done", len(blob)))
                elif what == "cpu":
                    while True:
                        pass
                elif what == "sleep":
                    time.sleep(amount)
                    conn.send(("done", amount))
            else:
                conn.send(("failed", f"unknown request {kind}"))
        except MemoryError:
            conn.send(("failed", "memory limit reached in the worker"))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))


class IsolatedExecutor:
    """``execute_block`` in a child process under rlimits; see the module docstring.

    ``executor_options`` are passed to :class:`contracts.executor.Executor` in the
    child (``admission`` must then be picklable: a module-level function).
    """

    def __init__(
        self,
        *,
        memory_limit: int | None = _DEFAULT_MEMORY,
        cpu_seconds_per_block: int = _DEFAULT_CPU_SECONDS,
        wall_seconds_per_block: float = _DEFAULT_WALL_SECONDS,
        **executor_options: Any,
    ) -> None:
        self.memory_limit = memory_limit
        self.cpu_seconds = cpu_seconds_per_block
        self.wall_seconds = wall_seconds_per_block
        self.executor_options = executor_options
        self._process: subprocess.Popen | None = None
        self._conn: Connection | None = None

    def _alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _start(self) -> Connection:
        if self._alive() and self._conn is not None:
            return self._conn
        self._stop_child()
        parent, child = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        command = [
            sys.executable, "-m", "contracts.runtime.worker",
            str(child.fileno()), str(self.memory_limit or 0), str(self.cpu_seconds),
        ]
        self._process = subprocess.Popen(command, pass_fds=(child.fileno(),), env=env, close_fds=True)
        child.close()
        self._conn = Connection(parent.detach())
        self._request_started(("init", self.executor_options))
        return self._conn

    def _stop_child(self) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(5)

    def _request(self, message: tuple, state_reader: Any) -> Any:
        self._start()
        return self._request_started(message, state_reader)

    def _request_started(self, message: tuple, state_reader: Any = None) -> Any:
        conn = self._conn
        assert conn is not None
        deadline = time.monotonic() + self.wall_seconds
        try:
            conn.send(message)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._stop_child()
                    raise ExecutorUnavailable(f"block execution exceeded the wall-clock limit of {self.wall_seconds} s")
                if not conn.poll(min(left, 0.5)):
                    if not self._alive():
                        raise EOFError
                    continue
                reply = conn.recv()
                kind = reply[0]
                if kind == "get":
                    conn.send(("value", None if state_reader is None else state_reader.get(reply[1])))
                elif kind == "done":
                    return reply[1]
                else:
                    self._stop_child()
                    raise ExecutorUnavailable(f"the worker failed: {reply[1]}")
        except (EOFError, OSError) as exc:
            code = None if self._process is None else self._process.poll()
            self._stop_child()
            raise ExecutorUnavailable(f"the worker died (exit status {code}): a resource limit was probably hit") from exc

    def execute_block(self, state_reader: Any, block_context: Any, txs: Iterable[Any]) -> Any:
        """Like :meth:`contracts.executor.Executor.execute_block`, in the child."""
        return self._request(("block", block_context, list(txs)), state_reader)

    def probe(self, what: str, amount: int | float = 0) -> Any:
        """Exercise a limit in the child (``memory``, ``cpu``, ``sleep``): for tests of the limits."""
        return self._request(("probe", what, amount), None)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def close(self) -> None:
        if self._conn is not None and self._alive():
            try:
                self._conn.send(("stop",))
                self._process.wait(2)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._stop_child()

    def __enter__(self) -> IsolatedExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._stop_child()
        except Exception:  # noqa: BLE001 - best effort at interpreter shutdown
            pass




if __name__ == "__main__":
    _worker_main(Connection(int(sys.argv[1])), int(sys.argv[2]) or None, int(sys.argv[3]))
