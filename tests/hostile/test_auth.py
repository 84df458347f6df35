"""Hostile clients against a real, secured gateway process: floods of unauthenticated frames,
forged answers, weak keys, revoked keys, secrets in logs, file modes, NUL and reserved names.

After each attack the gateway still answers a normal event with 200 and completes a normal
run (:func:`still_serves`).
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.cluster import Cluster, free_port
from protocol import messages as m
from protocol.auth import answer
from protocol.codec import decode, encode
from tests.e2e.harness import E2E, log_events, run_cli
from tests.helpers.waiting import bound, wait_until

pytestmark = pytest.mark.e2e

KEY = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
EVENT_KEY = "evtkey-MFuYiPUODFbl8RW7emXlYw"
MIB = 1024 * 1024
#: Unauthenticated clients in the flood, and the frame each sends, again and again.
FLOODERS = 20
FLOOD_FRAME = 4 * MIB
#: The gateway's resident memory during and after the flood stays under this (it used to
#: reach ~500 MiB with a few such clients).
RSS_BOUND_MIB = 200


@pytest.fixture
def e2e(cluster: Cluster) -> E2E:
    return E2E(cluster)


@pytest.fixture
def secured(e2e: E2E) -> E2E:
    """A gateway that requires keys, with one worker connected."""
    e2e.start_gateway("--signing-key", KEY, "--event-key", EVENT_KEY)
    e2e.headers = {"Authorization": f"Bearer {KEY}"}
    e2e.event_key = EVENT_KEY
    e2e.start_worker("--signing-key", KEY)
    e2e.wait_workers(1)
    return e2e


def still_serves(e2e: E2E) -> None:
    """A normal event gets 200 and its run completes."""
    key = e2e.new_key()
    run = e2e.wait_final(e2e.run_of(e2e.send("e2e/three", key=key))["id"])
    e2e.check(run["status"] == "Completed", f"run not completed after the attack: {run}")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for pid {pid}")


def status_of(e2e: E2E, method: str, path: str, body: Any = None,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return e2e.cluster.request(method, path, body, headers=headers)


# --- 7.3: the cost of not being authenticated ---------------------------------------------


async def _flood(url: str, stop: asyncio.Event, sent: list[int], errors: list[str]) -> None:
    """Connect, wait for the challenge, send a multi-MiB frame; again, until ``stop``."""
    junk = msgpack.packb([{"type": "hello", "protocol_version": m.PROTOCOL_VERSION,
                           "instance_id": "x", "sdk_version": "x" * FLOOD_FRAME,
                           "capacity": 1, "apps": []}])
    while not stop.is_set():
        try:
            async with connect(url, ping_interval=None, max_size=None, close_timeout=1,
                               open_timeout=5) as ws:
                await asyncio.wait_for(ws.recv(), 5)
                await ws.send(junk)
                sent[0] += 1
                await asyncio.wait_for(ws.recv(), 5)  # the close
        except Exception as exc:  # an attacker takes whatever the gateway does to it
            errors.append(type(exc).__name__)


async def test_unauthenticated_floods_cost_the_gateway_little(secured: E2E) -> None:
    gateway = secured.cluster.gateway
    assert gateway is not None
    before = rss_mib(gateway.pid)
    stop, sent, errors = asyncio.Event(), [0], []
    flooders = [asyncio.create_task(_flood(secured.cluster.connect_url, stop, sent, errors))
                for _ in range(FLOODERS)]
    try:
        while sent[0] < 3 * FLOODERS:  # every client has sent a few multi-MiB frames
            await asyncio.sleep(0.05)
            assert not all(f.done() for f in flooders), errors[-5:]
        started = time.monotonic()
        health = await asyncio.to_thread(secured.cluster.get, "/health")
        took = time.monotonic() - started
        # A worker connecting in the middle of the flood gets in.
        secured.start_worker("--signing-key", KEY, name="during-flood")
        await asyncio.to_thread(secured.wait_workers, 2)
        during = rss_mib(gateway.pid)
    finally:
        stop.set()
        await asyncio.gather(*flooders)

    peak = rss_mib(gateway.pid, "VmHWM")
    assert health["status"] == "ok"
    assert took < bound(2.0), f"/health took {took:.2f}s during the flood"
    assert peak < RSS_BOUND_MIB, f"peak RSS {peak:.0f} MiB (before {before:.0f}, during " \
                                 f"{during:.0f}) after {sent[0]} frames of {FLOOD_FRAME} bytes"
    still_serves(secured)


async def test_a_forged_answer_is_refused(secured: E2E) -> None:
    gateway = secured.cluster.gateway
    assert gateway is not None
    url = secured.cluster.connect_url
    forgeries = {
        "wrong key": lambda nonce: answer("signkey-guess-" + "A1b2C3d4" * 6, nonce, "forger"),
        "empty": lambda nonce: b"",
        "replayed from another socket": None,
    }
    replay: bytes | None = None
    async with connect(url, ping_interval=None) as ws:
        (challenge,) = decode(await ws.recv())
        assert isinstance(challenge, m.Challenge)
        replay = answer(KEY, challenge.nonce, "forger")  # valid there, never sent
    for name, forge in forgeries.items():
        async with connect(url, ping_interval=None) as ws:
            (challenge,) = decode(await ws.recv())
            mac = replay if forge is None else forge(challenge.nonce)
            await ws.send(encode([m.Answer(instance_id="forger", mac=mac)]))
            (error,) = decode(await ws.recv())
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert isinstance(error, m.Error) and error.code == "unauthorized", name
            assert ws.close_code == 1008, name
    refused = [e for e in log_events(gateway, "worker_refused") if e["code"] == "unauthorized"]
    assert len(refused) == len(forgeries)
    assert len(secured.workers_connected()) == 1
    still_serves(secured)


async def test_a_checkpoint_with_a_nul_step_id_closes_only_that_socket(secured: E2E) -> None:
    async with connect(secured.cluster.connect_url, ping_interval=None) as ws:
        (challenge,) = decode(await ws.recv())
        await ws.send(encode([m.Answer(instance_id="nul", mac=answer(KEY, challenge.nonce,
                                                                     "nul"))]))
        (authenticated,) = decode(await ws.recv())
        assert isinstance(authenticated, m.Authenticated)
        await ws.send(msgpack.packb([{"type": "hello", "protocol_version": m.PROTOCOL_VERSION,
                                      "instance_id": "nul", "sdk_version": "t", "capacity": 1,
                                      "apps": [{"id": "nul", "functions": []}]}]))
        (ready,) = decode(await ws.recv())
        assert isinstance(ready, m.Ready)
        await ws.send(msgpack.packb([{"type": "step_completed", "seq": 1, "run_id": "r",
                                      "fence": 1, "step_id": "a\x00b", "attempt": 0,
                                      "output": b"1", "started_at": 1.0, "ended_at": 2.0}]))
        (error,) = decode(await ws.recv())
        assert isinstance(error, m.Error) and error.code == "bad_frame"
        assert "step_id" in error.message
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1002
    still_serves(secured)


# --- 7.4: keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "flag"), [
    (["--signing-key", ""], "--signing-key"),
    (["--signing-key", "x"], "--signing-key"),
    (["--signing-key", "hunter2-hunter2-hunter2"], "--signing-key"),
    (["--signing-key", KEY, "--event-key", "dev"], "--event-key"),
    (["--signing-key", KEY, "--api-key", "ops-key-123"], "--api-key"),
])
def test_weak_keys_stop_the_gateway_at_startup(tmp_path: Path, args: list[str],
                                               flag: str) -> None:
    result = run_cli("-m", "gateway", "--port", str(free_port()), "--connect-port",
                     str(free_port()), "--db", f"sqlite:///{tmp_path / 'tether.db'}", *args,
                     cwd=tmp_path)
    assert result.returncode == 2, result
    assert f"{flag} is too weak" in result.stderr, result.stderr
    assert "python -m gateway keys create" in result.stderr, result.stderr
    for value in args[1::2]:
        if len(value) > 8 and value != KEY:
            assert value not in result.stderr  # a secret is never echoed
    assert not (tmp_path / "tether.db").exists()  # refused before touching anything


def test_keys_made_and_revoked_beside_a_running_gateway(secured: E2E) -> None:
    db = secured.cluster.db
    workdir = secured.workdir
    made = run_cli("-m", "gateway", "keys", "create", "--kind", "event", "--name", "hostile",
                   "--db", db, cwd=workdir)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    secured.wait(lambda: status_of(secured, "POST", f"/e/{key}", {"name": "x/y"})[0] == 200,
                 "the new event key to be accepted", timeout=5)

    listed = run_cli("-m", "gateway", "keys", "list", "--db", db, cwd=workdir)
    assert listed.returncode == 0 and "hostile" in listed.stdout and key not in listed.stdout
    key_id = next(line.split()[0] for line in listed.stdout.splitlines() if "hostile" in line)

    revoked = run_cli("-m", "gateway", "keys", "revoke", key_id, "--db", db, cwd=workdir)
    assert revoked.returncode == 0, revoked.stderr
    refused_at = time.monotonic()
    secured.wait(lambda: status_of(secured, "POST", f"/e/{key}", {"name": "x/y"})[0] == 401,
                 "the revoked key to be refused", timeout=5)
    took = time.monotonic() - refused_at
    assert took < bound(3.0), f"a revoked key was accepted for {took:.1f}s"

    api = run_cli("-m", "gateway", "keys", "create", "--kind", "api", "--read-only", "--db", db,
                  cwd=workdir).stdout.strip()
    bearer = {"Authorization": f"Bearer {api}"}
    secured.wait(lambda: status_of(secured, "GET", "/v1/runs", headers=bearer)[0] == 200,
                 "the read-only API key to open reads", timeout=5)
    status, body = status_of(secured, "POST", "/v1/runs/nope/cancel", {}, headers=bearer)
    assert status == 401 and "read-only" in body["error"]
    still_serves(secured)


def test_event_keys_never_reach_the_logs(secured: E2E) -> None:
    gateway = secured.cluster.gateway
    assert gateway is not None
    wrong = "evtkey-Wr0ngWr0ngKeyZZqqXX11"
    assert status_of(secured, "POST", f"/e/{wrong}", {"name": "x/y"})[0] == 401
    assert status_of(secured, "POST", f"/e/{EVENT_KEY}", b"not json")[0] == 400
    still_serves(secured)
    secured.wait(lambda: log_events(gateway, "request_unauthorized"), "the 401 to be logged")
    text = gateway.log()
    assert wrong not in text and EVENT_KEY not in text
    assert "/e/<redacted>" in text


def test_the_management_api_refuses_an_empty_bearer(secured: E2E) -> None:
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
        assert status_of(secured, "GET", "/v1/runs", headers=headers)[0] == 401
    still_serves(secured)


# --- 7.7: storage ---------------------------------------------------------------------------


def test_the_database_directory_and_files_are_private(e2e: E2E) -> None:
    state = e2e.workdir / "state"
    e2e.cluster.db = f"sqlite:///{state / 'tether.db'}"
    old_umask = os.umask(0o022)  # the usual umask, which made them 0755 and 0644
    try:
        e2e.start_gateway()
    finally:
        os.umask(old_umask)
    e2e.start_worker()
    e2e.wait_workers(1)
    still_serves(e2e)  # the -wal and -shm files exist once something was written

    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    files = ["tether.db", "tether.db-wal", "tether.db-shm", "tether.db.lock"]
    for name in files:
        path = state / name
        assert path.exists(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (name, oct(path.stat().st_mode))


def test_an_existing_readable_database_is_made_private(e2e: E2E) -> None:
    db = e2e.workdir / "old.db"
    assert run_cli("-m", "gateway", "migrate", "--db", f"sqlite:///{db}",
                   cwd=e2e.workdir).returncode == 0
    db.chmod(0o644)  # as older gateways left it
    e2e.cluster.db = f"sqlite:///{db}"
    e2e.start_gateway()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


@pytest.mark.parametrize(("event", "says"), [
    ({"name": "shop/a\u0000b"}, "NUL"),
    ({"name": "shop/x", "id": "id\u0000"}, "NUL"),
    ({"name": "TETHER/x"}, "reserved"),
    ({"name": "Tether/function.finished", "data": {}}, "reserved"),
    ({"name": "tether/function.failed"}, "reserved"),
])
def test_nul_and_reserved_names_are_refused(secured: E2E, event: dict[str, Any],
                                            says: str) -> None:
    status, body = status_of(secured, "POST", f"/e/{EVENT_KEY}", event)
    assert status == 400, body
    assert says in body["error"]
    page = secured.cluster.get("/v1/runs", headers=secured.headers)
    before = len(page["data"])
    still_serves(secured)
    assert len(secured.cluster.get("/v1/runs", headers=secured.headers)["data"]) == before + 1


def test_a_gateway_stays_up_while_its_lock_is_wanted(secured: E2E) -> None:
    """A second gateway on the same file is refused (the e2e suite covers it in full)."""
    cluster = secured.cluster
    second = run_cli("-m", "gateway", "--signing-key", KEY, "--port", str(free_port()),
                     "--connect-port", str(free_port()), "--db", cluster.db,
                     cwd=secured.workdir)
    assert second.returncode == 1
    assert f"pid {cluster.gateway.pid}" in second.stderr  # type: ignore[union-attr]
    wait_until(lambda: cluster.gateway is not None and cluster.gateway.alive(), timeout=1)
    still_serves(secured)
