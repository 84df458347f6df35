"""Cron schedules: parsing, the next tick, and which tick is due. Pure functions of time.

Ticks are wall-clock times in the schedule's time zone (croniter reads the expression; the
time-zone rules are written here, since croniter's own DST handling varies between versions):

- **DST gap** (a local time that does not exist, spring forward): the tick runs once, at the
  first instant after the gap. Several ticks in one gap, and a tick right at its end, are one
  tick (they fall on the same instant, and a (function, tick) pair starts one run).
- **DST overlap** (a local time that occurs twice, fall back): the tick runs once, at the first
  occurrence; the repeated wall times start nothing.
- **Missed ticks**: a tick less than :data:`GRACE` late runs, late; when the oldest due tick is
  later than that (the gateway was down), the missed ticks become one catch-up run, for the
  latest of them, never a storm.

Expressions have five fields (minute hour day-of-month month day-of-week), or six with a
leading seconds field (``*/2 * * * * *``: every two seconds), or a nickname (``@hourly``). A
``TZ=Area/City `` (or ``CRON_TZ=``) prefix sets the time zone, as the ``tz`` argument does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from protocol.errors import InvalidInput

#: A due tick later than this is missed (the gateway was down): the missed ticks collapse
#: into one catch-up run, for the latest.
GRACE = 10.0

#: The event a tick starts its run with (``data.cron``: the expression; ``ts``: the tick).
SCHEDULED_EVENT = "tether/scheduled.timer"

_PREFIXES = ("TZ=", "CRON_TZ=")
_NICKNAMES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                        "@hourly"})
_MINUTE = timedelta(minutes=1)
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated schedule: the expression (no time-zone prefix) and its time zone."""

    expression: str
    tz: str

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.tz)


@lru_cache(maxsize=4096)
def parse(cron: str, tz: str = "UTC") -> Schedule:
    """The schedule ``cron`` (maybe ``TZ=``-prefixed) describes, in ``tz`` unless prefixed.

    Raises:
        InvalidInput: naming what is wrong with the expression or time zone, and the syntax.
    """
    text = " ".join(cron.split())
    for prefix in _PREFIXES:
        if text.upper().startswith(prefix):
            zone_name, _, text = text[len(prefix):].partition(" ")
            if tz not in ("UTC", zone_name):
                raise InvalidInput(
                    f"cron {cron!r}: its {prefix} prefix says {zone_name!r} but tz={tz!r}; "
                    "give the time zone once")
            tz = zone_name
            break
    check_tz(tz, f"cron {cron!r}")
    fields = text.split()
    usage = ("write five fields (minute hour day-of-month month day-of-week, as in "
             "'0 9 * * MON'), six with a leading seconds field ('*/2 * * * * *'), or a "
             "nickname such as '@hourly'")
    if not fields or (len(fields) not in (5, 6) and not (
            len(fields) == 1 and fields[0].lower() in _NICKNAMES)):
        raise InvalidInput(f"cron {cron!r}: {len(fields)} fields; {usage}")
    try:
        it = croniter(text, datetime(2000, 1, 1), second_at_beginning=True)
        it.get_next(datetime)
    except Exception as exc:  # croniter raises several types for bad fields
        reason = "it never matches a date" if "find next date" in str(exc) else str(exc)
        raise InvalidInput(f"cron {cron!r}: {reason}; {usage}") from None
    return Schedule(text, tz)


def check_tz(tz: str, where: str = "cron") -> None:
    """Raises InvalidInput unless ``tz`` is an IANA time zone name (``Europe/Paris``)."""
    try:
        _zone(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidInput(
            f"{where}: unknown time zone {tz!r}; use an IANA name such as 'Europe/Paris' "
            "or 'UTC'") from None


@lru_cache(maxsize=512)
def _zone(tz: str) -> ZoneInfo:
    if not tz or "\x00" in tz:
        raise ValueError(tz)
    return ZoneInfo(tz)


@lru_cache(maxsize=4096)  # functions sharing a schedule tick together: computed once
def next_tick(schedule: Schedule, after: float) -> float:
    """The first tick strictly after ``after`` (epoch seconds), as epoch seconds."""
    zone = schedule.zone
    start = _wall(after, zone)
    it = croniter(schedule.expression, start, second_at_beginning=True)
    while True:
        tick = _instant(it.get_next(datetime), zone)
        if tick > after:
            return tick


@lru_cache(maxsize=4096)
def latest_tick(schedule: Schedule, at: float) -> float:
    """The last tick at or before ``at`` (epoch seconds)."""
    zone = schedule.zone
    start = _wall(at, zone) + _SECOND  # croniter's get_prev is strictly before its start
    it = croniter(schedule.expression, start, second_at_beginning=True)
    while True:
        tick = _instant(it.get_prev(datetime), zone)
        if tick <= at:
            return tick


def due(schedule: Schedule, next_at: float, now: float) -> tuple[float | None, float]:
    """The tick to fire now (or None), and the schedule's next tick after it.

    ``next_at`` is the tick the store has due. Call again with the returned next tick while
    a tick is returned: ticks less than :data:`GRACE` late run one by one; beyond that, only
    the latest missed tick runs.
    """
    if next_at > now:
        return None, next_at
    fire = next_at
    if now - next_at > GRACE:
        fire = max(next_at, latest_tick(schedule, now))
    return fire, next_tick(schedule, fire)


def missed(schedule: Schedule, next_at: float, fire: float, cap: int = 10_000) -> int:
    """How many ticks from ``next_at`` up to (not including) ``fire`` a catch-up skipped
    (counted up to ``cap``: a long outage of a fast schedule need not be walked tick by tick)."""
    count, at = 0, next_at
    while at < fire and count < cap:
        count += 1
        at = next_tick(schedule, at)
    return count


def _wall(at: float, zone: ZoneInfo) -> datetime:
    """The naive wall time to start croniter from, for ticks after ``at``.

    In the second pass of a repeated hour, every wall time up to the end of the repetition
    ran in the first pass: start after it (see the module's DST rules).
    """
    local = datetime.fromtimestamp(at, zone)
    wall = local.replace(tzinfo=None)
    if local.fold:
        end = wall.replace(second=0, microsecond=0)
        while _ambiguous(end, zone):
            end += _MINUTE
        wall = max(wall, end - _SECOND)
    return wall


def _ambiguous(wall: datetime, zone: ZoneInfo) -> bool:
    return (wall.replace(tzinfo=zone, fold=0).utcoffset()
            != wall.replace(tzinfo=zone, fold=1).utcoffset())


def _instant(wall: datetime, zone: ZoneInfo) -> float:
    """The instant a tick at naive wall time ``wall`` runs: its first occurrence, or, for a
    time inside a DST gap, the first instant after the gap."""
    if zone.key == "UTC":
        return wall.replace(tzinfo=UTC).timestamp()
    first = wall.replace(tzinfo=zone, fold=0).timestamp()
    if datetime.fromtimestamp(first, zone).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=0 and fold=1 read the wall time with the offsets either side of it, so
    # the transition lies between the two instants. Find its first second.
    other = wall.replace(tzinfo=zone, fold=1).timestamp()
    low, high = int(min(first, other)), int(max(first, other)) + 1
    after = datetime.fromtimestamp(high, zone).utcoffset()
    while low < high:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == after:
            high = middle
        else:
            low = middle + 1
    return float(low)
