"""load_config: whole configs, files and merging, ${NAME}, every problem at once, and
secret-free problems."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from henbackup.config.load import load_config
from henbackup.config.model import (
    INFERIOR,
    NORMAL,
    Backup,
    Cron,
    Daemon,
    Hooks,
    HttpHook,
    Interval,
    Maintenance,
    Metrics,
    PasswordSource,
    Repository,
    Resources,
    Retention,
    Watch,
)
from henbackup.errors import ConfigError, Problem

from .samples import (
    ABSOLUTE,
    BACKUP,
    BASE,
    FULL_EXAMPLE,
    LISTEN,
    REPOSITORY,
    UNSET,
    Load,
    Problems,
    WriteConfig,
)

# ----------------------------------------------------------------------- whole configs


def test_the_full_example(load: Load) -> None:
    config = load(FULL_EXAMPLE, env={"AWS_KEY": "AKIA", "AWS_SECRET": "s3cr3t"})
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


def test_a_conf_d_link_to_nothing_is_a_problem_not_skipped(write_config: WriteConfig) -> None:
    """Skipped before: every backup the moved (or unmounted) file defined vanished, without
    a word from check-config."""
    path = write_config(REPOSITORY + BACKUP)
    link = path.parent / "conf.d" / "20-nas.toml"
    link.parent.mkdir()
    link.symlink_to("/mnt/nas/henbackup.toml")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={}, hostname="h")
    assert error.value.problems == (
        Problem(
            str(link),
            "",
            "a link to /mnt/nas/henbackup.toml, which does not exist: fix or remove the link",
        ),
    )


def test_a_directory_given_as_the_configuration_is_named_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path, env={}, hostname="h")
    assert error.value.problems == (
        Problem(str(tmp_path), "", "is a directory: name the configuration file itself"),
    )


NOT_REGULAR = "is not a regular file: name the configuration file itself"


@pytest.mark.timeout(10)
def test_a_fifo_as_the_configuration_is_refused_not_waited_on(write_config: WriteConfig) -> None:
    """Opening it waited for a writer: check-config hung, the daemon froze at reload."""
    path = write_config(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={}, hostname="h")
    assert error.value.problems == (Problem(str(path), "", NOT_REGULAR),)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_conf_d_link_to_no_regular_file_is_a_problem(
    write_config: WriteConfig, tmp_path: Path, kind: str
) -> None:
    path = write_config(REPOSITORY + BACKUP)
    link = path.parent / "conf.d" / "20-nas.toml"
    link.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        link.symlink_to(tmp_path / "fifo")
    else:
        link.symlink_to("/dev/null")  # a device, as /dev/zero (which never ends)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={}, hostname="h")
    assert error.value.problems == (Problem(str(link), "", NOT_REGULAR),)


def test_a_huge_configuration_is_not_read_whole(write_config: WriteConfig) -> None:
    path = write_config("#" * (4 << 20) + "\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, env={}, hostname="h")
    assert error.value.problems == (
        Problem(str(path), "", "is over 4 MiB: no configuration is that big"),
    )


def test_a_configuration_through_a_link_is_read(write_config: WriteConfig) -> None:
    target = write_config(REPOSITORY + BACKUP)
    link = target.parent / "link.toml"
    link.symlink_to(target)
    assert load_config(link, env={}, hostname="h").files == (link,)


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


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            '[daemon]\nhostname = "a"\nhostname = "b"\n',
            "daemon.hostname",
            "set twice (at line 3, column 15): keep one",
        ),
        (
            "x = 1\n[[a.b]] # c\nc = 1\nc = 2\n",
            "a.b.c",
            "set twice (at line 4, column 6): keep one",
        ),
        (
            '[backups."we.ird"]\nx = 1\n[backups."we.ird"]\n',
            'backups."we.ird"',
            "table declared twice (at line 3, column 18): merge them",
        ),
    ],
)
def test_a_key_or_table_given_twice_is_named_without_its_value(
    write_config: WriteConfig, text: str, key: str, message: str
) -> None:
    path = write_config(text)
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    assert error.value.problems == (Problem(str(path), key, message),)


def test_a_value_given_twice_over_lines_names_no_part_of_it(write_config: WriteConfig) -> None:
    """The line tomllib names is the value's last: what is before an "=" there is the value
    (a token), not a key."""
    path = write_config('[b]\nc = 1\nc = """\ncurl -H X-Token=s3cr3t"""\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, env={})
    (problem,) = error.value.problems
    assert "X-Token" not in problem.key + problem.message
    assert problem.message.startswith("invalid TOML: Cannot overwrite a value")


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


def test_a_name_has_at_most_128_characters(problems: Problems) -> None:
    """Names name the state directory's files, within the file system's 255 bytes."""
    longest = "p" * 128
    backup = '[backups.{}]\npaths = ["/"]\nrepositories = []\n'
    assert f"backups.{longest}" not in dict(problems(backup.format(longest)))
    assert problems(backup.format(longest + "p")) == [
        (f"backups.{longest}p", "is too long for a backup name: use at most 128 characters")
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


def test_a_conf_d_its_reader_may_not_list_is_a_problem_not_an_empty_one() -> None:
    """As a user who may read the main file but not list conf.d (0700, root's): Path.glob
    once took that for an empty conf.d, and check-config said a config without its
    conf.d files was valid."""
    with tempfile.TemporaryDirectory(dir="/tmp") as place:  # pytest's tmp_path is root's alone
        assert_conf_d_unlisted(Path(place))


def assert_conf_d_unlisted(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    (root / "conf.d").mkdir(parents=True)
    (root / "conf.d" / "backups.toml").write_text("[backups.x]\n")
    main = root / "henbackup.toml"
    main.write_text("[daemon]\nhostname = 'h'\n")
    for place in (tmp_path, root):
        place.chmod(0o755)
    main.chmod(0o644)
    (root / "conf.d").chmod(0o700)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # as nobody, who may not list conf.d
        said = "no error"
        try:
            os.setgid(65534)
            os.setuid(65534)
            load_config(main, env={})
        except ConfigError as error:
            said = "\n".join(f"{p.file}: {p.message}" for p in error.problems)
        except BaseException as error:  # told to the test, which fails
            said = repr(error)
        finally:
            os.write(write, said.encode())
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as told:
        said = told.read().decode()
    os.waitpid(pid, 0)
    assert said == f"{root / 'conf.d'}: cannot be listed: Permission denied"
