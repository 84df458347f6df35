"""Keys kept in the store: made, listed and revoked beside a running gateway, which accepts
and refuses them after its next refresh; the ``keys`` command line; the worker socket's
pre-authentication limits."""

from __future__ import annotations

import asyncio
import re

import httpx
import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from gateway import cli
from gateway.clock import FakeClock
from gateway.store import keys as keystore
from gateway.transport.auth import key_hash
from protocol import messages as m
from protocol.auth import answer
from protocol.codec import decode
from protocol.errors import InvalidInput, NotFound
from tests.helpers.waiting import bound, eventually
from tests.integration.raw_worker import RawWorker, hello

SIGNING = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
NOW = 1_700_000_000.0


async def test_keys_are_stored_hashed_listed_and_revoked(store, db_url):
    async with keystore.connect(db_url) as db:  # beside the open store, as the CLI would be
        event, event_key = await keystore.create(db, kind="event", name="shop", read_only=False,
                                                 now=NOW)
        api, api_key = await keystore.create(db, kind="api", name="", read_only=True,
                                             now=NOW + 1)
        listed = await keystore.list_keys(db)

    assert [r.id for r in listed] == [event.id, api.id]
    assert listed[0].hint.startswith("evtkey-") and event_key not in repr(listed)
    assert listed[1].read_only and listed[1].revoked_at is None
    active = {k.hash: k for k in await store.active_keys()}
    assert set(active) == {key_hash(event_key), key_hash(api_key)}
    assert active[key_hash(api_key)].read_only

    async with keystore.connect(db_url) as db:
        revoked = await keystore.revoke(db, event.id, now=NOW + 2)
        with pytest.raises(NotFound, match="keys list"):
            await keystore.revoke(db, "no-such-id", now=NOW)
    assert revoked.revoked_at == NOW + 2
    assert [k.hash for k in await store.active_keys()] == [key_hash(api_key)]


@pytest.mark.parametrize(("kind", "read_only", "key", "error"), [
    ("signing", False, None, "the store keeps event and api keys"),
    ("event", True, None, "--read-only applies to API keys only"),
    ("event", False, "short", "the key is too weak"),
])
async def test_what_the_store_refuses(store, db_url, kind, read_only, key, error):
    async with keystore.connect(db_url) as db:
        with pytest.raises(InvalidInput, match=error):
            await keystore.create(db, kind=kind, name="", read_only=read_only, now=NOW, key=key)
        assert await keystore.list_keys(db) == []


async def test_a_running_gateway_accepts_a_new_key_and_refuses_a_revoked_one(gateway_factory,
                                                                           db_url):
    clock = FakeClock()
    gw = await gateway_factory(clock=clock, dev=False, signing_keys=[SIGNING])
    async with keystore.connect(db_url) as db:
        record, key = await keystore.create(db, kind="event", name="", read_only=False,
                                            now=clock.now())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        async def status() -> int:
            return (await http.post(f"/e/{key}", json={"name": "x/y"})).status_code

        assert await status() == 401  # not read yet
        clock.advance(gw.settings.key_refresh)
        await eventually(lambda: _is(status, 200), timeout=5, what="the new key to count")

        async with keystore.connect(db_url) as db:
            await keystore.revoke(db, record.id, now=clock.now())
        assert await status() == 200  # until the next refresh
        clock.advance(gw.settings.key_refresh)
        await eventually(lambda: _is(status, 401), timeout=5, what="the key to be refused")


async def _is(probe, expected) -> bool:
    return bool(await probe() == expected)


# --- the command line ----------------------------------------------------------------------


def test_keys_help_prints_help_and_never_a_key(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["keys", "--help"], environ={})
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "create|list|revoke" in out and "--key-refresh" in out
    assert not re.search(r"(signkey|evtkey|apikey)-[A-Za-z0-9_-]{20,}", out)


def test_keys_without_an_action_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["keys"], environ={})
    assert done.value.code == 2
    assert "create|list|revoke" in capsys.readouterr().err


def test_keys_round_trip_on_the_command_line(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'tether.db'}"
    assert cli.main(["keys", "create", "--kind", "event", "--name", "shop", "--db", db],
                    environ={}) == 0
    made = capsys.readouterr()
    key = made.out.strip()
    assert key.startswith("evtkey-") and "stored" in made.err and key not in made.err

    assert cli.main(["keys", "list", "--db", db], environ={}) == 0
    table = capsys.readouterr().out
    assert "shop" in table and key not in table
    key_id = table.splitlines()[1].split()[0]

    assert cli.main(["keys", "revoke", key_id, "--db", db], environ={}) == 0
    assert "revoked" in capsys.readouterr().err
    assert cli.main(["keys", "list", "--db", db], environ={}) == 0
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ\s*$", capsys.readouterr().out.splitlines()[1])

    assert cli.main(["keys", "revoke", "nope", "--db", db], environ={}) == 1
    assert "no key has id 'nope'" in capsys.readouterr().err


def test_keys_create_signing_prints_a_key_and_stores_nothing(tmp_path, capsys):
    assert cli.main(["keys", "create", "--kind", "signing"], environ={}) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("signkey-") and len(out) >= len("signkey-") + 43
    assert not (tmp_path / "tether.db").exists()


# --- before authentication -----------------------------------------------------------------


async def test_a_large_frame_before_authentication_closes_the_socket_unread(gateway_factory):
    gw = await gateway_factory(dev=False, signing_keys=[SIGNING])
    worker = await RawWorker.open(gw.connect_port)
    big = msgpack.packb([{"type": "answer", "instance_id": "x",
                          "mac": b"\0" * (m.MAX_PREAUTH_FRAME + 1)}])
    await worker.send_raw(big)
    code, _ = await worker.wait_closed()
    assert code == 1009  # message too big: refused by its header, never buffered
    good = await RawWorker.ready_on(gw.connect_port, key=SIGNING, instance_id="good")
    await good.send(m.Heartbeat())
    await good.expect(m.HeartbeatAck)


async def test_after_authentication_large_frames_are_accepted(gateway_factory):
    """The pre-authentication cap is lifted once the key is proven: a big manifest fits."""
    gw = await gateway_factory(dev=False, signing_keys=[SIGNING])
    worker = await RawWorker.open(gw.connect_port)
    await worker.authenticate(key=SIGNING, instance_id="big")
    greeting = hello("big")
    padded = greeting.model_copy(update={"sdk_version": "x" * (2 * m.MAX_PREAUTH_FRAME)})
    await worker.send(padded)
    assert (await worker.expect(m.Ready)).session_id


async def test_excess_unauthenticated_sockets_are_closed_with_a_reason(gateway_factory):
    gw = await gateway_factory(dev=False, signing_keys=[SIGNING], max_handshakes=2)
    idle = [await RawWorker.open(gw.connect_port) for _ in range(2)]

    url = f"ws://127.0.0.1:{gw.connect_port}/connect"
    async with connect(url, ping_interval=None) as third:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(third.recv(), bound(5))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "retry" in closed.value.rcvd.reason

    # An authenticated socket frees its place at once.
    await idle[0].authenticate(key=SIGNING, instance_id="raw-1")
    async with connect(url, ping_interval=None) as fourth:
        (challenge,) = decode(await asyncio.wait_for(fourth.recv(), bound(5)))
        assert isinstance(challenge, m.Challenge)
    for worker in idle:
        await worker.close()


# --- event keys stay out of the logs -------------------------------------------------------


@pytest.mark.parametrize("failure", ["crash", "tether_error"])
async def test_a_failing_event_request_logs_no_key(gateway_factory, failure, caplog):
    from structlog.testing import capture_logs

    from protocol.errors import TetherError

    event_key = "evtkey-MFuYiPUODFbl8RW7emXlYw"
    gw = await gateway_factory(dev=False, signing_keys=[SIGNING], event_keys=[event_key])

    async def broken(events):  # the write path fails as a full disk or a lost database would
        if failure == "crash":
            raise RuntimeError("disk on fire")
        raise TetherError("the store is not answering")

    gw.engine.ingest = broken
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as http:
        with capture_logs() as logs:
            r = await http.post(f"/e/{event_key}", json={"name": "x/y"})
            unauthorized = await http.post(f"/e/{event_key}x", json={"name": "x/y"})
    assert r.status_code == 500 and unauthorized.status_code == 401
    logged = [e for e in logs if e["event"].startswith("request_")]
    assert {e["event"] for e in logged} == {
        "request_crashed" if failure == "crash" else "request_failed", "request_unauthorized"}
    assert all(e["path"] == "/e/<redacted>" for e in logged)
    assert event_key not in repr(logs) and event_key not in caplog.text


async def test_a_worker_on_a_previous_signing_key_is_dropped_when_its_grace_ends(
        gateway_factory):
    old = "signkey-0PluuBHVIpw4VjdPya8pocC_ZuCNH2eeLQfwObkA8Fs"
    clock = FakeClock()
    gw = await gateway_factory(clock=clock, dev=False, signing_keys=[SIGNING],
                               previous_signing_keys=[old], previous_key_expires="10s",
                               heartbeat_interval=100.0)
    rotated = await RawWorker.ready_on(gw.connect_port, key=SIGNING, instance_id="rotated")
    lagging = await RawWorker.ready_on(gw.connect_port, key=old, instance_id="lagging")

    clock.advance(5)
    await lagging.send(m.Heartbeat())
    await lagging.expect(m.HeartbeatAck)  # within the grace: served as usual
    clock.advance(50)  # past the expiry, and the reaper's next round
    code, reason = await lagging.wait_closed()
    assert code == 1008 and "previous signing key expired" in (reason or "")

    await rotated.send(m.Heartbeat())
    await rotated.expect(m.HeartbeatAck)  # the current key's workers stay
    late = await RawWorker.open(gw.connect_port)
    await late.send(m.Answer(instance_id="late", mac=answer(old, late.challenge.nonce, "late")))
    assert (await late.expect(m.Error)).code == "unauthorized"
