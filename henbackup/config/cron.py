"""A dependency-free cron parser and next-run calculator, in local (wall-clock) time.

Fields: `minute hour day-of-month month day-of-week`, or six with seconds first. Each field
takes `*`, values, names (jan..dec, sun..sat), ranges `a-b`, steps `*/n`, `a-b/n`, `a/n`
(from a to the end) and comma lists. Day-of-week 0 and 7 are both Sunday. The macros
@yearly (@annually), @monthly, @weekly, @daily (@midnight) and @hourly are accepted.

Day semantics are Vixie cron's: when both day fields are restricted (neither starts with
`*`), a day matching either one matches; otherwise both must match.

A spec that can never match (`0 0 31 2 *`) is rejected by `parse_cron`, so `next_after`
always returns a time.

Daylight saving time (`next_after`): each matching wall-clock time fires once. A time that
does not exist (skipped by a spring-forward) fires at the first instant after the gap; a
time that occurs twice (fall-back) fires at its first occurrence only.
"""

from __future__ import annotations

import bisect
import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

_MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DOW_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# Every (month, day) falls on every weekday within Gregorian's 400-year cycle.
_SEARCH_YEARS = 401


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names[i] spells low + i


_SECOND = _Field("second", 0, 59)
_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DOM = _Field("day-of-month", 1, 31)
_MONTH = _Field("month", 1, 12, _MONTH_NAMES)
_DOW = _Field("day-of-week", 0, 7, _DOW_NAMES)


@dataclass(frozen=True)
class CronSpec:
    """A parsed cron expression: the allowed values of each field, sorted."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]  # day of month, 1..31
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday .. 6 = Saturday
    days_restricted: bool  # the day-of-month field does not start with "*"
    weekdays_restricted: bool

    def matches_day(self, year: int, month: int, day: int) -> bool:
        """Whether the date passes the month and both day fields (Vixie semantics)."""
        if month not in self.months:
            return False
        in_days = day in self.days
        in_weekdays = (calendar.weekday(year, month, day) + 1) % 7 in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return in_days or in_weekdays
        return in_days and in_weekdays

    def next_after(self, dt: datetime) -> datetime:
        """The first matching time strictly after `dt`, in dt's time zone.

        `dt` must be timezone-aware (e.g. tz=ZoneInfo("Europe/Paris")); see the module
        docstring for daylight saving time. Raises ValueError for a naive `dt`.
        """
        tz = dt.tzinfo
        if tz is None or dt.utcoffset() is None:
            raise ValueError("next_after needs a timezone-aware datetime")
        # Through UTC and back: a wall time inside a gap becomes the real time it denotes.
        wall = dt.astimezone(UTC).astimezone(tz).replace(tzinfo=None, microsecond=0, fold=0)
        while True:
            wall = self._next_wall(wall)
            instant = _instant(wall, tz)
            if instant.timestamp() > dt.timestamp():
                return instant
            wall += timedelta(seconds=1)

    def _next_wall(self, wall: datetime) -> datetime:
        """The first naive wall-clock time >= `wall` that matches."""
        limit = wall.year + _SEARCH_YEARS
        while wall.year <= limit:
            if not self.matches_day(wall.year, wall.month, wall.day):
                wall = _next_day(wall, self.months)
                continue
            found = self._time_in_day(wall)
            if found is not None:
                return found
            wall = _next_day(wall, self.months)
        raise ValueError(f'cron expression "{self.expression}" never matches')

    def _time_in_day(self, wall: datetime) -> datetime | None:
        """The first matching time of wall's day at or after wall, or None."""
        for hour in self.hours[bisect.bisect_left(self.hours, wall.hour) :]:
            same_hour = hour == wall.hour
            start_minute = wall.minute if same_hour else 0
            for minute in self.minutes[bisect.bisect_left(self.minutes, start_minute) :]:
                start_second = wall.second if same_hour and minute == wall.minute else 0
                index = bisect.bisect_left(self.seconds, start_second)
                if index < len(self.seconds):
                    return wall.replace(hour=hour, minute=minute, second=self.seconds[index])
        return None


def _next_day(wall: datetime, months: tuple[int, ...]) -> datetime:
    """Midnight of the day after `wall`, jumping straight to the next allowed month."""
    midnight = wall.replace(hour=0, minute=0, second=0) + timedelta(days=1)
    if midnight.month in months:
        return midnight
    later = [m for m in months if m > midnight.month]
    if later:
        return midnight.replace(month=later[0], day=1)
    return midnight.replace(year=midnight.year + 1, month=months[0], day=1)


def _instant(wall: datetime, tz: tzinfo) -> datetime:
    """The aware time at which wall-clock `wall` fires in `tz` (see DST in the docstring)."""
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    before, after = first.utcoffset(), second.utcoffset()
    if before is None or after is None or before >= after:
        return first  # an ordinary time, or the first occurrence of a repeated one
    # In a gap: fold=1 reads it with the later offset, an instant before the transition.
    low = int(second.timestamp())
    high = int(first.timestamp())
    while low < high:  # the transition is the first instant with the later offset
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).utcoffset() == after:
            high = middle
        else:
            low = middle + 1
    return datetime.fromtimestamp(low, tz)


def parse_cron(expression: str) -> CronSpec:
    """Parse a 5- or 6-field cron expression or an @macro; raises ValueError saying why."""
    if not isinstance(expression, str):
        raise ValueError("a cron expression is a string")
    text = _MACROS.get(expression.strip().lower(), expression)
    parts = text.split()
    if len(parts) not in (5, 6):
        raise ValueError(
            f"a cron expression has 5 fields (minute hour day-of-month month day-of-week) "
            f"or 6 with seconds first, not {len(parts)}"
        )
    if len(parts) == 5:
        parts = ["0", *parts]
    fields = (_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW)
    values = [_parse_field(part, field) for part, field in zip(parts, fields, strict=True)]
    weekdays = tuple(sorted({day % 7 for day in values[5]}))
    spec = CronSpec(
        expression=expression.strip(),
        seconds=values[0],
        minutes=values[1],
        hours=values[2],
        days=values[3],
        months=values[4],
        weekdays=weekdays,
        days_restricted=not parts[3].startswith("*"),
        weekdays_restricted=not parts[5].startswith("*"),
    )
    _check_possible(spec)
    return spec


def _check_possible(spec: CronSpec) -> None:
    """Raise ValueError when no date can ever match (e.g. February 30th)."""
    if spec.days_restricted and spec.weekdays_restricted:
        return  # any weekday matches on its own
    longest = {month: calendar.monthrange(2000, month)[1] for month in spec.months}
    if not any(day <= longest[month] for month in spec.months for day in spec.days):
        months = ", ".join(_MONTH_NAMES[m - 1] for m in spec.months)
        raise ValueError(f"never matches: no day of the day-of-month field exists in {months}")


def _parse_field(text: str, field: _Field) -> tuple[int, ...]:
    """The sorted values allowed by one field such as `1-30/5,45`."""
    values: set[int] = set()
    for item in text.split(","):
        values.update(_parse_item(item, field))
    return tuple(sorted(values))


def _parse_item(item: str, field: _Field) -> range:
    """The values of one comma-separated item: `*`, `a`, `a-b`, with an optional `/step`."""
    base, slash, step_text = item.partition("/")
    step = _parse_step(step_text, field) if slash else 1
    if base == "*":
        return range(field.low, field.high + 1, step)
    start_text, dash, end_text = base.partition("-")
    start = _parse_value(start_text, field)
    end = start if not slash else field.high  # "5/10" runs from 5 to the end
    if dash:
        end = _parse_value(end_text, field)
    if start > end:
        raise ValueError(f'{field.name} range "{item}" goes backwards: write the smaller first')
    return range(start, end + 1, step)


def _parse_step(text: str, field: _Field) -> int:
    if not (text.isascii() and text.isdigit()) or _bounded(text) == 0:
        raise ValueError(f'{field.name} step "{text}" must be a whole number above 0')
    return _bounded(text)


def _bounded(digits: str) -> int:
    """The number of ASCII `digits` (leading zeros allowed); 10**9 for any larger (never
    in range: no int() of a thousand digits)."""
    significant = digits.lstrip("0") or "0"
    return int(significant) if len(significant) <= 9 else 10**9


def _parse_value(text: str, field: _Field) -> int:
    """One number or name of the field, checked against its range."""
    lowered = text.lower()
    if field.names and lowered in field.names:
        return field.low + field.names.index(lowered)
    if not (text.isascii() and text.isdigit()):
        expected = f"a number or a name ({', '.join(field.names)})" if field.names else "a number"
        raise ValueError(f'{field.name} "{text}" is not {expected}')
    value = _bounded(text)
    if not field.low <= value <= field.high:
        raise ValueError(f"{field.name} {text} is out of range {field.low}-{field.high}")
    return value
