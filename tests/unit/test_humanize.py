import pytest

from henbackup.humanize import ago, duration, relative, size, size_setting


@pytest.mark.parametrize(
    ("seconds", "said"),
    [
        (-5, "now"),
        (0.5, "now"),
        (1, "in 1 s"),
        (59.9, "in 60 s"),
        (60, "in 1 min"),
        (3599, "in 59 min"),
        (3600, "in 1 h"),
        (86399, "in 23 h"),
        (86400, "in 1 d"),
        (10 * 86400, "in 10 d"),
    ],
)
def test_relative(seconds, said):
    assert relative(seconds) == said


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0.2, "just now"), (5, "5 s ago"), (7200, "2 h ago"), (3 * 86400 + 5, "3 d ago")],
)
def test_ago(seconds, said):
    assert ago(seconds) == said


@pytest.mark.parametrize(
    ("seconds", "said"),
    [(0.44, "0.4 s"), (12.4, "12 s"), (200, "3 min 20 s"), (7500, "2 h 5 min")],
)
def test_duration(seconds, said):
    assert duration(seconds) == said


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.50 KiB"),
        (12 * 2**20, "12.0 MiB"),
        (3.21 * 2**30, "3.21 GiB"),
        (2**60, "1024.0 PiB"),
    ],
)
def test_size(count, said):
    assert size(count) == said


@pytest.mark.parametrize(
    ("count", "said"),
    [(512, "512 B"), (51200, "50 KiB"), (1572864, "1.5 MiB"), (3 * 2**40, "3 TiB")],
)
def test_size_setting_is_as_short_as_the_setting(count, said):
    assert size_setting(count) == said
