"""load_config: files, merging, ${NAME}, every key's validation, and secret-free problems."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from henbackup.config.load import load_config
from henbackup.config.model import (
    INFERIOR,
    NORMAL,
    Backup,
    CommandHook,
    Config,
    Cron,
    Daemon,
    Hooks,
    HttpHook,
    Interval,
    Maintenance,
    Metrics,
    PasswordSource,
    Priority,
    Repository,
    Resources,
    Retention,
    Watch,
)
from henbackup.errors import ConfigError, Problem

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

SPEC_EXAMPLE = """
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


# ----------------------------------------------------------------------- whole configs


def test_the_spec_example(load: Load) -> None:
    config = load(SPEC_EXAMPLE, env={"AWS_KEY": "AKIA", "AWS_SECRET": "s3cr3t"})
    assert config.daemon == Daemon("rpi01", 1, 51200, 204800, "restic")
    assert config.metrics == Metrics(
        Path("/var/lib/prometheus/node-exporter/henbackup.prom"), ("127.0.0.1", 9811)
    )
    weekly = (Interval(604800.0, "1w"),)
    assert config.repositories == {
        "aws-ireland": Repository(
            name="aws-ireland",
            location="s3:s3.eu-west-1.amazonaws.com/my-bucket/pictures",
            password=PasswordSource("file", "/etc/henbackup/secrets/aws-ireland"),
            env=(("AWS_ACCESS_KEY_ID", "AKIA"), ("AWS_SECRET_ACCESS_KEY", "s3cr3t")),
            options=("s3.storage-class=STANDARD_IA",),
            upload_limit=1048576,
            check=Maintenance(weekly, INFERIOR, "5%"),
            prune=Maintenance(weekly, INFERIOR),
        ),
        "ovh-frankfort": Repository(
            name="ovh-frankfort",
            location="sftp:backup@ovh.example:/srv/pictures",
            password=PasswordSource("command", "pass show backup/ovh"),
        ),
    }
    assert config.backups["pictures"] == Backup(
        name="pictures",
        paths=("/home/me/Pictures",),
        repositories=("aws-ireland", "ovh-frankfort"),
        excludes=(".git", "*.tmp"),
        schedule=(Interval(86400.0, "1d"),),
        watch=Watch(5.0, 30.0),
        priority=NORMAL,
        upload_limit=512000,
        retention=Retention(keep_daily=7, keep_weekly=4, keep_monthly=12),
        resources=Resources(20, 20, 0.5, 1024**3, 10, "idle"),
    )
    assert config.backups["grafana"] == Backup(
        name="grafana",
        paths=("/var/lib/grafana",),
        repositories=("aws-ireland",),
        schedule=(Cron("*/15 * * * *"), Interval(3600.0, "1h")),
        hooks=Hooks(before=(HttpHook("http://127.0.0.1:3000/api/dump", retries=3),)),
    )
    assert list(config.backups) == ["pictures", "grafana"]  # file order


def test_the_smallest_config_and_its_defaults(load: Load) -> None:
    config = load(BASE)
    assert config.daemon == Daemon(hostname="testhost")
    assert config.metrics == Metrics()
    assert config.backups["home"] == Backup("home", ("/home",), ("local",))
    assert config.backups["home"].schedule == ()  # manual only is valid
    assert config.backups["home"].watch is None


def test_an_empty_file_is_a_valid_config_with_nothing_to_do(load: Load) -> None:
    config = load("")
    assert (config.repositories, config.backups) == ({}, {})


def test_hostname_defaults_to_the_system(write_config: WriteConfig) -> None:
    config = load_config(write_config(BASE), env={})
    assert config.daemon.hostname == os.uname().nodename


def test_values_from_the_model_are_plain_strings(load: Load) -> None:
    config = load(BASE.replace('"/srv/restic"', '"${REPO}"'), env={"REPO": "/srv/x"})
    assert type(config.repositories["local"].location) is str


# -------------------------------------------------------------------- files and merging


def test_conf_d_files_are_merged_in_name_order(write_config: WriteConfig) -> None:
    path = write_config(
        REPOSITORY,
        {
            "conf.d/20-b.toml": BACKUP.replace("home", "second"),
            "conf.d/10-a.toml": BACKUP.replace("home", "first") + "[daemon]\nrestic = '/r'\n",
            "conf.d/.hidden.toml": "not toml at all",
            "conf.d/notes.txt": "not toml at all",
            "conf.d/30-dir.toml/x.toml": "not read either",
        },
    )
    config = load_config(path, env={}, hostname="h")
    root = path.parent
    assert config.files == (path, root / "conf.d/10-a.toml", root / "conf.d/20-b.toml")
    assert list(config.backups) == ["first", "second"]
    assert config.daemon.restic == "/r"


def test_missing_main_file(write_config: WriteConfig) -> None:
    path = write_config(None)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.problems == (
        Problem(
            str(path),
            "",
            "file not found: create it, or point --config or HENBACKUP_CONFIG to the right file",
        ),
    )
    assert str(error.value) == (
        f"{path}: file not found: create it, or point --config or HENBACKUP_CONFIG to the "
        "right file"
    )


def test_toml_syntax_errors_in_every_file_are_reported(write_config: WriteConfig) -> None:
    path = write_config(
        "[daemon]\nhostname = \n",
        {"conf.d/a.toml": "[backups.x\n", "conf.d/b.toml": '[metrics]\nlisten = ":"\n'},
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    conf_d = path.parent / "conf.d"
    assert [(p.file, p.key, p.message) for p in error.value.problems] == [
        (str(path), "", "invalid TOML: Invalid value (at line 2, column 12)"),
        (
            str(conf_d / "a.toml"),
            "",
            "invalid TOML: Expected ']' at the end of a table declaration (at line 1, column 11)",
        ),
        (
            str(conf_d / "b.toml"),
            "metrics.listen",
            f'":" is not an address: {LISTEN}',
        ),
    ]


def test_a_file_nested_too_deeply(write_config: WriteConfig) -> None:
    path = write_config("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.problems == (
        Problem(
            str(path), "", "invalid TOML: arrays or tables are nested too deeply: flatten them"
        ),
    )


@pytest.mark.parametrize(
    "content",
    [
        f"[{'.'.join(['a'] * 500)}]\nx = 1\n",  # tomllib reads it: it walks no deeper
        "a = " + "[" * 40 + "]" * 40,
    ],
)
def test_tables_or_arrays_deeper_than_any_setting_are_refused(
    write_config: WriteConfig, content: str
) -> None:
    path = write_config(content)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.problems == (
        Problem(str(path), "", "tables or arrays are nested more than 32 deep: no setting is"),
    )


def test_a_file_that_is_not_utf8(write_config: WriteConfig) -> None:
    path = write_config("")
    path.write_bytes(b"hostname = '\xff'\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.problems == (Problem(str(path), "", "is not UTF-8 text: save it as UTF-8"),)


def test_a_backup_defined_in_two_files(write_config: WriteConfig) -> None:
    path = write_config(BASE, {"conf.d/home.toml": BACKUP})
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.problems == (
        Problem(
            str(path.parent / "conf.d/home.toml"),
            "backups.home",
            f"already defined in {path}: define each backup in one file only",
        ),
    )


def test_a_repository_defined_in_two_conf_d_files(write_config: WriteConfig) -> None:
    path = write_config(BACKUP, {"conf.d/a.toml": REPOSITORY, "conf.d/b.toml": REPOSITORY})
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    first, second = path.parent / "conf.d/a.toml", path.parent / "conf.d/b.toml"
    assert error.value.problems == (
        Problem(
            str(second),
            "repositories.local",
            f"already defined in {first}: define each repository in one file only",
        ),
    )


def test_a_backup_extended_by_a_hook_in_another_file_is_a_duplicate(
    write_config: WriteConfig,
) -> None:
    hook = '[[backups.home.hooks.before]]\ntype = "command"\ncommand = ["/bin/true"]\n'
    path = write_config(BASE, {"conf.d/hooks.toml": hook})
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert [p.key for p in error.value.problems] == ["backups.home"]


def test_daemon_and_metrics_keys_set_in_two_files(write_config: WriteConfig) -> None:
    path = write_config(
        '[daemon]\nhostname = "a"\n[metrics]\nlisten = "[::1]:1"\n',
        {
            "conf.d/a.toml": '[daemon]\nrestic = "/usr/bin/restic"\nhostname = "b"\n',
            "conf.d/b.toml": '[metrics]\nlisten = "[::1]:2"\ntextfile = "/m.prom"\n',
        },
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    conf_d = path.parent / "conf.d"
    assert error.value.problems == (
        Problem(
            str(conf_d / "a.toml"),
            "daemon.hostname",
            f"already set in {path}: set each daemon key in one file only",
        ),
        Problem(
            str(conf_d / "b.toml"),
            "metrics.listen",
            f"already set in {path}: set each metrics key in one file only",
        ),
    )


def test_sections_of_the_wrong_type(problems: Problems) -> None:
    assert problems('daemon = 1\nmetrics = "x"\nrepositories = []\nbackups = 2\n') == [
        ("daemon", "must be a table ([daemon]), not an integer"),
        ("metrics", "must be a table ([metrics]), not a string"),
        ("repositories", "must be a table of repositories ([repositories.NAME]), not an array"),
        ("backups", "must be a table of backups ([backups.NAME]), not an integer"),
    ]
    assert problems("[repositories]\nlocal = 1\n") == [
        ("repositories.local", "must be a table, not an integer")
    ]


@pytest.mark.parametrize(
    ("name", "key"),
    [("-home", "-home"), (".home", '".home"'), ("my home", '"my home"'), ("é", '"é"')],
)
def test_invalid_names(problems: Problems, name: str, key: str) -> None:
    assert problems(f'[backups."{name}"]\npaths = ["/"]\nrepositories = []\n') == [
        (
            f"backups.{key}",
            "is not a valid backup name: start with a letter or digit, then use only letters, "
            "digits, _, . and -",
        )
    ]


def test_names_with_dots_are_quoted_in_key_paths(problems: Problems) -> None:
    assert problems(
        REPOSITORY + '[backups."my.pics"]\npaths = ["x"]\nrepositories = ["local"]'
    ) == [('backups."my.pics".paths[0]', f'"x" {ABSOLUTE}')]


# ---------------------------------------------------------------------------- ${NAME}


def test_expansion_everywhere(load: Load) -> None:
    text = (
        BASE.replace('"/srv/restic"', '"rest:https://${USER}:${PASS}@host/${USER}"')
        + 'excludes = ["${HOME}/.cache", "$${literal}", "cost: $5"]\n'
        + "[[backups.home.hooks.after]]\n"
        + 'type = "http"\nurl = "https://hc-ping.com/${UUID}"\n'
        + 'headers = { Authorization = "Bearer ${TOKEN}" }\n'
    )
    env = {"USER": "me", "PASS": "pw", "HOME": "/root", "UUID": "abc", "TOKEN": "t0k"}
    config = load(text, env=env)
    assert config.repositories["local"].location == "rest:https://me:pw@host/me"
    backup = config.backups["home"]
    assert backup.excludes == ("/root/.cache", "${literal}", "cost: $5")
    assert backup.hooks.after == (
        HttpHook(
            "https://hc-ping.com/abc",
            headers=(("Authorization", "Bearer t0k"),),
            secrets=("abc", "t0k"),  # what the environment gave: hooks never show it
        ),
    )


def test_an_expanded_value_is_not_expanded_again(load: Load) -> None:
    config = load(BASE.replace('"/srv/restic"', '"${A}"'), env={"A": "/x/${B}"})
    assert config.repositories["local"].location == "/x/${B}"


def test_unset_variables_are_reported_at_their_key(problems: Problems) -> None:
    text = (
        BASE.replace('"/srv/restic"', '"${REPO}"')
        + 'schedule = ["${WHEN}", "${WHEN} ${WHEN}"]\n'
        + "[backups.home.hooks]\nbefore = [{ type = 'command', command = ['${CMD}'] }]\n"
    )
    assert problems(text) == [
        ("repositories.local.location", f"environment variable REPO {UNSET}"),
        ("backups.home.schedule[0]", f"environment variable WHEN {UNSET}"),
        ("backups.home.schedule[1]", f"environment variable WHEN {UNSET}"),
        ("backups.home.hooks.before[0].command[0]", f"environment variable CMD {UNSET}"),
    ]


def test_a_malformed_reference(problems: Problems) -> None:
    text = BASE.replace('"/srv/restic"', '"/srv/${REPO"').replace('"/home"]', '"/${1x}"]')
    message = "has a ${ that is not a ${NAME} reference: write $${ for a literal ${"
    assert problems(text) == [
        ("repositories.local.location", message),
        ("backups.home.paths[0]", message),
    ]


def test_an_expanded_value_is_never_quoted(problems: Problems) -> None:
    text = BASE + 'schedule = ["${S}", "${C}"]\npriority = "${S}"\n'
    text = text.replace('["local"]', '["${S}"]')
    env = {"S": "topsecret", "C": "topsecret * * * *"}
    assert problems(text, env=env) == [
        (
            "backups.home.repositories[0]",
            "repository the value (from the environment) is not defined: define it under "
            "[repositories.NAME] or fix the name",
        ),
        (
            "backups.home.schedule[0]",
            "the value (from the environment) is not a duration: use a number and a unit "
            '(ms, s, m, h, d, w), largest first, e.g. "1h30m"',
        ),
        (
            "backups.home.schedule[1]",
            "the value (from the environment) is not a cron expression",
        ),
        (
            "backups.home.priority",
            "the value (from the environment) is not a priority: use immediate, next, "
            "superior, normal, inferior, on-idle or an integer",
        ),
    ]


# ------------------------------------------------------------------ unknown keys, types


def test_unknown_keys_at_every_level(problems: Problems) -> None:
    text = (
        'backup = 1\n[daemon]\nmax_concurent_jobs = 2\n[metrics]\nlisten_address = "x"\n'
        + BASE
        + "pasword = 'x'\n"
        + "retention = { keep_dayly = 7 }\n"
        + "resources = { cpu_weigth = 5 }\n"
        + "[backups.home.hooks]\nbefor = []\n"
        + "[[backups.home.hooks.after]]\ntype = 'http'\nurl = 'http://h/'\ntimout = '5s'\n"
        + "[[backups.home.hooks.after]]\ntype = 'command'\ncommand = ['/bin/x']\nurl = 'x'\n"
        + "[repositories.local.check]\nread_subset = '5%'\n"
        + "[repositories.local.prune]\nread_data_subset = '5%'\n"
    )
    found = problems(text.replace("[backups.home]\n", "[backups.home]\nexclude = []\n"))
    assert found == [
        ("backup", 'unknown key; did you mean "backups"?'),
        ("daemon.max_concurent_jobs", 'unknown key; did you mean "max_concurrent_jobs"?'),
        ("metrics.listen_address", 'unknown key; did you mean "listen"?'),
        ("repositories.local.check.read_subset", 'unknown key; did you mean "read_data_subset"?'),
        (
            "repositories.local.prune.read_data_subset",
            "unknown key: remove it, or use one of: schedule, priority",
        ),
        ("backups.home.exclude", 'unknown key; did you mean "excludes"?'),
        ("backups.home.pasword", PASWORD_HINT),  # not close to any backup key
        ("backups.home.retention.keep_dayly", 'unknown key; did you mean "keep_daily"?'),
        ("backups.home.retention", KEEPS_NOTHING),
        ("backups.home.resources.cpu_weigth", 'unknown key; did you mean "cpu_weight"?'),
        ("backups.home.hooks.befor", 'unknown key; did you mean "before"?'),
        ("backups.home.hooks.after[0].timout", 'unknown key; did you mean "timeout"?'),
        (
            "backups.home.hooks.after[1].url",
            "unknown key: remove it, or use one of: type, command, env, cwd, timeout, on_failure",
        ),
    ]


PASWORD_HINT = (
    "unknown key: remove it, or use one of: paths, repositories, excludes, schedule, watch, "
    "priority, upload_limit, download_limit, retention, resources, hooks"
)


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("excludes = [true]", "excludes[0]", "must be a string, not a boolean"),
        ("excludes = ['']", "excludes[0]", "must not be empty"),
        ("schedule = '1d'", "schedule", "must be an array, not a string"),
        ("schedule = [{}]", "schedule[0]", "must be a string, not a table"),
        (
            "watch = 'yes'",
            "watch",
            "must be true, false or a table { wait_min, wait_max }, not a string",
        ),
        ("priority = 1.5", "priority", f"1.5 is not a priority: {PRIORITY}"),
        ("upload_limit = 1.5", "upload_limit", f"1.5 is not a rate: {RATE}"),
        ("download_limit = '5x'", "download_limit", f'"5x" is not a rate: {RATE}'),
        ("upload_limit = 0", "upload_limit", "0 is too small: a rate must be at least 1 byte"),
        ("retention = []", "retention", "must be a table, not an array"),
        (
            "retention = { keep_daily = '7' }",
            "retention.keep_daily",
            "must be an integer, not a string",
        ),
        (
            "retention = { keep_daily = -1 }",
            "retention.keep_daily",
            "-1 is out of range: use a number at least 0",
        ),
        ("retention = { keep_daily = 0 }", "retention", KEEPS_NOTHING),
        ("retention = {}", "retention", KEEPS_NOTHING),
        (
            "retention = { keep_within = '1w' }",
            "retention.keep_within",
            '"1w" is not a restic duration: use years, months, days, hours, largest first, '
            'e.g. "1y2m3d4h"',
        ),
        (
            "resources = { cpu_weight = 0 }",
            "resources.cpu_weight",
            "0 is out of range: use a number between 1 and 10000",
        ),
        (
            "resources = { io_weight = 10001 }",
            "resources.io_weight",
            "10001 is out of range: use a number between 1 and 10000",
        ),
        (
            "resources = { nice = 20 }",
            "resources.nice",
            "20 is out of range: use a number between -20 and 19",
        ),
        (
            "resources = { nice = -21 }",
            "resources.nice",
            "-21 is out of range: use a number between -20 and 19",
        ),
        (
            "resources = { cpu_quota = 0.5 }",
            "resources.cpu_quota",
            '0.5 is not a percentage: use a string such as "50%"',
        ),
        (
            "resources = { memory_max = '1P' }",
            "resources.memory_max",
            f'"1P" is not a size: {SIZE}',
        ),
        (
            "resources = { ionice = 'low' }",
            "resources.ionice",
            '"low" is not one of idle, best-effort, realtime',
        ),
        ("hooks = []", "hooks", "must be a table, not an array"),
        ("hooks = { before = {} }", "hooks.before", f"{HOOK_ARRAY}, not a table"),
        ("hooks = { before = [1] }", "hooks.before[0]", "must be a table, not an integer"),
    ],
)
def test_backup_key_problems(problems: Problems, line: str, key: str, message: str) -> None:
    assert problems(BASE + line + "\n") == [(f"backups.home.{key}", message)]


# ------------------------------------------------------------------------ repositories


def test_password_sources(load: Load) -> None:
    def password(line: str, env: dict[str, str] | None = None) -> PasswordSource:
        text = BASE.replace('password_file = "/etc/henbackup/secrets/local"', line)
        return load(text, env=env).repositories["local"].password

    assert password("password = 'pw'") == PasswordSource("password", "pw")
    assert password("password_file = '/p'") == PasswordSource("file", "/p")
    assert password("password_command = 'pass x'") == PasswordSource("command", "pass x")
    credential = password("password_credential = 'local'", env={"CREDENTIALS_DIRECTORY": "/c/"})
    assert credential == PasswordSource("file", "/c/local")


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ("", "", f"has no password: set one of {KINDS}"),
        (
            "password = 'a'\npassword_command = 'b'",
            "",
            f"password and password_command are set: keep exactly one of {KINDS}",
        ),
        (
            "password = 'a'\npassword_command = 'b'\npassword_file = '/c'",
            "",
            f"password, password_file and password_command are set: keep exactly one of {KINDS}",
        ),
        ("password = ''", ".password", "must not be empty"),
        ("password = 5", ".password", "must be a string, not an integer"),
        ("password_file = 'secrets/x'", ".password_file", f'"secrets/x" {ABSOLUTE}'),
        ("password_command = []", ".password_command", "must be a string, not an array"),
        ("password_credential = 'x'", ".password_credential", CREDENTIALS),
        (
            "password_credential = '../x'",
            ".password_credential",
            "must be a credential name, as in LoadCredential=NAME:PATH (no /)",
        ),
    ],
)
def test_password_problems(problems: Problems, lines: str, key: str, message: str) -> None:
    text = BASE.replace('password_file = "/etc/henbackup/secrets/local"', lines)
    assert problems(text) == [(f"repositories.local{key}", message)]


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        ("env = []", "env", "must be a table, not an array"),
        ("env = { A = 1 }", "env.A", "must be a string, not an integer"),
        ("env = { 'A B' = 'x' }", 'env."A B"', ENV_NAME),
        ("options = 's3.x=y'", "options", "must be an array, not a string"),
        ("options = [1]", "options[0]", "must be a string, not an integer"),
        ("download_limit = '1T'", "download_limit", f'"1T" is not a rate: {RATE}'),
        ("check = '1w'", "check", "must be a table, not a string"),
        (
            "check = { schedule = ['1x'] }",
            "check.schedule[0]",
            f'"1x" is not a duration: {DURATION}',
        ),
        ("check = { priority = 'low' }", "check.priority", f'"low" is not a priority: {PRIORITY}'),
        (
            "check = { read_data_subset = '0%' }",
            "check.read_data_subset",
            '"0%" is too small: a percentage must be more than 0%',
        ),
        (
            "check = { read_data_subset = '101%' }",
            "check.read_data_subset",
            '"101%" is too large: use at most 100%',
        ),
        (
            "check = { read_data_subset = '3/2' }",
            "check.read_data_subset",
            f'"3/2" is not a fraction n/m with 1 <= n <= m: {SUBSET}',
        ),
        (
            "check = { read_data_subset = '0/2' }",
            "check.read_data_subset",
            f'"0/2" is not a fraction n/m with 1 <= n <= m: {SUBSET}',
        ),
        (
            "check = { read_data_subset = '0M' }",
            "check.read_data_subset",
            f'"0M" is not a data subset: {SUBSET}',
        ),
        (
            "check = { read_data_subset = 'half' }",
            "check.read_data_subset",
            f'"half" is not a data subset: {SUBSET}',
        ),
        (
            "check = { read_data_subset = 5 }",
            "check.read_data_subset",
            "must be a string, not an integer",
        ),
        (
            "prune = { schedule = ['0 3 * * 8'] }",
            "prune.schedule[0]",
            '"0 3 * * 8" is not a cron expression: day-of-week 8 is out of range 0-7',
        ),
    ],
)
def test_repository_key_problems(problems: Problems, line: str, key: str, message: str) -> None:
    assert problems(repository_with(line)) == [(f"repositories.local.{key}", message)]


def repository_with(line: str) -> str:
    """BASE with `line` added to the repository's table."""
    return REPOSITORY + line + "\n" + BACKUP


def test_missing_location(problems: Problems) -> None:
    assert problems(BASE.replace('location = "/srv/restic"\n', "")) == [
        ("repositories.local.location", "is required: add it")
    ]


@pytest.mark.parametrize("subset", ["5%", "0.5%", "100%", "1/10", "10/10", "500M", "2g", "1024"])
def test_read_data_subset_forms(load: Load, subset: str) -> None:
    config = load(repository_with(f"check = {{ read_data_subset = '{subset}' }}"))
    assert config.repositories["local"].check == Maintenance((), INFERIOR, subset)


def test_maintenance_priority(load: Load) -> None:
    config = load(repository_with("prune = { schedule = ['@weekly'], priority = 'on-idle' }"))
    prune = config.repositories["local"].prune
    assert prune == Maintenance((Cron("@weekly"),), Priority(Priority.ON_IDLE_BAND))


# ----------------------------------------------------------------------------- backups


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ('["1h30m"]', (Interval(5400.0, "1h30m"),)),
        ('["500ms"]', (Interval(0.5, "500ms"),)),
        ('["0 3 * * *"]', (Cron("0 3 * * *"),)),
        ('["*/30 0 3 * * *"]', (Cron("*/30 0 3 * * *"),)),
        ('["@daily"]', (Cron("@daily"),)),
        ('["1d", "0 3 * * sun"]', (Interval(86400.0, "1d"), Cron("0 3 * * sun"))),
        ("[]", ()),
    ],
)
def test_schedule_entries(load: Load, entries: str, expected: tuple[object, ...]) -> None:
    assert load(BASE + f"schedule = {entries}\n").backups["home"].schedule == expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("0s", '"0s" is too short: use a duration above 0'),
        ("1x", f'"1x" is not a duration: {DURATION}'),
        (
            "1h 30m",
            f'"1h 30m" is not a cron expression: {CRON_FIELDS}, not 2 {NO_SPACES}',
        ),
        ("0 25 * * *", '"0 25 * * *" is not a cron expression: hour 25 is out of range 0-23'),
        (
            "0 0 31 2 *",
            '"0 0 31 2 *" is not a cron expression: never matches: no day of the '
            "day-of-month field exists in feb",
        ),
        (
            "@often",
            f'"@often" is not a cron expression: {CRON_FIELDS}, not 1 {NO_SPACES}',
        ),
    ],
)
def test_schedule_problems(problems: Problems, entry: str, message: str) -> None:
    assert problems(BASE + f"schedule = ['{entry}']\n") == [("backups.home.schedule[0]", message)]


@pytest.mark.parametrize(
    ("line", "watch"),
    [
        ("watch = true", Watch()),
        ("watch = false", None),
        ("watch = {}", Watch()),
        ("watch = { wait_min = '1s' }", Watch(1.0, 300.0)),
        ("watch = { wait_min = '0s', wait_max = '0s' }", Watch(0.0, 0.0)),
        ("watch = { wait_min = '1m', wait_max = '1m' }", Watch(60.0, 60.0)),
    ],
)
def test_watch(load: Load, line: str, watch: Watch | None) -> None:
    assert load(BASE + line + "\n").backups["home"].watch == watch


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        (
            "watch = { wait_min = '1m', wait_max = '30s' }",
            "wait_max",
            "is shorter than wait_min: make it at least wait_min",
        ),
        (
            "watch = { wait_min = '10m' }",
            "wait_min",
            "is longer than the default wait_max (300s): set wait_max too",
        ),
        ("watch = { wait_min = 5 }", "wait_min", f"5 is not a duration: {DURATION}"),
        (
            "watch = { wait_max = '1m', wait_mn = '1s' }",
            "wait_mn",
            'unknown key; did you mean "wait_min"?',
        ),
    ],
)
def test_watch_problems(problems: Problems, line: str, key: str, message: str) -> None:
    assert problems(BASE + line + "\n") == [(f"backups.home.watch.{key}", message)]


def test_priorities_and_limits(load: Load) -> None:
    backup = load(BASE + "priority = 'next'\nupload_limit = 1000\ndownload_limit = '2M'\n")
    home = backup.backups["home"]
    assert (home.priority, home.upload_limit, home.download_limit) == (
        Priority(Priority.NEXT_BAND),
        1000,
        2 * 1024**2,
    )


def test_retention(load: Load) -> None:
    line = "retention = { keep_last = 3, keep_hourly = 0, keep_yearly = 2, keep_within = '1y2m' }"
    assert load(BASE + line).backups["home"].retention == Retention(
        keep_last=3, keep_hourly=0, keep_yearly=2, keep_within="1y2m"
    )
    line = "retention = { keep_within = '3d4h' }"
    assert load(BASE + line).backups["home"].retention == Retention(keep_within="3d4h")


def test_paths_and_repositories_problems(problems: Problems) -> None:
    text = (
        REPOSITORY + '[backups.a]\npaths = []\nrepositories = []\n[backups.b]\nexcludes = ["x"]\n'
    )
    text += '[backups.c]\npaths = ["/", "etc"]\nrepositories = ["locl", "local", "local", "far"]\n'
    assert problems(text) == [
        ("backups.a.paths", "must not be empty: list absolute paths to back up"),
        ("backups.a.repositories", "must not be empty: list the repositories to back up to"),
        ("backups.b.paths", "is required: add it"),
        ("backups.b.repositories", "is required: add it"),
        ("backups.c.paths[1]", f'"etc" {ABSOLUTE}'),
        (
            "backups.c.repositories[0]",
            'repository "locl" is not defined; did you mean "local"?',
        ),
        (
            "backups.c.repositories[3]",
            'repository "far" is not defined: define it under [repositories.NAME] or fix the name',
        ),
        ("backups.c.repositories", 'lists repository "local" twice: list it once'),
    ]


@pytest.mark.parametrize(
    ("paths", "key", "message"),
    [
        ("'/home'", "paths", "must be an array, not a string"),
        ("[1, '/']", "paths[0]", "must be a string, not an integer"),
        ("['']", "paths[0]", f'"" {ABSOLUTE}'),
    ],
)
def test_paths_types(problems: Problems, paths: str, key: str, message: str) -> None:
    text = BASE.replace('paths = ["/home"]', f"paths = {paths}")
    assert problems(text) == [(f"backups.home.{key}", message)]


def test_a_repository_with_problems_is_still_defined_for_backups(problems: Problems) -> None:
    text = BASE.replace('location = "/srv/restic"\n', 'location = ""\n')
    assert problems(text) == [("repositories.local.location", "must not be empty")]


def test_resources(load: Load) -> None:
    line = "resources = { cpu_weight = 1, io_weight = 10000, cpu_quota = '150%', memory_max = 4096, nice = -20, ionice = 'best-effort' }"  # noqa: E501
    assert load(BASE + line).backups["home"].resources == Resources(
        1, 10000, 1.5, 4096, -20, "best-effort"
    )


# ------------------------------------------------------------------------------- hooks


def test_hooks(load: Load) -> None:
    text = BASE + (
        "[[backups.home.hooks.before]]\n"
        'type = "command"\ncommand = ["/usr/bin/pg_dump", "-f", "/var/backups/db.sql"]\n'
        'env = { PGUSER = "postgres" }\ncwd = "/tmp"\ntimeout = "10m"\non_failure = "continue"\n'
        "[[backups.home.hooks.before]]\n"
        'type = "http"\nurl = "https://example.com/start"\nmethod = "put"\n'
        'headers = { "X-Token" = "t" }\nbody = "{}"\ntimeout = "5s"\nretries = 2\n'
        'on_failure = "ignore"\n'
        "[backups.home.hooks]\n"
        'failure = [{ type = "http", url = "http://[::1]:8080/fail" }]\n'
    )
    assert load(text).backups["home"].hooks == Hooks(
        before=(
            CommandHook(
                ("/usr/bin/pg_dump", "-f", "/var/backups/db.sql"),
                env=(("PGUSER", "postgres"),),
                cwd="/tmp",
                timeout=600.0,
                on_failure="continue",
            ),
            HttpHook(
                "https://example.com/start",
                method="PUT",
                headers=(("X-Token", "t"),),
                body="{}",
                timeout=5.0,
                retries=2,
                on_failure="ignore",
            ),
        ),
        failure=(HttpHook("http://[::1]:8080/fail"),),
    )


@pytest.mark.parametrize(
    ("hook", "key", "message"),
    [
        ("url = 'http://h/'", "type", 'is required: set type = "http" or type = "command"'),
        ("type = 'shell'", "type", '"shell" is not a hook type: use "http" or "command"'),
        ("type = 'http'", "url", "is required: add it"),
        ("type = 'http'\nurl = 'ftp://h/'", "url", URL),
        ("type = 'http'\nurl = 'http:///x'", "url", URL),
        ("type = 'http'\nurl = 'http://h:99999/'", "url", URL),
        (
            "type = 'http'\nurl = 'http://h/'\nmethod = 'GET /'",
            "method",
            '"GET /" is not an HTTP method such as POST or GET',
        ),
        (
            "type = 'http'\nurl = 'http://h/'\nheaders = { 'X Y' = 'v' }",
            'headers."X Y"',
            "is not a valid HTTP header name",
        ),
        (
            "type = 'http'\nurl = 'http://h/'\nheaders = { X = 1 }",
            "headers.X",
            "must be a string, not an integer",
        ),
        ("type = 'http'\nurl = 'http://h/'\nbody = {}", "body", "must be a string, not a table"),
        (
            "type = 'http'\nurl = 'http://h/'\nretries = -1",
            "retries",
            "-1 is out of range: use a number at least 0",
        ),
        (
            "type = 'http'\nurl = 'http://h/'\ntimeout = '0s'",
            "timeout",
            '"0s" is too short: use a duration above 0',
        ),
        (
            "type = 'http'\nurl = 'http://h/'\ntimeout = 60",
            "timeout",
            f"60 is not a duration: {DURATION}",
        ),
        (
            "type = 'http'\nurl = 'http://h/'\non_failure = 'abort'",
            "on_failure",
            '"abort" is not one of ignore, continue, stop',
        ),
        ("type = 'command'", "command", "is required: add it"),
        ("type = 'command'\ncommand = '/bin/true'", "command", f"{ARGV}, not a string"),
        (
            "type = 'command'\ncommand = []",
            "command",
            'must not be empty: give the program and its arguments, e.g. ["/usr/bin/true"]',
        ),
        (
            "type = 'command'\ncommand = ['']",
            "command[0]",
            "must not be empty: give the program to run",
        ),
        (
            "type = 'command'\ncommand = ['/bin/x', 1]",
            "command[1]",
            "must be a string, not an integer",
        ),
        ("type = 'command'\ncommand = ['x']\ncwd = 'tmp'", "cwd", f'"tmp" {ABSOLUTE}'),
        ("type = 'command'\ncommand = ['x']\nenv = { 1A = 'x' }", "env.1A", ENV_NAME),
    ],
)
def test_hook_problems(problems: Problems, hook: str, key: str, message: str) -> None:
    text = BASE + "[[backups.home.hooks.failure]]\n" + hook + "\n"
    assert problems(text) == [(f"backups.home.hooks.failure[0].{key}", message)]


# ----------------------------------------------------------------- daemon and metrics


def test_daemon_and_metrics(load: Load) -> None:
    text = (
        '[daemon]\nhostname = "nas"\nmax_concurrent_jobs = 3\nrestic = "/opt/restic"\n'
        'stall_timeout = "2m30s"\n[metrics]\nlisten = "[::]:9811"\n'
    )
    config = load(text)
    assert config.daemon == Daemon("nas", 3, None, None, "/opt/restic", 150.0)
    assert load("").daemon.stall_timeout == 600.0  # the documented default, 10m
    assert config.metrics == Metrics(None, ("::", 9811))


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ("[daemon]\nhostname = ''", "daemon.hostname", "must not be empty"),
        (
            "[daemon]\nmax_concurrent_jobs = 0",
            "daemon.max_concurrent_jobs",
            "0 is out of range: use a number at least 1",
        ),
        (
            "[daemon]\nmax_concurrent_jobs = true",
            "daemon.max_concurrent_jobs",
            "must be an integer, not a boolean",
        ),
        ("[daemon]\nupload_limit = '50 K'", "daemon.upload_limit", f'"50 K" is not a rate: {RATE}'),
        ("[daemon]\nrestic = 1", "daemon.restic", "must be a string, not an integer"),
        (
            "[daemon]\nstall_timeout = '0s'",
            "daemon.stall_timeout",
            '"0s" is too short: use a duration above 0',
        ),
        (
            "[daemon]\nstall_timeout = 600",
            "daemon.stall_timeout",
            f"600 is not a duration: {DURATION}",
        ),
        ("[metrics]\ntextfile = 'x.prom'", "metrics.textfile", f'"x.prom" {ABSOLUTE}'),
        ("[metrics]\nlisten = 9811", "metrics.listen", f"9811 is not an address: {LISTEN}"),
        (
            "[metrics]\nlisten = 'localhost:99999'",
            "metrics.listen",
            '"localhost:99999" is not an address: the port must be between 1 and 65535',
        ),
        (
            "[metrics]\nlisten = 'localhost:123456'",
            "metrics.listen",
            f'"localhost:123456" is not an address: {LISTEN}',
        ),
        (
            "[metrics]\nlisten = 'h:0'",
            "metrics.listen",
            '"h:0" is not an address: the port must be between 1 and 65535',
        ),
        (
            "[metrics]\nlisten = 2024-01-01",
            "metrics.listen",
            f"a date or time is not an address: {LISTEN}",
        ),
    ],
)
def test_daemon_and_metrics_problems(problems: Problems, text: str, key: str, message: str) -> None:
    assert problems(text + "\n") == [(key, message)]


# ------------------------------------------------------------------- all problems at once


def test_five_mistakes_are_all_reported(write_config: WriteConfig) -> None:
    path = write_config(
        """
        [repositories.nas]
        location = "rest:https://backup:hunter2@nas.lan:8000/"
        password = "hunter2"
        password_file = "/etc/henbackup/nas"

        [backups.home]
        paths = ["/home"]
        repositories = ["nass"]
        schedule = ["5x"]
        """,
        {
            "conf.d/50-db.toml": """
            [backups.db]
            paths = ["/var/lib/postgresql"]
            repositories = ["nas"]
            exclude = ["*.tmp"]

            [[backups.db.hooks.after]]
            type = "http"
            url = "https://hc-ping.com/${HC_UUID}"
            """
        },
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, env={}, hostname="h")
    main, db = str(path), str(path.parent / "conf.d/50-db.toml")
    assert error.value.problems == (
        Problem(
            main,
            "repositories.nas",
            "password and password_file are set: keep exactly one of password, password_file, "
            "password_command, password_credential",
        ),
        Problem(
            main,
            "backups.home.repositories[0]",
            'repository "nass" is not defined; did you mean "nas"?',
        ),
        Problem(
            main,
            "backups.home.schedule[0]",
            '"5x" is not a duration: use a number and a unit (ms, s, m, h, d, w), largest '
            'first, e.g. "1h30m"',
        ),
        Problem(
            db,
            "backups.db.hooks.after[0].url",
            "environment variable HC_UUID is not set: set it in the service's environment or "
            "remove the reference",
        ),
        Problem(db, "backups.db.exclude", 'unknown key; did you mean "excludes"?'),
    )
    assert str(error.value).endswith("(and 4 more)")
    assert "hunter2" not in str(error.value)
    assert not any("hunter2" in str(problem) for problem in error.value.problems)


# ----------------------------------------------------------------------------- secrets


def test_secret_values_never_appear_in_problems(problems: Problems) -> None:
    secret = "Sup3r$ecret"
    text = f"""
    [repositories.r]
    location = ["rest:https://u:{secret}@h/"]
    password = ["{secret}"]
    env = {{ "BAD NAME" = "{secret}", OK = 5, ALSO = ["{secret}"] }}
    options = [["{secret}"]]
    [backups.b]
    paths = ["/"]
    repositories = ["r"]
    [[backups.b.hooks.before]]
    type = "http"
    url = "ftp://u:{secret}@h/"
    headers = {{ "X Y" = "{secret}", Z = ["{secret}"] }}
    body = ["{secret}"]
    [[backups.b.hooks.before]]
    type = "command"
    command = ["{secret}", 5]
    env = {{ "1X" = "{secret}" }}
    """
    found = problems(text, env={"S": secret})
    assert [key for key, _ in found] == [
        "repositories.r.location",
        "repositories.r.password",
        'repositories.r.env."BAD NAME"',
        "repositories.r.env.OK",
        "repositories.r.env.ALSO",
        "repositories.r.options[0]",
        "backups.b.hooks.before[0].url",
        'backups.b.hooks.before[0].headers."X Y"',
        "backups.b.hooks.before[0].headers.Z",
        "backups.b.hooks.before[0].body",
        "backups.b.hooks.before[1].command[1]",
        "backups.b.hooks.before[1].env.1X",
    ]
    assert not any(secret in key + message for key, message in found)


def test_secret_from_the_environment_is_never_quoted(problems: Problems) -> None:
    secret = "hunter2-from-env"
    text = BASE + (
        "excludes = ['${S}']\nschedule = ['${S}']\nupload_limit = '${S}'\n"
        + "retention = { keep_within = '${S}' }\n"
        + "resources = { cpu_quota = '${S}', ionice = '${S}' }\n"
        + "watch = { wait_min = '${S}' }\n"
    )
    found = problems(text, env={"S": secret})
    assert [key for key, _ in found] == [
        "backups.home.schedule[0]",
        "backups.home.watch.wait_min",
        "backups.home.upload_limit",
        "backups.home.retention.keep_within",
        "backups.home.resources.cpu_quota",
        "backups.home.resources.ionice",
    ]
    assert all(message.startswith("the value (from the environment) is") for _, message in found)
