import pytest

from henbackup.humanize import relative


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
