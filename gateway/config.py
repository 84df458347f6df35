"""The gateway's settings: built once by the command line, frozen, handed to the app."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protocol.errors import InvalidInput

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
    dev: bool = False
    retry_base: float = 10.0
    heartbeat_interval: float = 5.0
    log_format: str = "console"
    log_level: str = "info"
    max_event_size: int = 512 * 1024
    max_request_size: int = 3 * 1024 * 1024
    #: Largest frame a worker may send; by default 8 MiB, or a step result plus 1 MiB.
    max_frame_size: int | None = None
    max_steps: int = 1000
    max_step_result: int = 4 * 1024 * 1024
    max_run_state: int = 32 * 1024 * 1024
    gateway_id: str = ""
    #: Gateways sharing a database beat this often, and are presumed dead after ``peer_ttl``
    #: without a beat: their leases are requeued and their timers taken over by others.
    peer_beat: float = 1.0
    peer_ttl: float = 5.0
    #: On stop, how long workers told to go away get to disconnect by themselves.
    go_away_grace: float = 5.0

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
                "`python -m gateway keys` makes one), or run with --dev for local use without auth"
            )
        if self.heartbeat_interval <= 0:
            raise InvalidInput("--heartbeat-interval must be positive")
        if self.retry_base < 0:
            raise InvalidInput("--retry-base must not be negative")
        if min(self.max_steps, self.max_step_result, self.max_run_state) < 1:
            raise InvalidInput("--max-steps, --max-step-result and --max-run-state must be "
                               "positive")
        db_backend(self.db)


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
