"""Nothing is acknowledged before it is on disk: the system calls of a real gateway, traced.

The Jepsen lesson: a write acknowledged before fsync is a write a power cut can take back.
A real gateway (SQLite, ``synchronous=FULL``) runs under ``strace``; events are posted one at
a time and a worker runs 3-step functions. Every ``200`` of ``POST /e`` must be written
after an fsync of the database's write-ahead log that followed the request's arrival, and
every checkpoint acknowledgement after an fsync that followed the checkpoint's arrival.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from bench.cluster import Cluster

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("strace") is None,
                                 reason="needs strace (python3 dev.py test installs it as root)")]

APP = '''
from worker import App, TriggerEvent

app = App("synced")


async def value(n):
    return n


@app.function(id="three", trigger=TriggerEvent("synced/go"), retries=0)
async def three(ctx):
    total = 0
    for i in range(3):
        total += await ctx.step.run(f"s{i}", value, i)
    return total
'''

#: ``PID HH:MM:SS.micro call(fd<path>, ...`` (``strace -f -tt -y -xx``), perhaps unfinished.
START = re.compile(r"^(\d+)\s+[\d:.]+\s+(\w+)\((\d+)<([^>]*)>(.*)$")
RESUMED = re.compile(r"^(\d+)\s+[\d:.]+\s+<\.\.\. (\w+) resumed>(.*)$")
HEX = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')


@dataclass(frozen=True)
class Call:
    """One system call on a file descriptor: the trace lines where it began and returned."""

    start: int
    end: int
    name: str
    path: str
    data: bytes  # what was read or written (every buffer of a writev, in order)

    @property
    def reads(self) -> bool:
        return self.name.startswith(("read", "recv"))

    @property
    def writes(self) -> bool:
        return self.name.startswith(("write", "send"))

    @property
    def syncs(self) -> bool:
        return self.name in ("fsync", "fdatasync")


def calls(trace: Path) -> list[Call]:
    found: list[Call] = []
    pending: dict[str, tuple[int, str, str, str]] = {}
    for i, line in enumerate(trace.read_text(errors="replace").splitlines()):
        if match := START.match(line):
            pid, name, _, path, rest = match.groups()
            if rest.endswith("<unfinished ...>"):
                pending[pid] = (i, name, path, rest)
                continue
            begun = i
        elif (match := RESUMED.match(line)) and match.group(1) in pending:
            begun, name, path, before = pending.pop(match.group(1))
            rest = before + match.group(3)
        else:
            continue
        data = b"".join(_unhex(h) for h in HEX.findall(rest))
        found.append(Call(begun, i, name, _unhex(path).decode(errors="replace"), data))
    return found


def _unhex(text: str) -> bytes:
    """``\\x2f\\x74...`` (what ``-xx`` prints, paths too) as bytes."""
    return bytes.fromhex(text.replace("\\x", "")) if text.startswith("\\x") else text.encode()


def synced_between(trace: list[Call], after: Call, before: Call, wal: str) -> bool:
    """An fsync of ``wal`` began after ``after`` returned and returned before ``before``
    began: what ``after`` carried in was on disk before ``before`` said so."""
    return any(c.syncs and c.path == wal and after.end < c.start and c.end < before.start
               for c in trace)


def messages(calls_on_socket: list[Call]) -> list[tuple[Call, dict[str, Any]]]:
    """The protocol messages of one direction of a WebSocket, each with the call that
    completed its frame (frames are reassembled across reads and unmasked)."""
    found = []
    buffer = bytearray()
    for call in calls_on_socket:
        buffer += call.data
        while len(buffer) >= 2:
            length, at = buffer[1] & 0x7F, 2
            if length == 126:
                length, at = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                length, at = int.from_bytes(buffer[2:10], "big"), 10
            mask = bytes(buffer[at:at + 4]) if buffer[1] & 0x80 else b""
            at += len(mask)
            if len(buffer) < at + length:
                break
            payload = bytes(buffer[at:at + length])
            del buffer[:at + length]
            if mask:
                payload = bytes(b ^ mask[k % 4] for k, b in enumerate(payload))
            with contextlib.suppress(Exception):  # a close or ping frame: not messages
                found.extend((call, msg) for msg in msgpack.unpackb(payload))
    return found


def test_every_acknowledgement_follows_the_fsync_of_what_it_acknowledges(tmp_path: Path):
    (tmp_path / "syncedapp.py").write_text(APP)
    cluster = Cluster(tmp_path)
    try:
        cluster.start_gateway()
        cluster.start_worker("syncedapp:app", args=("--concurrency", "1"))
        deadline = time.monotonic() + 30
        while not cluster.get("/v1/workers")["data"]:
            assert time.monotonic() < deadline, "the worker never connected"
            time.sleep(0.05)
        trace_file = tmp_path / "gateway.strace"
        assert cluster.gateway is not None
        strace = subprocess.Popen(
            ["strace", "-f", "-tt", "-y", "-xx", "-s", "1000000", "-o", str(trace_file),
             "-p", str(cluster.gateway.pid),
             "-e", "trace=read,recvfrom,recvmsg,write,writev,sendto,sendmsg,fsync,fdatasync"],
            stderr=subprocess.PIPE)
        assert strace.stderr is not None
        # "Process N attached with T threads", once every thread is traced.
        assert b"attached" in strace.stderr.readline(), "strace could not attach"
        markers = [f"marker-{i:03d}" for i in range(12)]
        for marker in markers:  # one at a time: each answer is its own commit
            cluster.send([{"name": "synced/go", "data": {"m": marker}}])
        ids = cluster.send([{"name": "synced/go", "data": {"m": "last"}}])
        while cluster.get(f"/v1/events/{ids[0]}/runs")["data"][:1] == [] or any(
                r["status"] != "Completed"
                for r in cluster.get("/v1/runs?limit=100")["data"]):
            assert time.monotonic() < deadline + 60, "the runs did not complete"
            time.sleep(0.1)
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=30)
    finally:
        cluster.stop()

    trace = calls(trace_file)
    wal = str(tmp_path / "tether.db-wal")
    assert any(c.syncs and c.path == wal for c in trace), "no fsync of the log was traced"

    # Events: the request's arrival, then the first bytes of the answer on that socket.
    for marker in markers:
        arrived = next(c for c in trace if c.reads and marker.encode() in c.data)
        answered = next(c for c in trace if c.start > arrived.end and c.path == arrived.path
                        and c.writes and c.data.startswith(b"HTTP/1.1 200"))
        assert synced_between(trace, arrived, answered, wal), (
            f"the 200 for {marker} was written before the log was fsync'd")

    # Checkpoints: the frame that carried checkpoint N, then the ack that covers it.
    worker_socket = next(c.path for c in trace if c.writes and b"lease_granted" in c.data)
    sent = messages([c for c in trace if c.reads and c.path == worker_socket])
    heard = messages([c for c in trace if c.writes and c.path == worker_socket])
    arrival = {msg["seq"]: call for call, msg in sent if "seq" in msg}
    acks = [(call, msg["upto"]) for call, msg in heard if msg.get("type") == "checkpoint_ack"]
    assert len(arrival) >= 4 * len(markers), f"only {len(arrival)} checkpoints traced"
    assert acks, "no acknowledgement traced"
    for call, upto in acks:
        assert synced_between(trace, arrival[upto], call, wal), (
            f"checkpoint {upto} was acknowledged before the log was fsync'd")
