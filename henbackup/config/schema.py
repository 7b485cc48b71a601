"""Every key of henbackup.toml, declared once: its converter, default, doc, example and JSON.

validate.py walks these tables to check a document, plan.py reads their order,
henbackup.toml(5)'s test checks that the page defines each key, and `henbackup schema`
prints them as a JSON Schema (draft 7) that editors use to complete and check a file.
A key's `default` is spelled as in TOML and converted like a written value; a key with a
`table` holds a table of its own (or, when `named`, a table of named ones).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from henbackup.config import convert
from henbackup.config.convert import Converter

# Names of repositories and backups; load.py checks them as it merges. They name files of
# the state directory (with a prefix and a temporary suffix, within 255 bytes).
NAME_MAX = 128
NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")
# Draft 7, the newest that taplo (and so VS Code's Even Better TOML) reads; no pattern here
# uses look-around, which the Rust regex engine of some editors lacks.
JSON_SCHEMA_DIALECT = "http://json-schema.org/draft-07/schema#"
JSON = dict[str, Any]


@dataclass(frozen=True)
class Key:
    """One key of a table: what the validator, the JSON Schema and the man page test read."""

    name: str
    doc: str  # one line, for editors
    example: Any  # a valid value, as TOML parses it
    json: JSON  # its JSON Schema; with `table`: what may stand instead of the table
    convert: Converter | None = None  # None: validate.py builds it from its table or context
    default: Any = None  # as written in TOML; None: unset, or computed (daemon.hostname)
    required: bool = False
    table: Table | None = None
    named: bool = False  # `table` is the table of each NAME, as in [backups.NAME]
    variants: tuple[Table, ...] = ()  # an array of tables, each one of these
    engines: tuple[str, ...] = ()  # a repository's key that only these engines know (): all


@dataclass(frozen=True)
class Table:
    """The keys of one kind of table, in the order messages list them."""

    path: str  # as the man page names it: "backups.NAME.watch"
    section: str  # its section in henbackup.toml(5)
    keys: tuple[Key, ...]
    exactly_one: tuple[str, ...] = ()  # of these keys, one and only one is set

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(key.name for key in self.keys)

    def __getitem__(self, name: str) -> Key:
        return next(key for key in self.keys if key.name == name)


# ------------------------------------------------------------------ JSON of value kinds

_FROM_ENVIRONMENT = r"\$\{"  # a ${NAME} is checked only once replaced: any such string goes


def _string(pattern: str = "", **more: Any) -> JSON:
    """A string; with `pattern`, one matching it whole or one with a ${NAME}."""
    if not pattern:
        return {"type": "string", **more}
    return {"type": "string", "pattern": f"^(?:{pattern})$|{_FROM_ENVIRONMENT}", **more}


def _integer(low: int | None = None, high: int | None = None) -> JSON:
    bounds = {"minimum": low, "maximum": high}
    return {"type": "integer", **{k: v for k, v in bounds.items() if v is not None}}


def _array(items: JSON, **more: Any) -> JSON:
    return {"type": "array", "items": items, **more}


def _string_table(name_pattern: str, values: JSON | None = None) -> JSON:
    return {
        "type": "object",
        "propertyNames": {"pattern": f"^{name_pattern}$"},
        "additionalProperties": values or {"type": "string"},
    }


def _choice(*options: str) -> JSON:
    return {"enum": list(options)}


def _any_case(word: str) -> str:
    """A pattern for word in any case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


IONICE = ("idle", "best-effort", "realtime")
ON_FAILURE = ("ignore", "continue", "stop")


_TEXT = _string(minLength=1)
_PATH = _string("/.*")
_LINE = _string(f"[^{convert.CONTROL_CHARACTERS}]+")  # no newline, tab or other control
_HOST = _string(f"[^{convert.CONTROL_CHARACTERS}{re.escape(convert.HOST_SPECIALS)}]+")
_LINE_PATH = _string(f"/[^{convert.CONTROL_CHARACTERS}]*")
_DURATION = _string(r"([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?", minLength=1)
_NUMBER = r"([0-9]+(\.[0-9]+)?|\.[0-9]+)"
_RATE = {"anyOf": [_integer(low=1), _string(f"{_NUMBER}[KMGkmg]?")]}
_SIZE = {"anyOf": [_integer(low=1), _string(f"{_NUMBER}[KMGTkmgt]?")]}
_PRIORITY_NAMES = ("immediate", "next", "superior", "normal", "inferior", "on-idle")
_PRIORITY_NAME = "|".join(_any_case(name) for name in _PRIORITY_NAMES)
_PRIORITY = {"anyOf": [_integer(), _string(f"\\s*({_PRIORITY_NAME})\\s*|\\s*[+-]?[0-9]+\\s*")]}
_SCHEDULE = _array(_TEXT)
_ENV = _string_table("[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIAL_NAME = _string("[^/]+")


# ------------------------------------------------------------------------------ tables

_upload_limit = Key(
    "upload_limit",
    "Upload bandwidth limit, bytes per second (K, M, G: x1024).",
    "2M",
    _RATE,
    convert.rate,
)
_download_limit = Key(
    "download_limit",
    "Download bandwidth limit, bytes per second (K, M, G: x1024).",
    "10M",
    _RATE,
    convert.rate,
)
DAEMON = Table(
    "daemon",
    "[daemon]",
    (
        Key(
            "hostname",
            "The host recorded in every snapshot (restic --host); default: the system hostname.",
            "nas",
            _HOST,
            convert.hostname,
        ),
        Key(
            "max_concurrent_jobs",
            "How many jobs of this host run at once.",
            2,
            _integer(low=1),
            convert.integer(low=1),
            default=1,
        ),
        _upload_limit,
        _download_limit,
        Key(
            "restic",
            "The restic program: a name looked up in PATH or an absolute path.",
            "/usr/local/bin/restic",
            _TEXT,
            convert.text,
            default="restic",
        ),
        Key(
            "borg",
            'The borg program (engine = "borg"): a name looked up in PATH or an absolute path.',
            "/usr/local/bin/borg",
            _TEXT,
            convert.text,
            default="borg",
        ),
        Key(
            "stall_timeout",
            "A job whose restic moves no byte for this long is ended.",
            "30m",
            _DURATION,
            convert.positive_duration,
            default="10m",
        ),
        Key(
            "preempt_after",
            "A job of higher priority that waited this long for a slot pauses the lowest.",
            "30s",
            _DURATION,
            convert.positive_duration,
            default="5s",
        ),
    ),
)
METRICS = Table(
    "metrics",
    "[metrics]",
    (
        Key(
            "textfile",
            "A Prometheus textfile written after each run (node-exporter's collector).",
            "/var/lib/prometheus/node-exporter/henbackup.prom",
            _PATH,
            convert.absolute_path,
        ),
        Key(
            "listen",
            "HOST:PORT where the metrics are served over HTTP.",
            "127.0.0.1:9811",
            _string(r".+:[0-9]{1,5}"),
            convert.listen,
        ),
    ),
)

_schedule = Key(
    "schedule",
    'When to run: intervals since the last success ("1h") or cron expressions.',
    ["1d", "30 2 * * *"],
    _SCHEDULE,
    convert.schedule,
    default=[],
)
_maintenance_priority = Key(
    "priority",
    "The priority of the job in the host's queue.",
    "inferior",
    _PRIORITY,
    convert.priority,
    default="inferior",
)
CHECK = Table(
    "repositories.NAME.check",
    "[repositories.NAME.check] and [repositories.NAME.prune]",
    (
        _schedule,
        _maintenance_priority,
        Key(
            "read_data_subset",
            'Also read this share of the data: "5%", "1/10" or a size such as "500M".',
            "5%",
            _string(r"[0-9.]+%|[0-9]+/[0-9]+|[0-9]+[KMGTkmgt]?"),
            convert.subset,
        ),
    ),
)
PRUNE = Table(
    "repositories.NAME.prune",
    "[repositories.NAME.check] and [repositories.NAME.prune]",
    (_schedule, _maintenance_priority),
)

_env = Key(
    "env",
    "Environment variables for restic or the command (values never shown).",
    {"AWS_SHARED_CREDENTIALS_FILE": "/etc/henbackup/secrets/aws-keys"},
    _ENV,
    convert.env_table,
    default={},
)
_WEIGHT = _integer(1, 10000)
RESOURCES = Table(
    "backups.NAME.resources",
    "[backups.NAME.resources]",
    (
        Key(
            "cpu_weight",
            "CPUWeight= of the job.",
            20,
            _integer(1, 10000),
            convert.integer(1, 10000),
        ),
        Key(
            "io_weight", "IOWeight= of the job.", 20, _integer(1, 10000), convert.integer(1, 10000)
        ),
        Key(
            "cpu_quota",
            'CPUQuota= of the job, of one CPU: "50%".',
            "50%",
            _string(f"{_NUMBER}%"),
            convert.percent,
        ),
        Key("memory_max", "MemoryMax= of the job (K, M, G, T: x1024).", "1G", _SIZE, convert.size),
        Key("nice", "The niceness of restic.", 10, _integer(-20, 19), convert.integer(-20, 19)),
        Key(
            "ionice",
            "The I/O scheduling class of restic.",
            "idle",
            _choice(*IONICE),
            convert.choice(IONICE),
        ),
    ),
)


PASSWORD_KEYS = ("password", "password_file", "password_command", "password_credential")
ENGINES = ("restic", "borg")
# Location prefixes of restic's backends, which borg does not open.
RESTIC_ONLY_SCHEMES = ("s3", "b2", "azure", "gs", "swift", "sftp", "rest", "rclone")
REPOSITORY = Table(
    "repositories.NAME",
    "[repositories.NAME]",
    (
        Key(
            "engine",
            "The backup program of this repository: restic, or borg (BorgBackup 1.2).",
            "borg",
            _choice(*ENGINES),
            convert.choice(ENGINES),
            default="restic",
        ),
        Key(
            "location",
            "The restic repository (-r): a path, sftp:, rest:, s3:...",
            "/srv/restic/nas",
            _LINE,
            convert.one_line,
            required=True,
        ),
        Key("password", "The password itself.", "correct horse", _TEXT, convert.text),
        Key(
            "password_file",
            "A file holding the password (root's, mode 0600).",
            "/etc/henbackup/secrets/nas",
            _PATH,
            convert.absolute_path,
        ),
        Key(
            "password_command",
            "A command that prints the password.",
            "/usr/bin/pass show backup/nas",
            _TEXT,
            convert.text,
        ),
        Key(
            "password_credential",
            "The name of a systemd credential holding the password (LoadCredential=).",
            "nas",
            _CREDENTIAL_NAME,
            convert.credential,
        ),
        _env,
        Key(
            "env_file",
            "A root-only file of KEY=value lines for restic (provider keys), read as it starts.",
            "/etc/henbackup/secrets/ovh.env",
            _PATH,
            convert.absolute_path,
        ),
        Key(
            "env_credentials",
            "Variables for restic, each read from the systemd credential it names.",
            {"AWS_SECRET_ACCESS_KEY": "ovh-secret-key"},
            _string_table("[A-Za-z_][A-Za-z0-9_]*", _CREDENTIAL_NAME),
            convert.credential_table,
            default={},
        ),
        Key(
            "options",
            "restic -o options, such as s3.storage-class=STANDARD_IA.",
            ["s3.storage-class=STANDARD_IA"],
            _array(_LINE),
            convert.array(convert.one_line),
            default=[],
            engines=("restic",),
        ),
        _upload_limit,
        replace(_download_limit, engines=("restic",)),  # borg 1.2 limits uploads only
        Key("check", "Scheduled restic check.", {"schedule": ["1w"]}, {}, table=CHECK),
        Key("prune", "Scheduled forget --prune.", {"schedule": ["1w"]}, {}, table=PRUNE),
        Key(
            "resources",
            "Limits of its check and prune jobs.",
            {"nice": 10},
            {},
            default={},
            table=RESOURCES,
        ),
    ),
    exactly_one=PASSWORD_KEYS,
)

WATCH = Table(
    "backups.NAME.watch",
    "[backups.NAME.watch]",
    (
        Key(
            "wait_min",
            "Run once the paths have been quiet this long after a change.",
            "5s",
            _DURATION,
            convert.duration,
            default="10s",
        ),
        Key(
            "wait_max",
            "Run at most this long after the first change, quiet or not.",
            "1m",
            _DURATION,
            convert.duration,
            default="5m",
        ),
    ),
)


# restic reads a count as a Go int, 32 bits on some machines (a Raspberry Pi's armhf): a
# bigger one made every forget fail.
MAX_KEEP = 2**31 - 1


def _keep(name: str, doc: str, example: int) -> Key:
    return Key(name, doc, example, _integer(0, MAX_KEEP), convert.integer(0, MAX_KEEP))


RETENTION = Table(
    "backups.NAME.retention",
    "[backups.NAME.retention]",
    (
        _keep("keep_last", "Keep this many snapshots.", 10),
        _keep("keep_hourly", "Keep the last snapshot of this many hours.", 48),
        _keep("keep_daily", "Keep the last snapshot of this many days.", 7),
        _keep("keep_weekly", "Keep the last snapshot of this many weeks.", 4),
        _keep("keep_monthly", "Keep the last snapshot of this many months.", 12),
        _keep("keep_yearly", "Keep the last snapshot of this many years.", 5),
        Key(
            "keep_within",
            'Keep every snapshot younger than this restic duration ("1y2m3d4h").',
            "1m",
            _string("([0-9]{1,9}y)?([0-9]{1,9}m)?([0-9]{1,9}d)?([0-9]{1,9}h)?", minLength=1),
            convert.restic_duration,
        ),
    ),
)

_timeout = Key(
    "timeout",
    "How long the hook may take.",
    "30s",
    _DURATION,
    convert.positive_duration,
    default="1m",
)
# 100 retries wait over an hour and a half, a minute apart: more is a typo.
MAX_RETRIES = 100
_on_failure = Key(
    "on_failure",
    "What a failed hook does: ignore, continue (and report) or stop the backup.",
    "continue",
    _choice(*ON_FAILURE),
    convert.choice(ON_FAILURE),
    default="stop",
)
HTTP_HOOK = Table(
    "backups.NAME.hooks.MOMENT[N]",
    "HTTP hooks",
    (
        Key("type", 'A request: "http".', "http", {"const": "http"}, required=True),
        Key(
            "url",
            "The http:// or https:// URL to request.",
            "https://hc-ping.com/uuid",
            _string("https?://.+"),
            convert.url,
            required=True,
        ),
        Key(
            "method",
            "The HTTP method.",
            "GET",
            _string("[A-Za-z]+"),
            convert.method,
            default="POST",
        ),
        Key(
            "headers",
            "Request headers (values never shown).",
            {"Authorization": "Bearer ${GRAFANA_TOKEN}"},
            _string_table("[!#$%&'*+.^_`|~0-9A-Za-z-]+"),
            convert.header_table,
        ),
        Key(
            "body",
            'The request body; "json" sends the run\'s fields as a JSON object.',
            "json",
            _string(),
            convert.body,
        ),
        _timeout,
        Key(
            "retries",
            f"How many times a failed request is tried again, up to {MAX_RETRIES}.",
            3,
            _integer(0, MAX_RETRIES),
            convert.integer(0, MAX_RETRIES),
            default=0,
        ),
        _on_failure,
    ),
)
COMMAND_HOOK = Table(
    "backups.NAME.hooks.MOMENT[N]",
    "Command hooks",
    (
        Key("type", 'A program: "command".', "command", {"const": "command"}, required=True),
        Key(
            "command",
            "The program and its arguments (no shell).",
            ["/usr/bin/pg_dump", "-f", "/backup/db.sql"],
            _array(_string(), minItems=1),
            convert.argv,
            required=True,
        ),
        _env,
        Key("cwd", "Its working directory.", "/var/lib/postgresql", _PATH, convert.absolute_path),
        _timeout,
        _on_failure,
    ),
)


def _moment(name: str, doc: str) -> Key:
    example = [{"type": "http", "url": "https://hc-ping.com/uuid/start"}]
    variants = (HTTP_HOOK, COMMAND_HOOK)
    return Key(name, doc, example, {"type": "array"}, default=[], variants=variants)


HOOKS = Table(
    "backups.NAME.hooks",
    "[backups.NAME.hooks]",
    (
        _moment("before", "Run before the backup, in order; a failing one may stop it."),
        _moment("after", "Run after a successful backup, in order."),
        _moment("failure", "Run after a failed backup, in order."),
    ),
)
BACKUP = Table(
    "backups.NAME",
    "[backups.NAME]",
    (
        Key(
            "paths",
            "The absolute paths to back up.",
            ["/home/me/Pictures"],
            _array(_LINE_PATH, minItems=1),
            convert.array(convert.one_line_path, required="list absolute paths to back up"),
            required=True,
        ),
        Key(
            "repositories",
            "The repositories to back up to, each a [repositories.NAME].",
            ["nas"],
            _array(_TEXT, minItems=1, uniqueItems=True),
            required=True,
        ),
        Key(
            "excludes",
            "restic --exclude patterns.",
            [".git", "*.tmp"],
            _array(_LINE),
            convert.array(convert.exclude_pattern),
            default=[],
        ),
        _schedule,
        Key(
            "watch",
            "Run after the paths change: true, false or { wait_min, wait_max }.",
            True,
            {"type": "boolean"},
            table=WATCH,
        ),
        Key(
            "priority",
            "The priority of its jobs: immediate, next, superior, normal, inferior, on-idle"
            " or an integer.",
            "superior",
            _PRIORITY,
            convert.priority,
            default="normal",
        ),
        _upload_limit,
        _download_limit,
        Key(
            "retention", "restic forget after each backup.", {"keep_daily": 7}, {}, table=RETENTION
        ),
        Key("resources", "Limits of its jobs.", {"nice": 10}, {}, default={}, table=RESOURCES),
        Key(
            "hooks", "Requests and commands around it.", {"before": []}, {}, default={}, table=HOOKS
        ),
    ),
)
TOP = Table(
    "",
    "DESCRIPTION",
    (
        Key("daemon", "Settings of the daemon.", {"max_concurrent_jobs": 1}, {}, table=DAEMON),
        Key("metrics", "Prometheus metrics.", {"listen": "127.0.0.1:9811"}, {}, table=METRICS),
        Key(
            "repositories",
            "The restic repositories, by name.",
            {"nas": {"location": "/srv/restic/nas", "password_file": "/etc/henbackup/nas"}},
            {},
            table=REPOSITORY,
            named=True,
        ),
        Key(
            "backups",
            "The backups, by name.",
            {"home": {"paths": ["/home"], "repositories": ["nas"]}},
            {},
            table=BACKUP,
            named=True,
        ),
    ),
)
TABLES = (
    *(TOP, DAEMON, METRICS, REPOSITORY, CHECK, PRUNE),
    *(BACKUP, WATCH, RETENTION, RESOURCES, HOOKS, HTTP_HOOK, COMMAND_HOOK),
)


# -------------------------------------------------------------------------- JSON Schema


def json_schema() -> JSON:
    """henbackup.toml as a JSON Schema: one file's document (conf.d files are checked each)."""
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "henbackup.toml",
        "description": "The configuration of henbackup(8); see henbackup.toml(5).",
        **_table_json(TOP),
    }


def _table_json(table: Table) -> JSON:
    schema: JSON = {
        "type": "object",
        "properties": {key.name: key_json(key) for key in table.keys},
        "additionalProperties": False,
    }
    required = [key.name for key in table.keys if key.required]
    if required:
        schema["required"] = required
    if table.exactly_one:
        schema["oneOf"] = [{"required": [name]} for name in table.exactly_one]
    return schema


def key_json(key: Key) -> JSON:
    schema = dict(key.json)
    if key.table and key.named:
        schema = {
            "type": "object",
            "propertyNames": {"pattern": f"^{NAME_RE.pattern}$"},
            "additionalProperties": _table_json(key.table),
        }
    elif key.table:
        schema = {"anyOf": [schema, _table_json(key.table)]} if schema else _table_json(key.table)
    if key.variants:
        schema["items"] = {"oneOf": [_table_json(table) for table in key.variants]}
    if key.default is not None:
        schema["default"] = key.default
    return {"description": key.doc, **schema, "examples": [key.example]}
