"""Config texts and the hints that end many problems, shared by test_load and test_validate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from henbackup.config.model import Config

WriteConfig = Callable[..., Path]
Load = Callable[..., Config]
Problems = Callable[..., list[tuple[str, str]]]

REPOSITORY = """
[repositories.local]
location = "/srv/restic"
password_file = "/etc/henbackup/secrets/local"
"""
BACKUP = """
[backups.home]
paths = ["/home"]
repositories = ["local"]
"""
BASE = REPOSITORY + BACKUP

# The hints that end many messages.
DURATION = 'use a number and a unit (ms, s, m, h, d, w), largest first, e.g. "1h30m"'
SIZE = 'use a number of bytes, or a string such as "50K" (K, M, G, T: x1024)'
RATE = 'use a number of bytes, or a string such as "50K" (K, M, G: x1024)'
LISTEN = 'use HOST:PORT, e.g. "127.0.0.1:9811" or "[::1]:9811"'
PRIORITY = "use immediate, next, superior, normal, inferior, on-idle or an integer"
SUBSET = 'use a percentage ("5%"), a fraction ("1/10") or a size ("500M")'
KEEPS_NOTHING = "keeps nothing: set a keep_* rule above 0 or keep_within, e.g. keep_daily = 7"
ABSOLUTE = "is not an absolute path: write it from the root, /..."
KINDS = "password, password_file, password_command, password_credential"
ENV_NAME = "is not a valid environment variable name (letters, digits, _)"
CRON_FIELDS = (
    "a cron expression has 5 fields (minute hour day-of-month month day-of-week) "
    "or 6 with seconds first"
)
ARGV = 'must be an array of strings, e.g. ["/usr/bin/pg_dump", "-f", "/backup/db.sql"]'
HOOK_ARRAY = "must be an array of tables ([[...hooks.before]] or [{ type = ... }])"
URL = "must be an http:// or https:// URL with a host"
CREDENTIALS = (
    "CREDENTIALS_DIRECTORY is not set: pass the credential with systemd's "
    "LoadCredential= (or LoadCredentialEncrypted=), or use password_file"
)
NO_SPACES = '(an interval has no spaces: "1h30m")'
UNSET = "is not set: set it in the service's environment or remove the reference"

FULL_EXAMPLE = """
[daemon]                      # every key optional
hostname = "rpi01"            # restic --host; default: the system hostname
max_concurrent_jobs = 1       # scheduler slots shared by all jobs
upload_limit = "50K"          # default per job, bytes per second: K, M, G (binary units)
download_limit = "200K"
stall_timeout = "10m"         # a job with no progress for this long is ended (documented default)
restic = "restic"             # engine binary

[metrics]
textfile = "/var/lib/prometheus/node-exporter/henbackup.prom"   # optional
listen = "127.0.0.1:9811"                                       # optional HTTP /metrics

[repositories.aws-ireland]
location = "s3:s3.eu-west-1.amazonaws.com/my-bucket/pictures"   # any restic repository string
password_file = "/etc/henbackup/secrets/aws-ireland"  # or password, password_command,
                                                      # or password_credential
env = { AWS_ACCESS_KEY_ID = "${AWS_KEY}", AWS_SECRET_ACCESS_KEY = "${AWS_SECRET}" }
options = ["s3.storage-class=STANDARD_IA"]            # restic -o
upload_limit = "1M"                                   # cap for every job on this repository
check = { schedule = ["1w"], read_data_subset = "5%", priority = "inferior" }
prune = { schedule = ["1w"], priority = "inferior" }

[repositories.ovh-frankfort]
location = "sftp:backup@ovh.example:/srv/pictures"
password_command = "pass show backup/ovh"

[backups.pictures]
paths = ["/home/me/Pictures"]
excludes = [".git", "*.tmp"]
repositories = ["aws-ireland", "ovh-frankfort"]
schedule = ["1d"]             # see Triggers
watch = { wait_min = "5s", wait_max = "30s" }   # or watch = true
priority = "normal"
upload_limit = "500K"
retention = { keep_daily = 7, keep_weekly = 4, keep_monthly = 12 }
resources = { cpu_weight = 20, io_weight = 20, cpu_quota = "50%", memory_max = "1G", nice = 10, \
ionice = "idle" }

[backups.grafana]
paths = ["/var/lib/grafana"]
repositories = ["aws-ireland"]
schedule = ["*/15 * * * *", "1h"]

[[backups.grafana.hooks.before]]
type = "http"                 # or "command" with command = ["argv", "..."]
url = "http://127.0.0.1:3000/api/dump"
method = "POST"
timeout = "1m"
retries = 3
on_failure = "stop"           # ignore | continue | stop
"""
