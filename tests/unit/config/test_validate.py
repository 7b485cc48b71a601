"""Every key's validation: unknown keys and types, repositories, backups, hooks, the daemon
and metrics; each problem with its key path and a hint."""

from __future__ import annotations

import pytest

from henbackup.config.convert import NO_NUL
from henbackup.config.model import (
    INFERIOR,
    CommandHook,
    Cron,
    Daemon,
    Hooks,
    HttpHook,
    Interval,
    Maintenance,
    Metrics,
    PasswordSource,
    Priority,
    Resources,
    Retention,
    Watch,
)

from .samples import (
    ABSOLUTE,
    ARGV,
    BACKUP,
    BASE,
    CREDENTIALS,
    CRON_FIELDS,
    DURATION,
    ENV_NAME,
    HOOK_ARRAY,
    KEEPS_NOTHING,
    KINDS,
    LISTEN,
    NO_SPACES,
    PRIORITY,
    RATE,
    REPOSITORY,
    SIZE,
    SUBSET,
    URL,
    Load,
    Problems,
)

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
            "-1 is out of range: use a number between 0 and 2147483647",
        ),
        (  # before: accepted, and every forget failed (restic: value out of range)
            "retention = { keep_daily = 99999999999999999999 }",
            "retention.keep_daily",
            "99999999999999999999 is out of range: use a number between 0 and 2147483647",
        ),
        (
            "retention = { keep_last = 2147483648 }",
            "retention.keep_last",
            "2147483648 is out of range: use a number between 0 and 2147483647",
        ),
        (
            "retention = { keep_within = '99999999999999999999y' }",
            "retention.keep_within",
            '"99999999999999999999y" is too long: use numbers of at most 9 digits',
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
        (  # before: accepted, and the watcher, meeting it, died for every watched backup
            "excludes = ['*.tmp', 'cache/[a']",
            "excludes[1]",
            'exclude pattern "cache/[a" is malformed (see restic\'s --exclude)',
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
        # a NUL once passed, then ValueError (embedded null byte) ended check-config and the
        # daemon at start
        ('password_file = "/etc/p\\u0000w"', ".password_file", NO_NUL),
        ('password = "p\\u0000w"', ".password", NO_NUL),
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
        ('["1m"]', (Interval(60.0, "1m"),)),
        ('["0 3 * * *"]', (Cron("0 3 * * *"),)),
        ('["*/30 0 3 * * *"]', (Cron("*/30 0 3 * * *"),)),
        ('["@daily"]', (Cron("@daily"),)),
        ('["1d", "0 3 * * sun"]', (Interval(86400.0, "1d"), Cron("0 3 * * sun"))),
        ("[]", ()),
    ],
)
def test_schedule_entries(load: Load, entries: str, expected: tuple[object, ...]) -> None:
    assert load(BASE + f"schedule = {entries}\n").backups["home"].schedule == expected


SHORT = "use an interval of at least 1m (for each change, use watch)"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("0s", f'"0s" is too short: {SHORT}'),
        ("1ms", f'"1ms" is too short: {SHORT}'),  # before: a backup without a pause, for ever
        ("59s999ms", f'"59s999ms" is too short: {SHORT}'),
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


NUL = "must not contain a NUL character (\\u0000)"
HEADER_VALUE = "must be one line of Latin-1 text, without control characters"


@pytest.mark.parametrize(
    ("hook", "key", "message"),
    [
        ("url = 'http://h/'", "type", 'is required: set type = "http" or type = "command"'),
        ("type = 'shell'", "type", '"shell" is not a hook type: use "http" or "command"'),
        ("type = 'http'", "url", "is required: add it"),
        ("type = 'http'\nurl = 'ftp://h/'", "url", URL),
        ("type = 'http'\nurl = 'http:///x'", "url", URL),
        (
            "type = 'http'\nurl = 'http://h:99999/'",
            "url",
            "its port must be a number from 0 to 65535",
        ),
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
        (
            "type = 'http'\nurl = 'http://h/'\nheaders = { X = \"Bearer t0k\\n\" }",
            "headers.X",
            HEADER_VALUE,
        ),
        (
            "type = 'http'\nurl = 'http://h/'\nheaders = { X = \"t\\u0001\" }",
            "headers.X",
            HEADER_VALUE,
        ),
        (
            "type = 'http'\nurl = 'http://h/'\nheaders = { X = \"t\\u20ac\" }",
            "headers.X",
            HEADER_VALUE,
        ),
        ("type = 'http'\nurl = 'http://h/'\nbody = {}", "body", "must be a string, not a table"),
        (
            "type = 'http'\nurl = 'http://h/'\nretries = -1",
            "retries",
            "-1 is out of range: use a number between 0 and 100",
        ),
        (  # before: accepted, and the hook's job died of an OverflowError, without an event
            "type = 'http'\nurl = 'http://h/'\nretries = 1100",
            "retries",
            "1100 is out of range: use a number between 0 and 100",
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
        ('type = \'command\'\ncommand = ["/bin/x", "a\\u0000"]', "command[1]", NUL),
        ("type = 'command'\ncommand = ['x']\nenv = { A = \"\\u0000\" }", "env.A", NUL),
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


ONE_LINE = "must be one line, without control characters"


@pytest.mark.parametrize("control", ["\\n", "\\t", "\\r", "\\u001b", "\\u007f", "\\u009b"])
@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        (
            "[repositories.local]",
            '[daemon]\nhostname = "a{}b"\n[repositories.local]',
            "daemon.hostname",
        ),
        ('location = "/srv/restic"', 'location = "/srv/{}restic"', "repositories.local.location"),
        (
            'location = "/srv/restic"',
            'location = "/r"\noptions = ["a=b{}"]',
            "repositories.local.options[0]",
        ),
        ('paths = ["/home"]', 'paths = ["/home", "/a{}b"]', "backups.home.paths[1]"),
        (
            'paths = ["/home"]',
            'paths = ["/home"]\nexcludes = ["*.tmp{}"]',
            "backups.home.excludes[0]",
        ),
    ],
)
def test_a_control_character_is_refused_where_one_line_is_meant(
    problems: Problems, old: str, new: str, key: str, control: str
) -> None:
    # Before: accepted, and snapshots got the host "a\nb" (restic --host).
    assert problems(BASE.replace(old, new.format(control))) == [(key, ONE_LINE)]


def test_a_nul_character_is_still_said_as_such(problems: Problems) -> None:
    text = BASE.replace('paths = ["/home"]', 'paths = ["/a\\u0000"]')
    assert problems(text) == [("backups.home.paths[0]", NO_NUL)]


@pytest.mark.parametrize("special", ["@", "*", "?", "[", "]"])
def test_a_hostname_that_borg_would_read_as_a_pattern_is_refused(
    problems: Problems, special: str
) -> None:
    """Before: borg's retention of host `web*` (--glob-archives 'db@web*@*') pruned the
    archives of every host whose name starts with web; `@` broke archive names."""
    text = f'[daemon]\nhostname = "web{special}1"\n' + BASE
    assert problems(text) == [
        (
            "daemon.hostname",
            "must not contain @, *, ?, [ or ] (borg archive names and patterns hold the"
            " host): write the host's name alone",
        )
    ]


def test_a_name_of_any_script_is_one_line(load: Load) -> None:
    text = '[daemon]\nhostname = "caf\u00e9-\u00a0\u0416"\n' + BASE
    assert load(text).daemon.hostname == "caf\u00e9-\u00a0\u0416"


# ----------------------------------------------------------------------------- engines


def test_engine_is_restic_unless_borg_is_chosen(load: Load) -> None:
    config = load(
        BASE + '[repositories.borgrepo]\nengine = "borg"\nlocation = "/srv/borg"\n'
        'password_file = "/etc/henbackup/secrets/borg"\n'
    )
    assert config.repositories["local"].engine == "restic"
    assert config.repositories["borgrepo"].engine == "borg"
    assert config.daemon.borg == "borg"


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        (
            'engine = "borg"\noptions = ["s3.storage-class=STANDARD_IA"]',
            "options",
            "is for restic repositories only, and this one has engine = 'borg':"
            " remove it or change engine",
        ),
        (
            'engine = "borg"\ndownload_limit = "1M"',
            "download_limit",
            "is for restic repositories only, and this one has engine = 'borg':"
            " remove it or change engine",
        ),
        ('engine = "tar"', "engine", '"tar" is not one of restic, borg'),
    ],
)
def test_keys_of_another_engine(problems: Problems, line: str, key: str, message: str) -> None:
    assert problems(repository_with(line)) == [(f"repositories.local.{key}", message)]


def test_a_borg_repository_is_no_restic_backend(problems: Problems, load: Load) -> None:
    text = BASE.replace(
        'location = "/srv/restic"', 'engine = "borg"\nlocation = "s3:host/bucket-SECRET"'
    )
    assert problems(text) == [
        (
            "repositories.local.location",
            "is a restic s3: location, and this repository has engine = 'borg':"
            " use a path or ssh://USER@HOST/PATH, or engine = 'restic'",
        )
    ]
    ssh = 'engine = "borg"\nlocation = "ssh://me@nas/srv/borg"'
    assert (
        load(BASE.replace('location = "/srv/restic"', ssh)).repositories["local"].engine == "borg"
    )


def test_a_re_include_is_refused_on_a_backup_with_a_borg_repository(
    problems: Problems, load: Load
) -> None:
    """borg took restic's "!/data/keep" as a literal exclude: it backed up less than restic."""
    excludes = 'excludes = ["/data/*", "!/data/keep"]\n'
    borg = repository_with('engine = "borg"') + excludes
    assert problems(borg) == [
        (
            "backups.home.excludes[1]",
            're-includes ("!"), which borg cannot (repository "local" is borg\'s):'
            " narrow the other excludes instead, or back up to restic only",
        )
    ]
    assert load(BASE + excludes).backups["home"].excludes == ("/data/*", "!/data/keep")


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        # a wait longer than poll/epoll can take once raised OverflowError in a loop
        (
            "watch = { wait_min = '25d', wait_max = '25d' }",
            "watch.wait_min",
            '"25d" is too long: use at most 24d',
        ),
        # 6e20 s once overflowed the timerfd's struct and ended the worker at every start
        (
            "schedule = ['999999999999999w']",
            "schedule[0]",
            '"999999999999999w" is too long: use at most 5200w (100 years)',
        ),
    ],
)
def test_durations_too_long_for_the_kernel_are_refused(
    problems: Problems, line: str, key: str, message: str
) -> None:
    found = problems(BASE + line + "\n")
    assert (f"backups.home.{key}", message) in found


def test_a_schedule_interval_may_be_longer_than_a_wait(load: Load) -> None:
    (entry,) = load(BASE + "schedule = ['52w']\n").backups["home"].schedule
    assert entry.seconds == 52 * 7 * 86400
