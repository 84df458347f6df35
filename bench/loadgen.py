"""An open-loop event sender in a process of its own, for ``bench latency``.

Open loop: batch ``k`` of a phase is due at ``start + k * tick``, fixed before the phase
begins, and it is sent then whatever the gateway has answered so far. A request never waits
for an answer: it goes out on a keep-alive connection that has nothing in flight, and a new
connection is opened when all of them are waiting (so a slow answer never delays a later
send; the gateway's limit of 1,000 connections is far away at these rates).

Cheap and precise, so that the sender is not what is measured:

* its own process (the bench's parent only reads results), one thread, no asyncio: ``epoll``
  for the answers, and ``time.sleep`` for the last 2 ms before a tick (epoll's timeout has
  1 ms granularity);
* every request, HTTP head included, is encoded before the phase starts; answers are only
  checked for their status line (events carry their own ids, so the ids need no parsing);
* it reports how late it sent each batch behind its schedule, and the CPU it spent, so a
  reader can see that it kept up.

Latency is counted from the *scheduled* time of an event's batch, so any lateness of the
sender still counts against the gateway, never in its favour.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import socket
import time
from dataclasses import dataclass, field

#: Connections opened before a phase starts (more are opened when all are busy).
WARM_CONNECTIONS = 16
#: Give up on answers still missing this long after the last send.
DRAIN_TIMEOUT = 300.0


@dataclass(frozen=True)
class Plan:
    """One phase: ``count`` events at ``rate`` per second, a batch every ``tick`` seconds
    from ``start`` (wall clock). ``tick`` 0 sends each event alone, at ``start + i / rate``."""

    port: int
    rate: float
    count: int
    tick: float
    start: float
    prefix: str  # event ids are f"{prefix}-{i}"
    event: str = "bench/go"


@dataclass
class Report:
    """What the sender did in one phase."""

    late: list[float] = field(default_factory=list)  # per batch: sent - scheduled (s)
    answered: list[float] = field(default_factory=list)  # per request: sent -> 200 (s)
    errors: list[str] = field(default_factory=list)
    cpu_s: float = 0.0  # the sender process's CPU time over the phase
    wall_s: float = 0.0  # from the first scheduled send to the last answer
    send_wall_s: float = 0.0  # from the first scheduled send to the last send
    connections: int = 0  # opened during the phase, warm ones included
    max_in_flight: int = 0  # requests waiting for an answer at once, at most
    resent: int = 0  # requests sent again after the server closed their connection


def schedule(plan: Plan) -> list[tuple[float, int, int]]:
    """``(due time, first event, events)`` per batch: the phase's fixed schedule."""
    if plan.tick <= 0:
        return [(plan.start + i / plan.rate, i, 1) for i in range(plan.count)]
    out = []
    k = 0
    first = 0
    while first < plan.count:
        # Event i's own time is i / rate: those in this tick's interval go in its batch
        # (rounded first, so that 9.000000001 events are 9).
        upto = min(plan.count, math.ceil(round((k + 1) * plan.tick * plan.rate, 9)))
        if upto > first:
            out.append((plan.start + k * plan.tick, first, upto - first))
            first = upto
        k += 1
    return out


def intended(plan: Plan) -> dict[str, float]:
    """Each event's id and the time its batch was due: what latency is counted from."""
    return {f"{plan.prefix}-{i}": due
            for due, first, n in schedule(plan) for i in range(first, first + n)}


def _request(plan: Plan, first: int, n: int) -> bytes:
    body = b"[" + b",".join(
        b'{"name":"%s","id":"%s-%d","data":{"i":%d}}' % (plan.event.encode(),
                                                          plan.prefix.encode(), i, i)
        for i in range(first, first + n)) + b"]"
    return (b"POST /e/dev HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


class _Conn:
    """A keep-alive connection with at most one request in flight."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self.request: bytes | None = None  # in flight
        self.sent_at = 0.0
        self.closing = False

    def answer(self) -> tuple[int, bool] | None:
        """(status, server closes) once a whole answer is buffered, else None."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = self.buffer[:head_end].lower()
        length = 0
        closes = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and b"close" in value:
                closes = True
        if len(self.buffer) < head_end + 4 + length:
            return None
        status = int(head.split(b" ", 2)[1])
        self.buffer = self.buffer[head_end + 4 + length:]
        return status, closes


class _Sender:
    def __init__(self, plan: Plan, report: Report) -> None:
        self.plan = plan
        self.report = report
        self.poll = select.epoll()
        self.conns: dict[int, _Conn] = {}
        self.free: list[_Conn] = []  # a stack: the most recently answered is reused first
        self.in_flight = 0

    def open(self) -> _Conn:
        conn = _Conn(self.plan.port)
        self.conns[conn.sock.fileno()] = conn
        self.poll.register(conn.sock.fileno(), select.EPOLLIN)
        self.report.connections += 1
        return conn

    def drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self.poll.unregister(fd)
        del self.conns[fd]
        if conn in self.free:
            self.free.remove(conn)
        conn.sock.close()

    def send(self, request: bytes, now: float) -> None:
        conn = self.free.pop() if self.free else self.open()
        conn.request, conn.sent_at = request, now
        conn.sock.sendall(request)
        self.in_flight += 1
        self.report.max_in_flight = max(self.report.max_in_flight, self.in_flight)

    def read(self, timeout: float) -> None:
        """Handle what arrived within ``timeout`` seconds (epoll: 1 ms granularity)."""
        for fd, _ in self.poll.poll(timeout):
            conn = self.conns[fd]
            data = conn.sock.recv(65536)
            if not data:  # the server closed it (idle keep-alive, or mid-request)
                request = conn.request
                self.drop(conn)
                if request is not None:  # never answered: send it again (ids dedupe)
                    self.in_flight -= 1
                    self.report.resent += 1
                    self.send(request, conn.sent_at)
                continue
            conn.buffer += data
            while conn.request is not None and (answer := conn.answer()) is not None:
                status, closes = answer
                now = time.time()
                self.in_flight -= 1
                if status == 200:
                    self.report.answered.append(now - conn.sent_at)
                else:
                    self.report.errors.append(f"POST /e: HTTP {status}")
                conn.request = None
                if closes:
                    self.drop(conn)
                else:
                    self.free.append(conn)

    def run(self) -> None:
        plan = self.plan
        batches = [(due, _request(plan, first, n)) for due, first, n in schedule(plan)]
        for _ in range(WARM_CONNECTIONS):
            self.free.append(self.open())
        cpu = time.process_time()
        for due, request in batches:
            while (remaining := due - time.time()) > 0:
                if remaining > 0.002:
                    self.read(remaining - 0.002)
                else:
                    time.sleep(remaining)
            now = time.time()
            self.report.late.append(now - due)
            self.send(request, now)
        self.report.send_wall_s = time.time() - plan.start
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while self.in_flight and time.monotonic() < deadline:
            self.read(0.05)
        if self.in_flight:
            self.report.errors.append(f"{self.in_flight} POSTs unanswered after "
                                      f"{DRAIN_TIMEOUT:g} s")
        self.report.wall_s = time.time() - plan.start
        self.report.cpu_s = time.process_time() - cpu
        for conn in list(self.conns.values()):
            self.drop(conn)
        self.poll.close()


def _serve(pipe: multiprocessing.connection.Connection, nice: int) -> None:
    if nice:
        # A client on another machine gets its own core; here it gets first call on one (it
        # uses a few % of it), so that its own scheduling delays stay out of the figures.
        with contextlib.suppress(OSError):  # not allowed: it stays at the default
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    pipe.send(os.getpriority(os.PRIO_PROCESS, 0))
    while (plan := pipe.recv()) is not None:
        report = Report()
        try:
            _Sender(plan, report).run()
        except OSError as exc:
            report.errors.append(f"{type(exc).__name__}: {exc}")
        pipe.send(report)


class LoadGenerator:
    """The sender process, kept for every phase of a benchmark."""

    def __init__(self, nice: int = -5) -> None:
        context = multiprocessing.get_context("spawn")  # nothing of the parent's threads
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, nice), daemon=True,
                                       name="tether-bench-sender")
        self.process.start()
        child.close()
        #: The sender's scheduling priority (negative: ahead of the gateway and the worker).
        self.niceness: int = self._pipe.recv()

    def run(self, plan: Plan) -> Report:
        """Send one phase; returns once every request was answered (or failed)."""
        self._pipe.send(plan)
        report: Report = self._pipe.recv()
        return report

    def close(self) -> None:
        with contextlib.suppress(OSError):  # it is gone already
            self._pipe.send(None)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
