"""The gateway's settings: built once by the command line, frozen, handed to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.transport.auth import check_strength
from protocol.durations import to_seconds
from protocol.errors import InvalidInput
from protocol.limits import (
    MAX_EVENT_SIZE,
    MAX_REQUEST_SIZE,
    MAX_RUN_STATE,
    MAX_STEP_RESULT,
    MAX_STEPS,
)

DEFAULT_DB = "sqlite:///.tether/tether.db"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8288
    connect_port: int = 8289
    db: str = DEFAULT_DB
    signing_keys: list[str] = field(default_factory=list)
    event_keys: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)
    #: Signing keys being rotated out, accepted until ``previous_key_expires``.
    previous_signing_keys: list[str] = field(default_factory=list)
    #: An ISO 8601 time, or a duration from the gateway's start ("24h").
    previous_key_expires: str = "24h"
    #: Keys made with ``python -m gateway keys`` are re-read this often (seconds): a revoked
    #: key is refused within that time.
    key_refresh: float = 1.0
    #: Worker sockets that have not proven their key yet, at most; more are closed at once.
    max_handshakes: int = 64
    #: Seconds a new worker socket gets to prove its key and say hello.
    handshake_timeout: float = 10.0
    dev: bool = False
    #: Also serve apps written with Inngest's official SDKs in connect mode (gateway/inngest).
    inngest: bool = False
    retry_base: float = 10.0
    heartbeat_interval: float = 5.0
    log_format: str = "console"
    log_level: str = "info"
    max_event_size: int = MAX_EVENT_SIZE
    max_request_size: int = MAX_REQUEST_SIZE
    #: Largest frame a worker may send; by default 8 MiB, or a step result plus 1 MiB.
    max_frame_size: int | None = None
    max_steps: int = MAX_STEPS
    max_step_result: int = MAX_STEP_RESULT
    max_run_state: int = MAX_RUN_STATE
    gateway_id: str = ""
    #: Gateways sharing a database beat this often, and are presumed dead after ``peer_ttl``
    #: without a beat: their leases are requeued and their timers taken over by others.
    peer_beat: float = 1.0
    peer_ttl: float = 5.0
    #: On stop, how long workers told to go away get to disconnect by themselves.
    go_away_grace: float = 5.0
    #: OpenTelemetry span export: none, otlp or console (cmdline.tracing; extra tether[otel]).
    traces: str = "none"
    #: A link to a run's trace in the tracing UI, with ``{trace_id}`` in it (API, dashboard).
    trace_url: str | None = None

    @property
    def frame_limit(self) -> int:
        if self.max_frame_size is not None:
            return self.max_frame_size
        return max(8 * 1024 * 1024, self.max_step_result + 1024 * 1024)

    def check(self) -> None:
        """Refuse settings that cannot work, saying how to fix them.

        Raises:
            InvalidInput: with the option to change.
        """
        if not self.dev and not self.signing_keys:
            raise InvalidInput(
                "a signing key is required: pass --signing-key (or set TETHER_SIGNING_KEY; "
                "`python -m gateway keys create --kind signing` makes one), or run with --dev for "
                "local use without auth"
            )
        if not self.dev:
            self._check_keys()
        self.previous_until(0.0)
        if self.key_refresh <= 0 or self.handshake_timeout <= 0 or self.max_handshakes < 1:
            raise InvalidInput("--key-refresh, --handshake-timeout and --max-handshakes must "
                               "be positive")
        if self.heartbeat_interval <= 0:
            raise InvalidInput("--heartbeat-interval must be positive")
        if self.retry_base < 0:
            raise InvalidInput("--retry-base must not be negative")
        if min(self.max_steps, self.max_step_result, self.max_run_state) < 1:
            raise InvalidInput("--max-steps, --max-step-result and --max-run-state must be "
                               "positive")
        db_backend(self.db)
        if self.trace_url is not None and "{trace_id}" not in self.trace_url:
            raise InvalidInput(f"--trace-url {self.trace_url!r} has no {{trace_id}} in it; "
                               "e.g. http://localhost:16686/trace/{trace_id}")

    def _check_keys(self) -> None:
        groups = (("--signing-key", self.signing_keys, "signing"),
                  ("--previous-signing-key", self.previous_signing_keys, "signing"),
                  ("--api-key", self.api_keys, "api"),
                  ("--event-key", self.event_keys, "event"))
        for flag, keys, kind in groups:
            for index, key in enumerate(keys, 1):
                what = flag if len(keys) == 1 else f"{flag} #{index}"
                check_strength(key, what=what, kind=kind)

    def previous_until(self, started: float) -> float | None:
        """When ``--previous-signing-key`` stops working (epoch s), for a gateway started then.

        Raises:
            InvalidInput: ``--previous-key-expires`` is neither a time nor a duration.
        """
        if not self.previous_signing_keys:
            return None
        text = self.previous_key_expires.strip()
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return started + to_seconds(text, what="--previous-key-expires")
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def db_backend(url: str) -> tuple[str, str]:
    """Split a ``--db`` value into (backend, location).

    ``sqlite:///relative/path``, ``sqlite:////absolute/path``, a bare file path, or
    ``postgresql://user@host/db``.

    Raises:
        InvalidInput: for any other scheme.
    """
    if url.startswith("sqlite:///"):
        return "sqlite", url[len("sqlite:///"):]
    if url.startswith(("postgresql://", "postgres://")):
        return "postgres", url
    if "://" in url:
        raise InvalidInput(
            f"--db {url!r}: unknown scheme; use sqlite:///path/to/file.db or postgresql://..."
        )
    return "sqlite", str(Path(url))
