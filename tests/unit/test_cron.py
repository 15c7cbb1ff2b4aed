"""When ticks fall (schedule/cron.py), which due ticks an evaluation fires (schedule/misfire.py), and what a
declaration may be (schedule/declare.py). No Redis."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from streamproc import App, ConfigError, Event
from streamproc.schedule.cron import Cron, Every, nth_after, tick_text, tick_time
from streamproc.schedule.declare import NotEvents, Schedule, events_of
from streamproc.schedule.misfire import marker_ms, plan

BERLIN = ZoneInfo("Europe/Berlin")


def ms(text: str, tz: ZoneInfo | None = None) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz or UTC)
    return round(moment.timestamp() * 1000)


def local(tick: int, tz: ZoneInfo = BERLIN) -> str:
    return tick_time(tick, tz).isoformat()


def ticks_after(cron: Cron | Every, start: int, n: int, tz: ZoneInfo = BERLIN) -> list[str]:
    out = []
    for _ in range(n):
        start = cron.after(start)
        out.append(local(start, tz))
    return out


def test_five_fields_with_names_and_ranges() -> None:
    weekdays = Cron("0 9 * * mon-fri", BERLIN)
    # Friday 2026-03-27 10:00 -> Monday, Tuesday (the weekend skipped; CET -> CEST between them)
    assert ticks_after(weekdays, ms("2026-03-27T10:00", BERLIN), 3) == [
        "2026-03-30T09:00:00+02:00", "2026-03-31T09:00:00+02:00", "2026-04-01T09:00:00+02:00"]
    ranges = Cron("15,45 8-9 1 jan,jul *", UTC)
    assert ticks_after(ranges, ms("2026-01-01T08:20"), 4, ZoneInfo("UTC")) == [
        "2026-01-01T08:45:00+00:00", "2026-01-01T09:15:00+00:00", "2026-01-01T09:45:00+00:00",
        "2026-07-01T08:15:00+00:00"]
    steps = Cron("*/20 * * * *", UTC)
    assert ticks_after(steps, ms("2026-05-01T10:59:59"), 3, ZoneInfo("UTC")) == [
        "2026-05-01T11:00:00+00:00", "2026-05-01T11:20:00+00:00", "2026-05-01T11:40:00+00:00"]


def test_six_fields_have_seconds_first() -> None:
    every_ten = Cron("*/10 * * * * *", UTC)
    start = ms("2026-05-01T10:00:05")
    assert [tick_text(t) for t in (every_ten.after(start), every_ten.before(start), every_ten.at_or_before(start))] \
        == ["2026-05-01T10:00:10Z", "2026-05-01T10:00:00Z", "2026-05-01T10:00:00Z"]
    at_thirty = Cron("30 0 12 * * *", UTC)  # 12:00:30 every day
    assert tick_text(at_thirty.after(ms("2026-05-01T12:00:00"))) == "2026-05-01T12:00:30Z"


def test_before_and_at_or_before_are_exact_at_ticks_and_within_seconds() -> None:
    minutely = Cron("* * * * *", UTC)
    tick = ms("2026-05-01T10:01:00")
    assert minutely.at_or_before(tick) == tick
    assert minutely.before(tick) == tick - 60_000
    assert minutely.at_or_before(tick + 999) == tick  # inside the tick's own second
    assert minutely.before(tick + 1) == tick
    assert minutely.after(tick) == tick + 60_000


def test_every_is_aligned_to_the_epoch() -> None:
    every = Every(30_000)
    assert every.at_or_before(ms("2026-05-01T10:00:29.999")) == ms("2026-05-01T10:00:00")
    assert every.after(ms("2026-05-01T10:00:00")) == ms("2026-05-01T10:00:30")
    assert every.before(ms("2026-05-01T10:00:30")) == ms("2026-05-01T10:00:00")
    assert nth_after(every, ms("2026-05-01T10:00:00"), 4) == ms("2026-05-01T10:02:00")
    assert every.describe() == "every 30s" and Every(3_600_000).describe() == "every 1h"
    assert Every(1_500).describe() == "every 1.5s"


def test_spring_forward_a_daily_0230_fires_at_0300_and_an_hourly_skips_the_lost_hour() -> None:
    """Europe/Berlin 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:30 does not exist that day."""
    daily = Cron("30 2 * * *", BERLIN)
    assert ticks_after(daily, ms("2026-03-28T12:00", BERLIN), 3) == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]
    # backwards the same ticks, so a missed one is found again by walking back from now
    assert local(daily.at_or_before(ms("2026-03-29T12:00", BERLIN))) == "2026-03-29T03:00:00+02:00"
    assert local(daily.before(ms("2026-03-29T03:00", BERLIN))) == "2026-03-28T02:30:00+01:00"
    hourly = Cron("30 * * * *", BERLIN)
    assert ticks_after(hourly, ms("2026-03-29T01:00", BERLIN), 3) == [
        "2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00", "2026-03-29T04:30:00+02:00"]


def test_fall_back_a_daily_0230_fires_once_and_an_hourly_fires_in_both_passes() -> None:
    """Europe/Berlin 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:30 happens twice (+02:00, then +01:00)."""
    daily = Cron("30 2 * * *", BERLIN)
    assert ticks_after(daily, ms("2026-10-24T12:00", BERLIN), 2) == [
        "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]
    assert local(daily.at_or_before(ms("2026-10-26T00:00", BERLIN))) == "2026-10-25T02:30:00+02:00"
    assert local(daily.before(ms("2026-10-26T02:30", BERLIN))) == "2026-10-25T02:30:00+02:00"
    hourly = Cron("30 * * * *", BERLIN)
    assert ticks_after(hourly, ms("2026-10-25T01:00", BERLIN), 3) == [
        "2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"]
    assert ticks_after(hourly, ms("2026-10-25T01:00", BERLIN), 3)[1:] == [
        local(t) for t in (ms("2026-10-25T00:30Z"), ms("2026-10-25T01:30Z"))]  # one real hour apart


@pytest.mark.parametrize("expression", ["* * * *", "* * * * * * *", "61 * * * *", "0 25 * * *", "0 9 * * fun",
                                        "0 0 30 2 *", "", "every day"])
def test_bad_expressions_are_refused_at_declaration(expression: str) -> None:
    with pytest.raises(ConfigError):
        Cron(expression, UTC)


class Tick(Event, tag="test.tick"):
    at: str


def schedule(misfire: str = "latest", every_ms: int = 60_000, max_catchup: int = 3) -> Schedule:
    return Schedule("s", lambda t: Tick(at=""), Every(every_ms), UTC, misfire, max_catchup, None)  # type: ignore[arg-type]


NOW = ms("2026-05-01T10:00:03")
TICK = ms("2026-05-01T10:00:00")
GRACE = 10_000


def texts(ticks: Sequence[int]) -> list[str]:
    return [tick_text(t)[11:19] for t in ticks]


def test_on_time_ticks_always_fire_in_order() -> None:
    every_second = schedule("skip", every_ms=1_000)
    # an evaluation 3 s late finds three on-time ticks after the last fired one: all fire, oldest first
    assert texts(plan(every_second, NOW, TICK - 1_000, GRACE).ticks) == ["10:00:00", "10:00:01", "10:00:02",
                                                                          "10:00:03"]
    assert plan(every_second, NOW, NOW, GRACE).ticks == ()


def test_misfire_policies_after_a_downtime() -> None:
    baseline = TICK - 10 * 60_000  # the last fired tick, 10 minutes ago; 9 missed since, then the on-time one
    assert texts(plan(schedule("latest"), NOW, baseline, GRACE).ticks) == ["10:00:00"]
    assert texts(plan(schedule("skip"), NOW, baseline, GRACE).ticks) == ["10:00:00"]
    assert texts(plan(schedule("all"), NOW, baseline, GRACE).ticks) == ["09:57:00", "09:58:00", "09:59:00",
                                                                         "10:00:00"]
    assert plan(schedule("all"), NOW, baseline, GRACE).dropped
    later = NOW + 30_000  # no tick on time: latest fires the most recent missed one, skip none
    assert texts(plan(schedule("latest"), later, baseline, GRACE).ticks) == ["10:00:00"]
    assert plan(schedule("skip"), later, baseline, GRACE).ticks == ()
    assert texts(plan(schedule("all"), later, baseline, GRACE).ticks) == ["09:58:00", "09:59:00", "10:00:00"]
    assert not plan(schedule("all"), later, TICK - 120_000, GRACE).dropped  # only two missed: none dropped


def test_dedup_markers_outlive_every_evaluation_that_could_find_the_tick_due() -> None:
    window = 86_400_000
    weekly = Every(7 * 86_400_000)
    caught_up = Schedule("w", lambda t: Tick(at=""), weekly, UTC, "all", 10, None)
    old = TICK - 3 * weekly.every_ms  # fired now during a catch-up: due again (if unrecorded) for 7 more weeks
    keep = marker_ms(caught_up, old, NOW, GRACE, window)
    assert keep >= old + 10 * weekly.every_ms - NOW + window
    # on time for 7 s more (the grace), never missed-and-due with skip: the window from then on
    assert marker_ms(schedule("skip"), TICK, NOW, GRACE, window) == TICK + GRACE - NOW + window
    assert marker_ms(schedule("latest"), TICK, NOW, GRACE, window) > 60_000 + window - 10_000


def test_return_values_must_be_events() -> None:
    assert events_of(Tick(at="a"), "s").listed is False
    assert len(events_of([Tick(at="a"), Tick(at="b")], "s").events) == 2
    assert events_of([], "s").events == []
    for wrong in (None, "text", [Tick(at="a"), 3], {"at": "a"}):
        with pytest.raises(NotEvents, match="not an Event or a list of Events"):
            events_of(wrong, "s")


def test_declarations_are_checked_at_registration() -> None:
    app = App("tcron")

    @app.cron("0 9 * * mon-fri", name="digest", tz="Europe/Berlin")
    def digest(tick: datetime) -> Tick | list[Tick]:
        return Tick(at=tick.isoformat())

    @app.cron(every=timedelta(seconds=30), name="trending")
    async def trending(tick: datetime) -> list[Tick]:
        return []

    assert sorted(app.schedules) == ["digest", "trending"]
    assert app.schedules["digest"].tz == BERLIN
    with pytest.raises(ConfigError, match="registered already"):
        app.cron(every=60, name="digest")
    with pytest.raises(ConfigError, match="annotated to return"):
        app.cron(every=60, name="none")(lambda_returning_none)  # type: ignore[type-var]
    with pytest.raises(ConfigError, match="annotated to return"):
        app.cron(every=60, name="text")(returns_text)  # type: ignore[type-var]
    wrong: list[tuple[dict[str, object], str]] = [
        ({"name": "x", "every": 0.5}, "shorter than a second"),
        ({"name": "x"}, "either a cron expression or every"),
        ({"name": "x", "every": 60, "expression": "* * * * *"}, "either a cron expression or every"),
        ({"name": "x", "every": 60, "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"name": "x", "every": 60, "misfire": "never"}, "misfire"),
        ({"name": "x", "every": 60, "max_catchup": 0}, "max_catchup"),
        ({"name": "a:b", "every": 60}, "must be non-empty and free of"),
    ]
    for kwargs, match in wrong:
        with pytest.raises(ConfigError, match=match):
            app.cron(**kwargs)(returns_tick)  # type: ignore[arg-type]
    assert sorted(app.schedules) == ["digest", "trending"]


def lambda_returning_none(tick: datetime) -> None:
    return None


def returns_text(tick: datetime) -> str:
    return "no"


def returns_tick(tick: datetime) -> Tick:
    return Tick(at="")
