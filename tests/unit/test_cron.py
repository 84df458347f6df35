"""Cron schedules as pure functions of (schedule, last tick, now): next ticks, time zones, both
DST transitions in two zones, missed ticks after downtime, and what registration refuses."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from protocol.cron import GRACE, due, latest_tick, missed, next_tick, parse
from protocol.errors import InvalidInput
from protocol.manifest import FunctionConfig, TriggerCron, check_function


def at(text: str, tz: str = "UTC") -> float:
    """Epoch seconds of a wall time in ``tz`` (its first occurrence if it occurs twice)."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def ticks(cron: str, tz: str, start: float, count: int) -> list[str]:
    schedule, out = parse(cron, tz), []
    for _ in range(count):
        start = next_tick(schedule, start)
        out.append(utc(start))
    return out


def test_next_ticks_in_utc():
    assert ticks("*/5 * * * *", "UTC", at("2026-01-01T10:02:00"), 3) == [
        "2026-01-01T10:05:00", "2026-01-01T10:10:00", "2026-01-01T10:15:00"]


def test_a_tick_is_strictly_after_the_time_given():
    assert ticks("*/5 * * * *", "UTC", at("2026-01-01T10:05:00"), 1) == ["2026-01-01T10:10:00"]


def test_a_time_zone_moves_the_ticks():
    # 09:00 in Paris on a Monday: 08:00 UTC in winter, 07:00 UTC in summer.
    assert ticks("0 9 * * MON", "Europe/Paris", at("2026-01-01T00:00:00"), 1) == [
        "2026-01-05T08:00:00"]
    assert ticks("0 9 * * MON", "Europe/Paris", at("2026-07-01T00:00:00"), 1) == [
        "2026-07-06T07:00:00"]


def test_the_tz_prefix_is_the_tz_argument():
    assert parse("TZ=Europe/Paris 0 9 * * MON") == parse("0 9 * * MON", "Europe/Paris")
    assert parse("CRON_TZ=America/New_York 0 9 * * *").tz == "America/New_York"
    with pytest.raises(InvalidInput, match="give the time zone once"):
        parse("TZ=Europe/Paris 0 9 * * MON", "America/New_York")


def test_a_leading_sixth_field_is_seconds():
    assert ticks("*/2 * * * * *", "UTC", at("2026-01-01T10:00:00"), 3) == [
        "2026-01-01T10:00:02", "2026-01-01T10:00:04", "2026-01-01T10:00:06"]


@pytest.mark.parametrize(("tz", "day", "after"), [
    ("Europe/Paris", "2026-03-29", "2026-03-30"), ("America/New_York", "2026-03-08", "2026-03-09")])
def test_spring_forward_a_missing_time_runs_once_at_the_next_valid_time(tz, day, after):
    # 02:30 does not exist that day: the tick runs once, when 03:00 begins.
    assert ticks("30 2 * * *", tz, at(f"{day}T00:00:00", tz), 2) == [
        utc(at(f"{day}T03:00:00", tz)), utc(at(f"{after}T02:30:00", tz))]
    # Ticks every half hour: 02:00, 02:30 and 03:00 fall on one instant, one tick.
    assert ticks("*/30 * * * *", tz, at(f"{day}T01:00:00", tz), 3) == [
        utc(at(f"{day}T01:30:00", tz)), utc(at(f"{day}T03:00:00", tz)),
        utc(at(f"{day}T03:30:00", tz))]


@pytest.mark.parametrize(("tz", "day"), [("Europe/Paris", "2026-10-25"),
                                         ("America/New_York", "2026-11-01")])
def test_fall_back_a_repeated_time_runs_once(tz, day):
    repeated = "02:30" if tz == "Europe/Paris" else "01:30"
    first = at(f"{day}T{repeated}:00", tz)  # the first occurrence
    start = at(f"{day}T00:00:00", tz)
    assert ticks(f"30 {repeated[:2]} * * *", tz, start, 2) == [
        utc(first), utc(at(f"{day}T{repeated}:00", tz) + 25 * 3600)]
    # Asked during the second occurrence (an hour later in UTC), the next tick is tomorrow's.
    assert ticks(f"30 {repeated[:2]} * * *", tz, first + 3600, 1) == [
        utc(first + 25 * 3600)]


def test_latest_tick_is_at_or_before():
    schedule = parse("*/5 * * * *")
    assert utc(latest_tick(schedule, at("2026-01-01T10:07:30"))) == "2026-01-01T10:05:00"
    assert utc(latest_tick(schedule, at("2026-01-01T10:05:00"))) == "2026-01-01T10:05:00"


def test_nothing_is_due_before_the_tick():
    schedule = parse("*/5 * * * *")
    tick = at("2026-01-01T10:05:00")
    assert due(schedule, tick, tick - 0.001) == (None, tick)


def test_a_tick_a_little_late_runs_and_so_does_the_next_one_due():
    schedule = parse("*/2 * * * * *")
    tick = at("2026-01-01T10:00:02")
    now = tick + GRACE - 1  # busy, not down: every tick due runs, in order
    fired = []
    fire, upcoming = due(schedule, tick, now)
    while fire is not None:
        fired.append(fire)
        fire, upcoming = due(schedule, upcoming, now)
    assert fired == [tick + 2 * i for i in range(len(fired))] and len(fired) == 5
    assert upcoming > now


def test_missed_ticks_after_downtime_are_one_catch_up_run_for_the_latest():
    schedule = parse("*/5 * * * *")
    tick = at("2026-01-01T10:05:00")
    now = at("2026-01-01T13:02:00")  # down for three hours: 35 ticks missed
    fire, upcoming = due(schedule, tick, now)
    assert utc(fire) == "2026-01-01T13:00:00"
    assert utc(upcoming) == "2026-01-01T13:05:00"
    assert due(schedule, upcoming, now) == (None, upcoming)  # no storm
    assert missed(schedule, tick, fire) == 35  # 10:05, 10:10, ... 12:55: counted, not run


def test_a_schedule_removed_by_a_new_version_is_no_longer_accepted_nor_needed():
    # What registration keeps is the triggers of the new version: see
    # tests/integration/test_cron.py::test_a_new_version_without_the_cron_trigger_stops_it.
    config = FunctionConfig(id="f", triggers=[TriggerCron("0 9 * * MON", tz="Europe/Paris")])
    check_function("app/f", config)  # a cron trigger is enforced now: accepted


@pytest.mark.parametrize(("cron", "tz", "says"), [
    ("* * *", "UTC", "3 fields"),
    ("* * * * * * *", "UTC", "7 fields"),
    ("61 * * * *", "UTC", "out of range"),
    ("0 0 30 2 *", "UTC", "never matches"),
    ("0 9 * * MON", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ("TZ=Nowhere 0 9 * * MON", "UTC", "unknown time zone 'Nowhere'"),
    ("H * * * *", "UTC", "Hashed"),
])
def test_bad_schedules_are_refused_at_declaration(cron, tz, says):
    with pytest.raises(InvalidInput, match=says) as info:
        TriggerCron(cron, tz=tz)
    assert str(info.value).startswith("TriggerCron: cron ")
