"""Keys: strength rules, the authenticator's decisions (stored keys, read-only, rotation grace),
settings refusing weak keys, event keys kept out of logs, and the name rules."""

from __future__ import annotations

import secrets

import pytest

from gateway.clock import FakeClock
from gateway.config import Settings
from gateway.http.api import loggable_path
from gateway.transport.auth import (
    MIN_EVENT_KEY_BITS,
    MIN_KEY_BITS,
    Authenticator,
    StoredKey,
    check_strength,
    key_bits,
    key_hash,
    new_key,
)
from protocol import auth as proof
from protocol.errors import AuthError, InvalidInput
from protocol.names import check_no_nul, is_reserved

SIGNING = "signkey-dT25LeJE48-y0QWLiTyAR-9XD1krsY1cFZz9cQfkgHE"
OLD_SIGNING = "signkey-0PluuBHVIpw4VjdPya8pocC_ZuCNH2eeLQfwObkA8Fs"
EVENT = "evtkey-MFuYiPUODFbl8RW7emXlYw"


# --- strength --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["signing", "event", "api"])
def test_made_keys_are_strong_and_say_what_they_are(kind):
    key = new_key(kind)
    assert key.startswith({"signing": "signkey-", "event": "evtkey-", "api": "apikey-"}[kind])
    assert key_bits(key) >= MIN_KEY_BITS
    check_strength(key, what="k", kind=kind)
    assert new_key(kind) != key


@pytest.mark.parametrize(("key", "strong"), [
    (secrets.token_hex(32), True),  # 64 hex characters: 256 bits
    (secrets.token_hex(32)[:63], False),
    (secrets.token_urlsafe(32), True),  # 43 base64url characters
    ("signkey-" + secrets.token_urlsafe(32)[:42], False),  # the prefix does not count
    ("", False),
    ("x", False),
    ("a" * 200, False),  # length without variety is no entropy
    ("abcdefg" * 30, False),  # seven distinct characters
], ids=["hex-64", "hex-63", "base64url-43", "prefixed-42", "empty", "one-char", "one-char-200",
        "seven-chars"])  # fixed ids: every xdist worker must collect the same test names
def test_a_signing_key_needs_256_bits(key, strong):
    if strong:
        check_strength(key, what="--signing-key", kind="signing")
    else:
        with pytest.raises(InvalidInput) as info:
            check_strength(key, what="--signing-key", kind="signing")
        message = info.value.message
        assert "--signing-key is too weak" in message
        assert "python -m gateway keys create --kind signing" in message
        assert "64 hex or 43 base64url" in message
        if len(key) > 8:
            assert key not in message  # a secret never appears in a message


def test_an_event_key_needs_128_bits():
    check_strength(secrets.token_hex(16), what="--event-key", kind="event")
    check_strength(EVENT, what="--event-key", kind="event")
    assert key_bits(secrets.token_hex(16)) == MIN_EVENT_KEY_BITS
    with pytest.raises(InvalidInput, match="32 hex or 22 base64url"):
        check_strength(secrets.token_hex(15), what="--event-key", kind="event")


def test_a_non_dev_gateway_refuses_weak_keys_of_every_kind():
    good = {"signing_keys": [SIGNING], "event_keys": [EVENT]}
    Settings(**good).check()
    for field, weak, flag in [("signing_keys", [""], "--signing-key"),
                              ("signing_keys", [SIGNING, "x"], "--signing-key #2"),
                              ("event_keys", ["dev"], "--event-key"),
                              ("api_keys", ["ops-key"], "--api-key"),
                              ("previous_signing_keys", ["old"], "--previous-signing-key")]:
        with pytest.raises(InvalidInput) as info:
            Settings(**{**good, field: weak}).check()
        assert info.value.message.startswith(f"{flag} is too weak"), info.value.message
    Settings(dev=True, signing_keys=["x"], event_keys=["dev"]).check()  # --dev: local use


def test_previous_key_expiry_is_a_time_or_a_duration_from_start():
    settings = Settings(signing_keys=[SIGNING], previous_signing_keys=[OLD_SIGNING])
    assert settings.previous_until(1000.0) == 1000.0 + 24 * 3600
    at = Settings(signing_keys=[SIGNING], previous_signing_keys=[OLD_SIGNING],
                  previous_key_expires="2030-01-01T00:00:00Z")
    assert at.previous_until(0.0) == 1893456000.0
    with pytest.raises(InvalidInput, match="--previous-key-expires"):
        Settings(signing_keys=[SIGNING], previous_signing_keys=[OLD_SIGNING],
                 previous_key_expires="soon").check()


# --- the authenticator -----------------------------------------------------------------------


def test_stored_keys_count_from_the_refresh_that_reads_them_until_the_one_that_drops_them():
    auth = Authenticator(dev=False, signing_keys=[SIGNING], event_keys=[EVENT])
    stored = new_key("event")
    with pytest.raises(AuthError):
        auth.check_event_key(stored)
    auth.load([StoredKey(key_hash(stored), "event")])
    auth.check_event_key(stored)
    auth.check_event_key(EVENT)  # the command line's keys stay
    auth.load([])  # revoked
    with pytest.raises(AuthError):
        auth.check_event_key(stored)
    auth.check_event_key(EVENT)


def test_a_stored_event_key_is_no_bearer_and_an_api_key_is_no_event_key():
    auth = Authenticator(dev=False, signing_keys=[SIGNING], event_keys=[])
    event, api = new_key("event"), new_key("api")
    auth.load([StoredKey(key_hash(event), "event"), StoredKey(key_hash(api), "api")])
    with pytest.raises(AuthError):
        auth.check_bearer(f"Bearer {event}")
    with pytest.raises(AuthError):
        auth.check_event_key(api)
    auth.check_bearer(f"Bearer {api}", "POST")


def test_a_read_only_api_key_opens_reads_only():
    auth = Authenticator(dev=False, signing_keys=[SIGNING], event_keys=[])
    key = new_key("api")
    auth.load([StoredKey(key_hash(key), "api", read_only=True)])
    auth.check_bearer(f"Bearer {key}", "GET")
    with pytest.raises(AuthError, match="read-only"):
        auth.check_bearer(f"Bearer {key}", "POST")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic " + SIGNING,
                                    "Bearer " + SIGNING[:-1]])
def test_an_empty_or_wrong_bearer_is_refused(header):
    auth = Authenticator(dev=False, signing_keys=[SIGNING], event_keys=[EVENT])
    with pytest.raises(AuthError):
        auth.check_bearer(header)
    auth.check_bearer(f"Bearer {SIGNING}")


def test_a_previous_signing_key_works_until_it_expires():
    clock = FakeClock()
    auth = Authenticator(dev=False, signing_keys=[SIGNING], event_keys=[],
                         previous_signing_keys=[OLD_SIGNING],
                         previous_until=clock.now() + 3600, now=clock.now)
    nonce = b"n" * 32
    assert auth.check_worker(nonce, "w", proof.answer(OLD_SIGNING, nonce, "w")) is True
    assert auth.check_worker(nonce, "w", proof.answer(SIGNING, nonce, "w")) is False
    auth.check_bearer(f"Bearer {OLD_SIGNING}")
    clock.advance(3599)
    assert not auth.previous_expired()
    auth.check_worker(nonce, "w", proof.answer(OLD_SIGNING, nonce, "w"))
    clock.advance(1)
    assert auth.previous_expired()
    with pytest.raises(AuthError):
        auth.check_worker(nonce, "w", proof.answer(OLD_SIGNING, nonce, "w"))
    with pytest.raises(AuthError):
        auth.check_bearer(f"Bearer {OLD_SIGNING}")
    auth.check_worker(nonce, "w", proof.answer(SIGNING, nonce, "w"))


def test_the_key_store_keeps_hashes_not_keys():
    key = new_key("event")
    assert key_hash(key) != key and len(key_hash(key)) == 64
    assert key_hash(key) == key_hash(key)


# --- logs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/e/" + EVENT, "/e/" + EVENT + "/extra", "/e/"])
def test_event_keys_are_redacted_from_logged_paths(path):
    logged = loggable_path(path)
    assert EVENT not in logged
    assert logged == "/e/<redacted>"


def test_other_paths_are_logged_as_they_are():
    assert loggable_path("/v1/runs/abc") == "/v1/runs/abc"


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tether/x", "Tether/x", "TETHER/function.finished",
                                  "tEtHeR/"])
def test_the_reserved_prefix_ignores_letter_case(name):
    assert is_reserved(name)


@pytest.mark.parametrize("name", ["tether.x", "tethers/x", "shop/tether/x", "tether"])
def test_names_near_the_prefix_are_not_reserved(name):
    assert not is_reserved(name)


def test_nul_is_refused_by_name():
    assert check_no_nul("ok", "step id") == "ok"
    with pytest.raises(InvalidInput, match="step id contains a NUL"):
        check_no_nul("a\x00b", "step id")


@pytest.mark.parametrize("option", ["trigger", "cancel"])
def test_a_nul_in_a_declared_event_name_fails_at_import(option):
    from pydantic import ValidationError

    from protocol.manifest import Cancel, TriggerEvent

    with pytest.raises((InvalidInput, ValidationError), match="NUL"):
        (TriggerEvent if option == "trigger" else Cancel)("shop/\x00paid")


@pytest.mark.parametrize("field", ["step_id", "run_id"])
def test_a_checkpoint_with_a_nul_id_is_a_bad_frame(field):
    import msgpack

    from protocol.codec import decode
    from protocol.errors import RemoteProtocolError

    step = {"type": "step_completed", "seq": 1, "run_id": "r", "fence": 1, "step_id": "a",
            "attempt": 0, "output": b"1", "started_at": 1.0, "ended_at": 2.0}
    with pytest.raises(RemoteProtocolError, match=field):
        decode(msgpack.packb([{**step, field: "a\x00b"}]))
