"""Fuzz load_config: whatever the files hold, it returns a Config or raises ConfigError, and
no problem ever shows a secret (password, env, location, headers, body, ${} values)."""

from __future__ import annotations

import json
import math
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from henbackup.config.load import load_config
from henbackup.config.model import Config
from henbackup.config.plan import describe_plan
from henbackup.errors import ConfigError

SECRET = "S3cr3t!hunter2-xyzzy"  # "!" keeps it from ever being a bare TOML key
ENV = {"SECRET_VAR": SECRET, "HOME": "/root", "EVERY": "5m"}
CREDENTIALS = {"CREDENTIALS_DIRECTORY": "/run/credentials/henbackup.service"}
FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
Writer = Callable[[Path, str | None, Mapping[str, str]], Path]

# ------------------------------------------------------------------------------ values

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_characters = st.characters(blacklist_categories=("Cs",))  # TOML strings hold scalar values
scalars = st.one_of(
    st.text(_characters, max_size=12),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(timezones=st.just(UTC)),
    st.sampled_from(["${HOME}", "${UNSET}", "${SECRET_VAR}", "$${x}", "${", "", "/", "5m"]),
)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(_characters, max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def maybe(*good: object) -> st.SearchStrategy[Any]:
    """A plausible value most of the time, anything at all sometimes."""
    return st.one_of(st.sampled_from(good), st.sampled_from(good), junk)


def table(
    required: Mapping[str, st.SearchStrategy[Any]], optional: Mapping[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """A table of known keys, a misspelt one now and then, or junk in its place."""
    typos = st.dictionaries(st.sampled_from(["pasword", "schedul", "x"]), junk, max_size=1)
    known = st.fixed_dictionaries(dict(required), optional=dict(optional))
    return st.one_of(st.builds(lambda k, t: {**t, **k}, known, typos), known, junk)


secret_text = st.sampled_from(
    [SECRET, f"prefix {SECRET}", f"{SECRET}\n", "${SECRET_VAR}", f"{SECRET} ${{UNSET}}"]
)
secrets = st.one_of(secret_text, secret_text, st.lists(secret_text, max_size=2), junk)
locations = st.one_of(
    st.sampled_from(
        [
            f"rest:https://user:{SECRET}@host:8000/repo",
            f"s3:https://{SECRET}@s3.example.com/bucket",
            f"rest:https://u:{SECRET}@host/${{UNSET}}",
            "rest:https://u:${SECRET_VAR}@host/",
        ]
    ),
    secrets,
)
durations = maybe("5s", "1m", "1h30m", "500ms", "0s", "1w", "5x", 60, "${EVERY}", "${SECRET_VAR}")
rates = maybe("50K", "1M", 1024, "1.5M", 0, "1T", "${SECRET_VAR}")
priorities = maybe("normal", "next", "on-idle", "superior", 5, "bogus", "${SECRET_VAR}")
schedules = st.lists(
    maybe("1d", "*/15 * * * *", "0 0 31 2 *", "@daily", "1h 30m", "${EVERY}", "${SECRET_VAR}"),
    max_size=3,
)
names = st.sampled_from(["r", "nas", "bad name", "-x", "a.b", "é", ""])
env_tables = st.dictionaries(st.sampled_from(["AWS_KEY", "B", "1X", "bad name"]), secrets)
maintenance = table(
    {},
    {
        "schedule": schedules,
        "priority": priorities,
        "read_data_subset": maybe("5%", "1/10", "500M", "0%", "3/2"),
    },
)
repository = table(
    {"location": locations},
    {
        "password": secrets,
        "password_file": maybe("/etc/secret", "relative", "${SECRET_VAR}"),
        "password_command": secrets,
        "password_credential": maybe("cred", "a/b", ""),
        "env": st.one_of(env_tables, junk),
        "options": st.lists(maybe("s3.storage-class=STANDARD_IA", "x"), max_size=2),
        "upload_limit": rates,
        "download_limit": rates,
        "check": maintenance,
        "prune": maintenance,
    },
)
hook = table(
    {"type": maybe("http", "command", "shell")},
    {
        "url": maybe("http://127.0.0.1/x", f"https://u:{SECRET}@h/", "ftp://h/", SECRET),
        "method": maybe("POST", "get", "BAD METHOD"),
        "headers": st.one_of(st.dictionaries(st.sampled_from(["X-Token", "A B"]), secrets), junk),
        "body": secrets,
        "command": st.one_of(st.lists(secrets, max_size=2).map(lambda a: ["/bin/x", *a]), junk),
        "env": env_tables,
        "cwd": maybe("/tmp", "tmp"),
        "timeout": durations,
        "retries": maybe(0, 3, -1),
        "on_failure": maybe("stop", "continue", "abort"),
    },
)
backup = table(
    {},
    {
        "paths": st.lists(maybe("/home", "relative", "${HOME}/x", "${SECRET_VAR}"), max_size=2),
        "repositories": st.lists(names, max_size=2),
        "excludes": st.lists(maybe("*.tmp", "${SECRET_VAR}"), max_size=2),
        "schedule": schedules,
        "watch": st.one_of(
            st.booleans(), table({}, {"wait_min": durations, "wait_max": durations})
        ),
        "priority": priorities,
        "upload_limit": rates,
        "retention": table(
            {},
            {
                "keep_daily": maybe(7, 0, -1),
                "keep_last": maybe(3, "3"),
                "keep_within": maybe("1y2m", "1w", "${SECRET_VAR}"),
            },
        ),
        "resources": table(
            {},
            {
                "cpu_weight": maybe(1, 0, 10001),
                "cpu_quota": maybe("50%", "0%", 0.5),
                "memory_max": maybe("1G", "1P", "${SECRET_VAR}"),
                "nice": maybe(10, 20),
                "ionice": maybe("idle", "low", "${SECRET_VAR}"),
            },
        ),
        "hooks": table(
            {},
            {moment: st.lists(hook, max_size=2) for moment in ("before", "after", "failure")},
        ),
    },
)
document = table(
    {},
    {
        "daemon": table(
            {},
            {
                "hostname": maybe("rpi01", ""),
                "max_concurrent_jobs": maybe(1, 0, True),
                "upload_limit": rates,
                "restic": maybe("restic", 5),
            },
        ),
        "metrics": table(
            {}, {"textfile": maybe("/m.prom", "m.prom"), "listen": maybe("[::1]:9811", ":1")}
        ),
        "repositories": st.one_of(st.dictionaries(names, repository, max_size=2), junk),
        "backups": st.one_of(st.dictionaries(names, backup, max_size=2), junk),
    },
).filter(lambda value: isinstance(value, dict))

# --------------------------------------------------------------------------- TOML text


def toml_string(text: str) -> str:
    # JSON escapes are valid TOML, except that TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(element) for element in value) + "]"
    pairs = (f"{toml_key(key)} = {toml_value(element)}" for key, element in value.items())
    return "{ " + ", ".join(pairs) + " }"


def toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else toml_string(key)


def toml_document(values: Mapping[str, Any]) -> str:
    return "".join(f"{toml_key(key)} = {toml_value(value)}\n" for key, value in values.items())


# Lines of real config shapes, glued together with random text.
fragments = st.one_of(
    st.sampled_from(
        [
            "[repositories.r]",
            f'password = "{SECRET}"',
            f"password = '{SECRET}'",
            f'location = "rest:https://user:{SECRET}@host/"',
            f'env = {{ AWS_SECRET = "{SECRET}", B = "${{SECRET_VAR}}" }}',
            f'password_command = "echo {SECRET}"',
            "[backups.b]",
            'paths = ["/home"]',
            'repositories = ["r"]',
            'schedule = ["1h", "*/5 * * * *"]',
            "[[backups.b.hooks.before]]",
            'type = "http"',
            f'headers = {{ Authorization = "Bearer {SECRET}" }}',
            "[daemon]",
            "a = " + "[" * 2000,
            "=",
            '"',
            "'''",
            "[",
            "{",
            "",
        ]
    ),
    st.text(_characters, max_size=20),
)
random_texts = st.lists(fragments, max_size=12).map("\n".join)


# ----------------------------------------------------------------------------- the checks


def assert_loads_or_explains(path: Path, env: Mapping[str, str]) -> Config | None:
    """load_config's only outcomes: a Config, or a ConfigError without secrets."""
    try:
        return load_config(path, env=env, hostname="fuzz")
    except ConfigError as error:
        assert error.problems
        shown = [str(error), *(str(problem) for problem in error.problems)]
        shown += [problem.key for problem in error.problems]
        assert not any(SECRET in text for text in shown), shown
        assert all("\n" not in problem.message for problem in error.problems)
        return None


@FUZZ
@given(main=document, extra=st.none() | document, credentials=st.booleans())
def test_structured_documents(
    files_writer: Writer,
    main: dict[str, Any],
    extra: dict[str, Any] | None,
    credentials: bool,
) -> None:
    texts = [toml_document(main), *([toml_document(extra)] if extra is not None else [])]
    for text in texts:
        tomllib.loads(text)  # the generator itself must write valid TOML
    env = {**ENV, **(CREDENTIALS if credentials else {})}
    with tempfile.TemporaryDirectory() as directory:
        conf_d = {"conf.d/50-extra.toml": texts[1]} if len(texts) > 1 else {}
        config = assert_loads_or_explains(files_writer(Path(directory), texts[0], conf_d), env)
    if config is not None and not any("${SECRET_VAR}" in text for text in texts):
        plan = describe_plan(config, datetime(2024, 3, 31, 1, 30, tzinfo=UTC))
        assert SECRET not in plan


@FUZZ
@given(main=random_texts, extra=st.none() | random_texts | st.binary(max_size=30))
def test_random_text(files_writer: Writer, main: str, extra: str | bytes | None) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = files_writer(Path(directory), main, {})
        if extra is not None:
            (path.parent / "conf.d").mkdir()
            target = path.parent / "conf.d" / "10-extra.toml"
            if isinstance(extra, bytes):
                target.write_bytes(extra)
            else:
                target.write_text(extra, encoding="utf-8")
        assert_loads_or_explains(path, ENV)
