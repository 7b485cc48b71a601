"""Cron parsing and next-run times, at the edges: month ends, leap years, DST, day fields."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from itertools import product
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from henbackup.config.cron import CronSpec, parse_cron

PARIS = ZoneInfo("Europe/Paris")


def at(*fields: int, fold: int = 0, tz: ZoneInfo = PARIS) -> datetime:
    return datetime(*fields, tzinfo=tz, fold=fold)  # type: ignore[misc]


def runs(expression: str, start: datetime, count: int) -> list[str]:
    """The next `count` runs after start, as "YYYY-MM-DD HH:MM:SS+ZZ:ZZ" strings."""
    spec, times = parse_cron(expression), []
    for _ in range(count):
        start = spec.next_after(start)
        times.append(start.isoformat(sep=" "))
    return times


# ---------------------------------------------------------------------------- parsing


def test_five_fields_mean_second_zero() -> None:
    spec = parse_cron("*/15 2 * * *")
    assert spec.seconds == (0,)
    assert spec.minutes == (0, 15, 30, 45)
    assert spec.hours == (2,)
    assert spec.days == tuple(range(1, 32))
    assert spec.months == tuple(range(1, 13))
    assert spec.weekdays == tuple(range(7))
    assert not spec.days_restricted
    assert not spec.weekdays_restricted


def test_six_fields_start_with_seconds() -> None:
    spec = parse_cron("*/20 5 4 * * *")
    assert (spec.seconds, spec.minutes, spec.hours) == ((0, 20, 40), (5,), (4,))


@pytest.mark.parametrize(
    ("field", "minutes"),
    [
        ("1,2,3", (1, 2, 3)),
        ("1-5", (1, 2, 3, 4, 5)),
        ("1-30/5", (1, 6, 11, 16, 21, 26)),
        ("50/3", (50, 53, 56, 59)),
        ("*/25", (0, 25, 50)),
        ("5,1-3,*/30", (0, 1, 2, 3, 5, 30)),
        ("7-7", (7,)),
        ("0-59/60", (0,)),
        ("59", (59,)),
    ],
)
def test_minute_field_forms(field: str, minutes: tuple[int, ...]) -> None:
    assert parse_cron(f"{field} * * * *").minutes == minutes


def test_month_and_day_names_are_case_insensitive() -> None:
    spec = parse_cron("0 0 * JAN,mar-May,Dec Mon-FRI")
    assert spec.months == (1, 3, 4, 5, 12)
    assert spec.weekdays == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(("field", "weekdays"), [("0", (0,)), ("7", (0,)), ("5-7", (0, 5, 6))])
def test_sunday_is_zero_and_seven(field: str, weekdays: tuple[int, ...]) -> None:
    assert parse_cron(f"0 0 * * {field}").weekdays == weekdays


@pytest.mark.parametrize(
    ("expression", "restricted"),
    [
        ("0 0 * * *", (False, False)),
        ("0 0 1 * *", (True, False)),
        ("0 0 * * 1", (False, True)),
        ("0 0 1 * 1", (True, True)),
        ("0 0 */2 * 1", (False, True)),  # Vixie: a field starting with * is not a restriction
    ],
)
def test_restricted_day_fields(expression: str, restricted: tuple[bool, bool]) -> None:
    spec = parse_cron(expression)
    assert (spec.days_restricted, spec.weekdays_restricted) == restricted


@pytest.mark.parametrize(
    ("macro", "expression"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@HOURLY", "0 * * * *"),
    ],
)
def test_macros(macro: str, expression: str) -> None:
    spec, expected = parse_cron(macro), parse_cron(expression)
    assert spec.expression == macro
    assert (spec.minutes, spec.hours, spec.days, spec.months, spec.weekdays) == (
        expected.minutes,
        expected.hours,
        expected.days,
        expected.months,
        expected.weekdays,
    )


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("* * * *", "a cron expression has 5 fields (minute hour day-of-month month "),
        ("* * * * * * *", "or 6 with seconds first, not 7"),
        ("", "not 0"),
        ("60 * * * *", "minute 60 is out of range 0-59"),
        ("* 24 * * *", "hour 24 is out of range 0-23"),
        ("* * 0 * *", "day-of-month 0 is out of range 1-31"),
        ("* * 32 * *", "day-of-month 32 is out of range 1-31"),
        ("* * * 13 *", "month 13 is out of range 1-12"),
        ("* * * * 8", "day-of-week 8 is out of range 0-7"),
        ("60 * * * * *", "second 60 is out of range 0-59"),
        ("x * * * *", 'minute "x" is not a number'),
        ("* * * foo *", 'month "foo" is not a number or a name (jan, feb,'),
        ("* * * * sunday", 'day-of-week "sunday" is not a number or a name (sun, mon,'),
        ("* * * * jan", 'day-of-week "jan" is not a number or a name'),
        ("-5 * * * *", 'minute "" is not a number'),
        ("1,,2 * * * *", 'minute "" is not a number'),
        ("5-1 * * * *", 'minute range "5-1" goes backwards: write the smaller first'),
        ("*/0 * * * *", 'minute step "0" must be a whole number above 0'),
        ("*/x * * * *", 'minute step "x" must be a whole number above 0'),
        ("1-2-3 * * * *", 'minute "2-3" is not a number'),
        ("99999999999999999999 * * * *", "minute 99999999999999999999 is out of range 0-59"),
        ("0000000060 * * * *", "minute 0000000060 is out of range 0-59"),
        ("*/0000000000 * * * *", 'minute step "0000000000" must be a whole number above 0'),
        ("0 0 30 2 *", "never matches: no day of the day-of-month field exists in feb"),
        ("0 0 31 2 *", "never matches: no day of the day-of-month field exists in feb"),
        ("0 0 31 4,6,9,11 *", "exists in apr, jun, sep, nov"),
        ("0 0 30,31 feb */2", "exists in feb"),
    ],
)
def test_invalid_expressions(expression: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_cron(expression)
    assert message in str(error.value)


def test_leading_zeros_are_the_number_they_write() -> None:
    spec = parse_cron("0000000001 */00000000006 * * *")
    assert (sorted(spec.minutes), sorted(spec.hours)) == ([1], [0, 6, 12, 18])


def test_not_a_string() -> None:
    with pytest.raises(ValueError, match=r"^a cron expression is a string$"):
        parse_cron(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "expression",
    ["0 0 29 2 *", "0 0 31 2 1", "0 0 31 1-2 *", "0 0 29,30 feb mon", "0 0 29 2 */3"],
)
def test_possible_day_combinations_are_accepted(expression: str) -> None:
    parse_cron(expression).next_after(at(2024, 1, 1))


# ------------------------------------------------------------------------ next_after


def test_next_after_is_strictly_after() -> None:
    spec = parse_cron("0 * * * *")
    assert spec.next_after(at(2024, 5, 1, 10, 0)) == at(2024, 5, 1, 11, 0)
    assert spec.next_after(at(2024, 5, 1, 9, 59, 59, 999999)) == at(2024, 5, 1, 10, 0)
    assert spec.next_after(at(2024, 5, 1, 10, 0, 0, 1)) == at(2024, 5, 1, 11, 0)


def test_every_minute_steps() -> None:
    assert runs("*/15 * * * *", at(2024, 5, 1, 23, 40), 3) == [
        "2024-05-01 23:45:00+02:00",
        "2024-05-02 00:00:00+02:00",
        "2024-05-02 00:15:00+02:00",
    ]


def test_seconds_field() -> None:
    assert runs("*/20 * * * * *", at(2024, 5, 1, 10, 0, 59), 4) == [
        "2024-05-01 10:01:00+02:00",
        "2024-05-01 10:01:20+02:00",
        "2024-05-01 10:01:40+02:00",
        "2024-05-01 10:02:00+02:00",
    ]
    assert runs("30 59 23 31 12 *", at(2024, 12, 31, 23, 59, 30), 1) == [
        "2025-12-31 23:59:30+01:00"
    ]


def test_the_last_day_of_long_months_only() -> None:
    assert runs("0 12 31 * *", at(2024, 1, 31, 12), 4) == [
        "2024-03-31 12:00:00+02:00",
        "2024-05-31 12:00:00+02:00",
        "2024-07-31 12:00:00+02:00",
        "2024-08-31 12:00:00+02:00",
    ]


def test_day_30_skips_february() -> None:
    assert runs("0 0 30 * *", at(2023, 1, 30, 1), 2) == [
        "2023-03-30 00:00:00+02:00",
        "2023-04-30 00:00:00+02:00",
    ]


def test_february_29_only_in_leap_years() -> None:
    assert runs("0 0 29 2 *", at(2023, 6, 1), 3) == [
        "2024-02-29 00:00:00+01:00",
        "2028-02-29 00:00:00+01:00",
        "2032-02-29 00:00:00+01:00",
    ]


def test_february_29_skips_2100_which_is_not_a_leap_year() -> None:
    assert runs("0 0 29 2 *", at(2096, 3, 1), 1) == ["2104-02-29 00:00:00+01:00"]


def test_february_29_on_a_sunday_waits_decades() -> None:
    # dow "*/7" starts with "*": both day fields must match (Vixie), Sunday 29 Feb is rare.
    assert runs("0 0 29 2 */7", at(2004, 3, 1), 2) == [
        "2032-02-29 00:00:00+01:00",
        "2060-02-29 00:00:00+01:00",
    ]


def test_year_end_rollover() -> None:
    assert runs("0 0 1 1 *", at(2024, 12, 31, 23, 59, 59), 1) == ["2025-01-01 00:00:00+01:00"]
    assert runs("@yearly", at(2025, 1, 1), 1) == ["2026-01-01 00:00:00+01:00"]


def test_month_list_skips_other_months() -> None:
    assert runs("0 8 15 mar,sep *", at(2024, 3, 15, 8), 3) == [
        "2024-09-15 08:00:00+02:00",
        "2025-03-15 08:00:00+01:00",
        "2025-09-15 08:00:00+02:00",
    ]


def test_either_day_field_matches_when_both_are_restricted() -> None:
    # 2024-09-13 is a Friday; the 13th or any Friday.
    assert runs("0 0 13 * fri", at(2024, 9, 1), 4) == [
        "2024-09-06 00:00:00+02:00",
        "2024-09-13 00:00:00+02:00",
        "2024-09-20 00:00:00+02:00",
        "2024-09-27 00:00:00+02:00",
    ]
    assert runs("0 0 1 * 1", at(2024, 6, 25), 3) == [
        "2024-07-01 00:00:00+02:00",  # both a Monday and the 1st
        "2024-07-08 00:00:00+02:00",
        "2024-07-15 00:00:00+02:00",
    ]


def test_both_day_fields_must_match_when_one_starts_with_a_star() -> None:
    # Odd days that are Mondays.
    assert runs("0 0 */2 * mon", at(2024, 7, 1), 3) == [
        "2024-07-15 00:00:00+02:00",
        "2024-07-29 00:00:00+02:00",
        "2024-08-05 00:00:00+02:00",
    ]


def test_weekday_only() -> None:
    assert runs("0 9 * * mon-fri", at(2024, 5, 3, 9), 2) == [  # a Friday
        "2024-05-06 09:00:00+02:00",
        "2024-05-07 09:00:00+02:00",
    ]
    assert runs("0 9 * * 7", at(2024, 5, 3), 1) == ["2024-05-05 09:00:00+02:00"]


def test_day_of_month_only() -> None:
    assert runs("0 0 1,15 * *", at(2024, 1, 15), 2) == [
        "2024-02-01 00:00:00+01:00",
        "2024-02-15 00:00:00+01:00",
    ]


def test_utc_and_fixed_offsets() -> None:
    spec = parse_cron("0 3 * * *")
    assert spec.next_after(datetime(2024, 3, 31, 2, tzinfo=UTC)) == datetime(
        2024, 3, 31, 3, tzinfo=UTC
    )


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        parse_cron("* * * * *").next_after(datetime(2024, 1, 1))


# ---------------------------------------------------------------- daylight saving time
# Europe/Paris: 2024-03-31 02:00 CET jumps to 03:00 CEST; 2024-10-27 03:00 CEST falls back
# to 02:00 CET, so 02:00-02:59 happens twice.


def test_a_time_in_the_spring_gap_fires_when_the_gap_ends() -> None:
    assert runs("30 2 * * *", at(2024, 3, 30, 3), 3) == [
        "2024-03-31 03:00:00+02:00",
        "2024-04-01 02:30:00+02:00",
        "2024-04-02 02:30:00+02:00",
    ]


def test_every_quarter_hour_across_the_spring_gap_fires_once_at_its_end() -> None:
    assert runs("*/15 * * * *", at(2024, 3, 31, 1, 40), 4) == [
        "2024-03-31 01:45:00+01:00",
        "2024-03-31 03:00:00+02:00",
        "2024-03-31 03:15:00+02:00",
        "2024-03-31 03:30:00+02:00",
    ]


def test_spring_gap_instant_is_real_time() -> None:
    fired = parse_cron("30 2 * * *").next_after(at(2024, 3, 31, 1, 59))
    assert fired.astimezone(UTC) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)


def test_a_start_inside_the_spring_gap_is_read_as_the_real_time() -> None:
    # 02:00 does not exist; with fold=1 it denotes 01:00 CET (00:00 UTC).
    assert runs("* * * * *", at(2024, 3, 31, 2, 0, fold=1), 2) == [
        "2024-03-31 01:01:00+01:00",
        "2024-03-31 01:02:00+01:00",
    ]
    assert runs("* * * * *", at(2024, 3, 31, 2, 0, fold=0), 1) == ["2024-03-31 03:01:00+02:00"]


def test_a_repeated_time_fires_once_at_its_first_occurrence() -> None:
    times = runs("30 2 * * *", at(2024, 10, 26, 3), 3)
    assert times == [
        "2024-10-27 02:30:00+02:00",
        "2024-10-28 02:30:00+01:00",
        "2024-10-29 02:30:00+01:00",
    ]


def test_during_the_repeated_hour_its_times_are_not_repeated() -> None:
    # 02:10 CET (second pass): 02:30 already fired at 02:30 CEST.
    assert runs("30 2 * * *", at(2024, 10, 27, 2, 10, fold=1), 1) == ["2024-10-28 02:30:00+01:00"]
    assert runs("*/20 * * * *", at(2024, 10, 27, 2, 50, fold=0), 3) == [
        "2024-10-27 03:00:00+01:00",  # the 02:xx times of the second pass are skipped
        "2024-10-27 03:20:00+01:00",
        "2024-10-27 03:40:00+01:00",
    ]


def test_hourly_across_fall_back_is_never_in_the_past() -> None:
    spec = parse_cron("0 * * * *")
    start = at(2024, 10, 27, 0, 30)
    previous = start
    for _ in range(5):
        following = spec.next_after(previous)
        assert following.timestamp() > previous.timestamp()
        assert following.minute == 0
        previous = following
    assert previous.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=5, minutes=30)


def test_rare_dates_are_found() -> None:
    spec = parse_cron("0 0 29 2 */7")
    fired = spec.next_after(at(2061, 1, 1))
    assert fired.isoformat() == "2088-02-29T00:00:00+01:00"


# ------------------------------------------------------------ against a brute-force search


def field_text(low: int, high: int) -> st.SearchStrategy[str]:
    """One cron field over low..high: *, */n, a, a-b, a-b/n, or a list of those."""
    value = st.integers(low, high)
    ranged = st.tuples(value, value).map(sorted).map(lambda r: f"{r[0]}-{r[1]}")
    item = st.one_of(
        value.map(str),
        ranged,
        st.tuples(ranged, st.integers(1, high or 1)).map(lambda t: f"{t[0]}/{t[1]}"),
        st.integers(1, high or 1).map(lambda step: f"*/{step}"),
    )
    return st.one_of(st.just("*"), item, st.lists(item, min_size=2, max_size=3).map(",".join))


expressions = st.tuples(
    st.one_of(st.just(""), field_text(0, 59).map(lambda f: f + " ")),
    field_text(0, 59),
    field_text(0, 23),
    field_text(1, 31),
    field_text(1, 12),
    field_text(0, 7),
).map(lambda f: f[0] + " ".join(f[1:]))
starts = st.datetimes(datetime(2000, 1, 1), datetime(2090, 1, 1))
paris_starts = st.one_of(  # the year, and near each change of time
    st.datetimes(datetime(2024, 1, 1), datetime(2025, 1, 1)),
    st.datetimes(datetime(2024, 3, 30, 23), datetime(2024, 3, 31, 4)),
    st.datetimes(datetime(2024, 10, 26, 23), datetime(2024, 10, 27, 4)),
)


def day_matches(fields: list[str], values: dict[str, set[int]], day: date) -> bool:
    """Vixie cron's day rule, written independently of the module under test."""
    if day.month not in values["month"]:
        return False
    in_dom = day.day in values["dom"]
    in_dow = day.isoweekday() % 7 in values["dow"] or (day.isoweekday() == 7 and 7 in values["dow"])
    if fields[-3].startswith("*") or fields[-1].startswith("*"):
        return in_dom and in_dow
    return in_dom or in_dow


def expand(field: str, low: int, high: int) -> set[int]:
    """The values of a field, written independently of the module under test."""
    values: set[int] = set()
    for item in field.split(","):
        base, _, step = item.partition("/")
        first, last = (low, high) if base == "*" else map(int, (base.split("-") * 2)[:2])
        values.update(range(first, last + 1, int(step or 1)))
    return values


def brute_force(expression: str, start: datetime) -> datetime | None:
    """The next match after a UTC start, day by day for 401 years."""
    fields = expression.split()
    seconds = expand(fields[0], 0, 59) if len(fields) == 6 else {0}
    minute, hour, dom, month, dow = fields[-5:]
    values = {
        "minute": expand(minute, 0, 59),
        "hour": expand(hour, 0, 23),
        "dom": expand(dom, 1, 31),
        "month": expand(month, 1, 12),
        "dow": expand(dow, 0, 7),
    }
    day = start.date()
    while day.year <= start.year + 401:
        if day_matches(fields, values, day):
            for h, m, s in sorted(product(values["hour"], values["minute"], seconds)):
                candidate = datetime(day.year, day.month, day.day, h, m, s, tzinfo=UTC)
                if candidate > start:
                    return candidate
        day += timedelta(days=1)
    return None


@settings(max_examples=300, deadline=None)
@given(expression=expressions, start=starts)
def test_next_after_agrees_with_brute_force_in_utc(expression: str, start: datetime) -> None:
    start = start.replace(tzinfo=UTC)
    expected = brute_force(expression, start)
    try:
        spec = parse_cron(expression)
    except ValueError as error:
        assert "never matches" in str(error)
        assert expected is None
        return
    assert spec.next_after(start) == expected


@settings(max_examples=300, deadline=None)
@given(expression=expressions, start=paris_starts, fold=st.sampled_from([0, 1]))
def test_next_after_in_paris_is_later_and_matches(
    expression: str, start: datetime, fold: int
) -> None:
    try:
        spec = parse_cron(expression)
    except ValueError:
        return
    start = start.replace(tzinfo=PARIS, fold=fold)
    fired = spec.next_after(start)
    assert fired.timestamp() > start.timestamp()
    wall = fired.replace(tzinfo=None)
    matches = spec.matches_day(wall.year, wall.month, wall.day) and (
        wall.hour,
        wall.minute,
        wall.second,
    ) in product(spec.hours, spec.minutes, spec.seconds)
    just_after_a_gap = (fired - timedelta(seconds=1)).utcoffset() != fired.utcoffset()
    assert matches or just_after_a_gap
    assert skipped_matches(spec, start, fired) == []


def skipped_matches(spec: CronSpec, start: datetime, end: datetime) -> list[datetime]:
    """Existing wall-clock times (first occurrence) that match strictly between start and
    end; only checked when the search is small."""
    times = list(product(spec.hours, spec.minutes, spec.seconds))
    if len(times) > 3000 or (end - start).days > 40:
        return []
    found, day = [], start.date()
    while day <= end.date():
        if spec.matches_day(day.year, day.month, day.day):
            for h, m, s in times:
                wall = datetime(day.year, day.month, day.day, h, m, s)
                aware = wall.replace(tzinfo=PARIS)
                exists = aware.astimezone(UTC).astimezone(PARIS).replace(tzinfo=None) == wall
                if exists and start.timestamp() < aware.timestamp() < end.timestamp():
                    found.append(aware)
        day += timedelta(days=1)
    return found
