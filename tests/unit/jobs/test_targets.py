import pytest

from henbackup.jobs.targets import effective_limit


@pytest.mark.parametrize(
    ("job", "default", "cap", "expected"),
    [
        (None, None, None, None),
        (None, 100, None, 100),  # the daemon default applies
        (50, 100, None, 50),  # the job's own limit replaces the default, even upward
        (500, 100, None, 500),
        (500, 100, 200, 200),  # never above the repository's cap
        (None, None, 200, 200),
        (None, 300, 200, 200),
        (150, None, 200, 150),
    ],
)
def test_effective_limit(job, default, cap, expected):
    assert effective_limit(job, default, cap) == expected
