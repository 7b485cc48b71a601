"""The small languages of the config: durations, rates, sizes, priorities, percents, addresses."""

from __future__ import annotations

import pytest

from henbackup.config.model import INFERIOR, NORMAL, Priority
from henbackup.config.units import (
    parse_duration,
    parse_listen,
    parse_percent,
    parse_priority,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("5s", 5),
        ("5m", 300),
        ("5h", 18000),
        ("5d", 432000),
        ("5w", 3024000),
        ("1h30m", 5400),
        ("1w2d3h4m5s6ms", 604800 + 172800 + 10800 + 240 + 5 + 0.006),
        ("1m500ms", 60.5),
        ("0s", 0),
        ("90m", 5400),
    ],
)
def test_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["", "5", "5x", "m", "1.5h", "30m1h", "1h1h", "1h 30m", "-5s", "5S", 5, 5.0, None, ["5s"]],
)
def test_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^not a duration: use a number and a unit"):
        parse_duration(value)


def test_duration_reason_does_not_echo_the_value() -> None:
    with pytest.raises(ValueError) as error:
        parse_duration("hunter2")
    assert "hunter2" not in str(error.value)


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        (51200, 51200),
        ("51200", 51200),
        ("50K", 51200),
        ("50k", 51200),
        ("1M", 1048576),
        ("1.5M", 1572864),
        ("2G", 2 * 1024**3),
        (".5K", 512),
    ],
)
def test_rate(value: object, rate: int) -> None:
    assert parse_rate(value) == rate


@pytest.mark.parametrize("value", ["50KB", "50 K", "1T", "K", "1e3", "-5K", True, 1.5, None, []])
def test_rate_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^not a rate: "):
        parse_rate(value)


@pytest.mark.parametrize("value", [0, -1, "0K", "0.0001K"])
def test_rate_must_be_positive(value: object) -> None:
    with pytest.raises(ValueError, match=r"^too small: a rate must be at least 1 byte$"):
        parse_rate(value)


def test_rate_with_an_absurd_number_of_digits_is_rejected_not_overflowed() -> None:
    with pytest.raises(ValueError, match=r"^not a rate"):
        parse_rate("9" * 400 + "G")


@pytest.mark.parametrize(
    ("value", "size"), [("1T", 1024**4), ("1G", 1024**3), (4096, 4096), ("2.5K", 2560)]
)
def test_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["1P", "", "big"])
def test_size_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^not a size: "):
        parse_size(value)


@pytest.mark.parametrize(
    ("value", "priority", "label"),
    [
        ("immediate", Priority(Priority.IMMEDIATE_BAND), "immediate"),
        ("next", Priority(Priority.NEXT_BAND), "next"),
        ("superior", Priority.ordinary(10), "superior"),
        ("normal", NORMAL, "normal"),
        ("inferior", INFERIOR, "inferior"),
        ("on-idle", Priority(Priority.ON_IDLE_BAND), "on-idle"),
        ("Superior", Priority.ordinary(10), "superior"),
        (5, Priority.ordinary(5), "5"),
        (-3, Priority.ordinary(-3), "-3"),
        ("-3", Priority.ordinary(-3), "-3"),
        (10, Priority.ordinary(10), "superior"),
    ],
)
def test_priority(value: object, priority: Priority, label: str) -> None:
    parsed = parse_priority(value)
    assert parsed == priority
    assert parsed.label == label
    assert parse_priority(parsed.label) == parsed  # the label reads back


def test_priority_order() -> None:
    names = ["on-idle", "-1000", "inferior", "normal", "superior", "1000", "next", "immediate"]
    assert sorted(names, key=parse_priority) == names


@pytest.mark.parametrize("value", ["urgent", "", "1.5", True, 1.5, None])
def test_priority_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^not a priority: use immediate, next, superior"):
        parse_priority(value)


@pytest.mark.parametrize("value", [10**18, -(10**18), 10**19, 2**31 - 1, "2147483646", -1_000_001])
def test_priority_rejects_an_integer_beyond_a_million_either_way(value: int | str) -> None:
    """2**31-1 once passed, and counted as immediate where the effective value is read
    (preemption, the queue's view)."""
    with pytest.raises(
        ValueError, match=r"^out of range: use an integer from -1000000 to 1000000$"
    ):
        parse_priority(value)


def test_priority_takes_a_million_either_way() -> None:
    assert parse_priority(1_000_000) == Priority.ordinary(1_000_000)
    assert parse_priority("-1000000") == Priority.ordinary(-1_000_000)


@pytest.mark.parametrize(
    ("text", "fraction"), [("50%", 0.5), ("5%", 0.05), ("12.5%", 0.125), ("250%", 2.5)]
)
def test_percent(text: str, fraction: float) -> None:
    assert parse_percent(text) == pytest.approx(fraction)


@pytest.mark.parametrize("value", ["50", "%", "50 %", "-5%", "half", 50, 0.5])
def test_percent_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^not a percentage: "):
        parse_percent(value)


def test_percent_must_be_positive() -> None:
    with pytest.raises(ValueError, match=r"^too small: a percentage must be more than 0%$"):
        parse_percent("0%")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9811", ("127.0.0.1", 9811)),
        ("localhost:9811", ("localhost", 9811)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("[::1]:9811", ("::1", 9811)),
        ("[::]:65535", ("::", 65535)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
    ],
)
def test_listen(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("9811", "use HOST:PORT"),
        (":9811", "use HOST:PORT"),
        ("localhost:", "use HOST:PORT"),
        ("localhost:http", "use HOST:PORT"),
        ("::1:9811", "an IPv6 address needs brackets"),
        ("[localhost]:9811", "put an IPv6 address between the brackets"),
        ("-bad-:9811", "the host is not a name or an IP address"),
        ("localhost:0", "the port must be between 1 and 65535"),
        ("localhost:65536", "the port must be between 1 and 65535"),
        (9811, "use HOST:PORT"),
    ],
)
def test_listen_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=r"^not an address: ") as error:
        parse_listen(value)
    assert reason in str(error.value)
