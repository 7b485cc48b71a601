"""describe_plan: the text check-config prints, and location redaction."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from henbackup.config.load import load_config
from henbackup.config.model import Config
from henbackup.config.plan import describe_plan
from henbackup.redact import redact_location

PARIS = ZoneInfo("Europe/Paris")
CONFIG = """
[daemon]
hostname = "rpi01"
max_concurrent_jobs = 2
upload_limit = "50K"
stall_timeout = "1h30m"

[metrics]
textfile = "/var/lib/node-exporter/henbackup.prom"
listen = "[::1]:9811"

[repositories.nas]
location = "rest:https://backup:hunter2@nas.lan:8000/pictures"
password = "hunter2"
env = { RESTIC_REST_USERNAME = "backup" }
options = ["rest.connections=4"]
download_limit = "1.5M"
check = { schedule = ["0 4 1 * *"], read_data_subset = "1/10" }
prune = { priority = "on-idle" }

[repositories.local]
location = "/srv/restic"
password_file = "/etc/henbackup/local"
env_file = "/etc/henbackup/local.env"

[backups.pictures]
paths = ["/home/me/Pictures", "/home/me/Videos"]
excludes = ["*.tmp"]
repositories = ["nas", "local"]
schedule = ["1d", "30 2 * * *"]
watch = true
priority = "superior"
retention = { keep_daily = 7, keep_within = "1m" }
resources = { cpu_quota = "50%", memory_max = "512M", ionice = "idle" }

[[backups.pictures.hooks.before]]
type = "command"
command = ["/usr/local/bin/dump", "--secret", "x"]
timeout = "90s"

[[backups.pictures.hooks.after]]
type = "http"
url = "https://user:pw@hc-ping.com/uuid?token=abc"

[backups.etc]
paths = ["/etc"]
repositories = ["local"]
"""

EXPECTED = """\
Files
  read            {path}

Repository nas
  location        rest:https://<redacted>@nas.lan:8000/pictures
  password        in the config
  env             RESTIC_REST_USERNAME (values hidden)
  options         rest.connections (values hidden)
  download_limit  1.5 MiB/s
  check           priority inferior, read data subset 1/10
                  cron "0 4 1 * *", next 2024-04-01 04:00:00 CEST
  prune           priority on-idle
                  manual only

Repository local
  location        /srv/restic
  password        file /etc/henbackup/local
  env_file        /etc/henbackup/local.env (read as restic starts)

Backup pictures
  paths           /home/me/Pictures, /home/me/Videos
  excludes        *.tmp
  repositories    nas, local
  priority        superior
  watch           on change, once quiet for 10s, at most 5m after it
  schedule        every 1d since the last success
                  cron "30 2 * * *", next 2024-03-31 03:00:00 CEST
  retention       keep_daily 7, keep_within 1m
  resources       cpu_quota 50%, memory_max 512 MiB, ionice idle
  before hook     command /usr/local/bin/dump ... (timeout 1m30s, on failure stop)
  after hook      http POST https://<redacted>@hc-ping.com/uuid (timeout 1m, on failure stop)

Backup etc
  paths           /etc
  repositories    local
  priority        normal
  triggers        none: manual only (henbackupctl backup)

Daemon
  hostname        rpi01
  jobs at once    2
  upload_limit    50 KiB/s
  restic          restic
  stall_timeout   1h30m
  metrics file    /var/lib/node-exporter/henbackup.prom
  metrics http    [::1]:9811
"""


def test_the_whole_plan(write_config: Callable[..., Path]) -> None:
    path = write_config(CONFIG)
    config = load_config(path, env={})
    # The day before spring forward: 02:30 does not exist on the 31st, so it runs at 03:00.
    plan = describe_plan(config, datetime(2024, 3, 30, 12, tzinfo=PARIS))
    assert plan == EXPECTED.format(path=path)
    assert "hunter2" not in plan
    assert "--secret" not in plan
    assert "token" not in plan
    assert "user:pw" not in plan


def test_a_secret_a_variable_brings_into_a_hook_url_is_hidden(load: Callable[..., Config]) -> None:
    ping = """
    [repositories.local]
    location = "/srv/restic"
    password_file = "/etc/henbackup/local"

    [backups.etc]
    paths = ["/etc"]
    repositories = ["local"]

    [[backups.etc.hooks.before]]
    type = "http"
    url = "https://hc-ping.com/${HC_UUID}/start"
    """
    config = load(ping, env={"HC_UUID": "0f1e2d3c-4b5a-6978"})
    plan = describe_plan(config, datetime(2024, 4, 1, tzinfo=PARIS))
    assert "0f1e2d3c" not in plan
    assert "  before hook     http POST https://hc-ping.com/<redacted>/start (" in plan


def test_a_password_written_as_the_location_too_is_hidden(load: Callable[..., Config]) -> None:
    """Found by test_load_fuzz: the location is shown as written, and was the password."""
    config = load('[repositories.r]\nlocation = "hunter2-xyzzy"\npassword = "hunter2-xyzzy"\n')
    plan = describe_plan(config, datetime(2024, 4, 1, tzinfo=PARIS))
    assert "hunter2" not in plan
    assert "  location        <redacted>\n" in plan


def test_next_runs_follow_now(load: Callable[..., Config]) -> None:
    config = load(CONFIG)
    plan = describe_plan(config, datetime(2024, 4, 1, 3, tzinfo=PARIS))
    assert 'cron "30 2 * * *", next 2024-04-02 02:30:00 CEST' in plan
    assert 'cron "0 4 1 * *", next 2024-04-01 04:00:00 CEST' in plan


def test_a_naive_now_is_local_time(load: Callable[..., Config]) -> None:
    assert "next " in describe_plan(load(CONFIG), datetime(2024, 4, 1, 3))


def test_an_empty_config(load: Callable[..., Config]) -> None:
    plan = describe_plan(load(""), datetime(2024, 4, 1, tzinfo=PARIS))
    assert plan.endswith(
        "Daemon\n  hostname        testhost\n  jobs at once    1\n  restic          restic\n"
        "  stall_timeout   10m\n"
    )


@pytest.mark.parametrize(
    ("location", "redacted"),
    [
        ("rest:https://user:pw@host:8000/repo", "rest:https://<redacted>@host:8000/repo"),
        ("rest:http://user:p@ss:w/rd@host/", "rest:http://<redacted>@host/"),
        ("rest:https://token@host/", "rest:https://<redacted>@host/"),
        ("s3:https://s3.example.com/bucket", "s3:https://s3.example.com/bucket"),
        ("s3:s3.amazonaws.com/bucket/path", "s3:s3.amazonaws.com/bucket/path"),
        ("sftp:user@host:/srv/restic", "sftp:user@host:/srv/restic"),
        ("rest:https://host/path/with@sign", "rest:https://<redacted>@sign"),  # safe, not pretty
        ("/srv/restic", "/srv/restic"),
        ("rclone:remote:path", "rclone:remote:path"),
    ],
)
def test_redact_location(location: str, redacted: str) -> None:
    assert redact_location(location) == redacted
