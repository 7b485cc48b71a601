"""henbackup.toml(5) is written by hand, so nothing keeps it in step with the code but this.

It must build, lint clean and render; every key schema.py declares must be a defined term
of its table's section; every key's example must be valid in that table, to the loader and to
the JSON Schema; and every example of EXAMPLES must load as a whole configuration. The
declared keys are those the validator accepts: each table is probed with an unknown key, and
the "use one of: ..." of its problem must list them, so a key added to the code and not to the
page fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from henbackup.config import schema
from henbackup.config.load import load_config
from henbackup.config.model import Config, HttpHook
from henbackup.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
SOURCE = ROOT / "man" / "henbackup.toml.5"
UNKNOWN = "zzzz_no_such_key"

# Repositories every per-key example may name, and a complete backup called NAME, as the
# page's examples spell it: `[[backups.NAME.hooks.before]]`.
REPOSITORIES = """
[repositories.aws-ireland]
location = "/srv/restic/aws-ireland"
password = "test"

[repositories.ovh-frankfort]
location = "/srv/restic/ovh-frankfort"
password = "test"

[repositories.NAME]
location = "/srv/restic/name"
password = "test"
"""
BACKUP = """
[backups.NAME]
paths = ["/srv/data"]
repositories = ["NAME"]
"""
_PASSWORDS = ("password", "password_file", "password_command", "password_credential")

# Each section of the page that lists a table's keys -> its probes: TOML that opens the
# table, and the table's key path as problems name it (in schema.TABLES' order).
SECTIONS: dict[str, list[tuple[str, str]]] = {
    "[daemon]": [("[daemon]", "daemon")],
    "[metrics]": [("[metrics]", "metrics")],
    "[repositories.NAME]": [("[repositories.r]", "repositories.r")],
    "[repositories.NAME.check] and [repositories.NAME.prune]": [
        ("[repositories.r.check]", "repositories.r.check"),
        ("[repositories.r.prune]", "repositories.r.prune"),
    ],
    "[backups.NAME]": [("[backups.b]", "backups.b")],
    "[backups.NAME.watch]": [("[backups.b.watch]", "backups.b.watch")],
    "[backups.NAME.retention]": [("[backups.b.retention]", "backups.b.retention")],
    "[backups.NAME.resources]": [("[backups.b.resources]", "backups.b.resources")],
    "[backups.NAME.hooks]": [("[backups.b.hooks]", "backups.b.hooks")],
    "HTTP hooks": [('[[backups.b.hooks.before]]\ntype = "http"', "backups.b.hooks.before[0]")],
    "Command hooks": [
        ('[[backups.b.hooks.before]]\ntype = "command"', "backups.b.hooks.before[0]")
    ],
}
# How a key's example without a table header of its own becomes a whole configuration: what
# comes first, the table's header, and its required keys as (keys that stand in, line). Check
# and prune examples are tried in a check table, which takes every key that prune takes.
Context = tuple[str, str, tuple[tuple[tuple[str, ...], str], ...]]
CONTEXTS: dict[str, Context] = {
    "[daemon]": ("", "[daemon]", ()),
    "[metrics]": ("", "[metrics]", ()),
    "[repositories.NAME]": (
        REPOSITORIES,
        "[repositories.under-test]",
        ((("location",), 'location = "/srv/restic/t"'), (_PASSWORDS, 'password = "test"')),
    ),
    "[repositories.NAME.check] and [repositories.NAME.prune]": (
        REPOSITORIES,
        "[repositories.NAME.check]",
        (),
    ),
    "[backups.NAME]": (
        REPOSITORIES,
        "[backups.under-test]",
        (
            (("paths",), 'paths = ["/srv/data"]'),
            (("repositories",), 'repositories = ["NAME"]'),
        ),
    ),
    "[backups.NAME.watch]": (REPOSITORIES + BACKUP, "[backups.NAME.watch]", ()),
    "[backups.NAME.retention]": (REPOSITORIES + BACKUP, "[backups.NAME.retention]", ()),
    "[backups.NAME.resources]": (REPOSITORIES + BACKUP, "[backups.NAME.resources]", ()),
    "[backups.NAME.hooks]": (REPOSITORIES + BACKUP, "[backups.NAME.hooks]", ()),
    "HTTP hooks": (
        REPOSITORIES + BACKUP,
        "[[backups.NAME.hooks.before]]",
        ((("type",), 'type = "http"'), (("url",), 'url = "http://127.0.0.1/"')),
    ),
    "Command hooks": (
        REPOSITORIES + BACKUP,
        "[[backups.NAME.hooks.before]]",
        ((("type",), 'type = "command"'), (("command",), 'command = ["/bin/true"]')),
    ),
}


# ------------------------------------------------------------------------------ helpers


def load(text: str, directory: Path) -> Config:
    """The Config of `text` as the main file of a fresh directory; every ${NAME} it uses is
    set, and so is CREDENTIALS_DIRECTORY (password_credential needs it)."""
    directory.mkdir(parents=True)
    path = directory / "henbackup.toml"
    path.write_text(text, encoding="utf-8")
    env = {name: f"value-of-{name}" for name in re.findall(r"\$\{([A-Za-z_]\w*)\}", text)}
    env["CREDENTIALS_DIRECTORY"] = str(directory)
    return load_config(path, env=env, hostname="test-host")


def accepted_keys(probe: str, path: str, directory: Path) -> list[str]:
    """The keys the validator accepts in the table that `probe` opens, from its problem."""
    with pytest.raises(ConfigError) as caught:
        load(f"{probe}\n{UNKNOWN} = 1\n", directory)
    where = f"{path}.{UNKNOWN}" if path else UNKNOWN
    messages = [p.message for p in caught.value.problems if p.key == where]
    assert len(messages) == 1, caught.value.problems
    match = re.fullmatch(r"unknown key: remove it, or use one of: (.+)", messages[0])
    assert match, messages[0]
    return match[1].split(", ")


def rendered_sections(text: str) -> dict[str, list[str]]:
    """The lines of each section and subsection of a rendered page, by heading."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        if line.strip() and indent <= 3:  # .Sh at 0, .Ss at 3; text is indented further
            lines = sections.setdefault(line.strip(), [])
        else:
            lines.append(line)
    return sections


def defined_terms(lines: list[str]) -> set[str]:
    """The keys of a section's list: a term is `KEY = what` at the text's own indentation."""
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    term = re.compile(rf" {{{min(indents)}}}([a-z_]+) = \S.*")
    terms = (term.fullmatch(line) for line in lines)
    return {term[1] for term in terms if term}


def source_sections() -> dict[str, list[str]]:
    """The source lines of each .Sh and .Ss of the page, by heading."""
    sections: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        if line.startswith((".Sh ", ".Ss ")):
            lines = sections.setdefault(line[4:].removesuffix("\\&"), [])
        else:
            lines.append(line)
    return sections


def unescape(text: str) -> str:
    """The text of roff source: the escapes the page uses in its examples."""
    for escape, character in (("\\(dq", '"'), ("\\(rs", "\\"), ("\\e", "\\"), ("\\&", "")):
        text = text.replace(escape, character)
    return text


def examples(lines: list[str]) -> Iterator[str]:
    """The TOML of each .Dl line and each .Bd -literal block in `lines`."""
    block: list[str] | None = None
    for line in lines:
        if block is not None and line == ".Ed":
            yield unescape("\n".join(block)) + "\n"
            block = None
        elif block is not None:
            block.append(line)
        elif line.startswith(".Bd -literal"):
            block = []
        elif line.startswith(".Dl "):
            yield unescape(line[4:]) + "\n"
    assert block is None, "a .Bd -literal block has no .Ed"


def key_entries(lines: list[str]) -> dict[str, list[str]]:
    """The lines of each `.It Cm KEY` entry of the section's first list."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line == ".El":
            break
        if match := re.match(r"\.It Cm ([a-z_]+)\b", line):
            current = entries.setdefault(match[1], [])
        elif current is not None:
            current.append(line)
    return entries


def defines(value: object, key: str) -> bool:
    """Whether `key` is set anywhere in a parsed TOML value."""
    if isinstance(value, dict):
        return key in value or any(defines(item, key) for item in value.values())
    if isinstance(value, list):
        return any(defines(item, key) for item in value)
    return False


def whole_configuration(section: str, snippet: str) -> str:
    """The example of one key, made a whole configuration in its table."""
    if re.search(r"^\[", snippet, re.MULTILINE):  # it names its own table
        return REPOSITORIES + BACKUP + "\n" + snippet
    before, header, required = CONTEXTS[section]
    document = tomllib.loads(snippet)
    lines = [line for keys, line in required if not any(key in document for key in keys)]
    return "\n".join([before, header, *lines, snippet])


# ------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def page() -> Path:
    subprocess.run(["make", "-s", "-C", str(ROOT), "man"], check=True, capture_output=True)
    return ROOT / "build" / "man" / "henbackup.toml.5"


@pytest.fixture(scope="module")
def rendered(page: Path) -> str:
    env = {**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat", "LC_ALL": "C"}
    result = subprocess.run(["man", "-l", str(page)], env=env, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    return re.sub(r".\x08", "", result.stdout)  # any overstrike bold or underline


@pytest.fixture(scope="module")
def keys() -> dict[str, list[str]]:
    """Section of the page -> the keys schema.py declares in its table(s)."""
    found: dict[str, list[str]] = {}
    for table in schema.TABLES:
        if table is not schema.TOP:
            found[table.section] = [*found.get(table.section, []), *table.names]
    return {section: list(dict.fromkeys(names)) for section, names in found.items()}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(schema.json_schema())


def test_the_page_is_built_as_written(page):
    assert page.read_bytes() == SOURCE.read_bytes()
    assert ".Dd November 26, 2026" in page.read_text()


def test_mandoc_finds_nothing_worth_a_warning(page):
    lint = subprocess.run(
        ["mandoc", "-T", "lint", "-W", "warning", str(page)], capture_output=True, text=True
    )
    assert (lint.returncode, lint.stdout, lint.stderr) == (0, "", "")


def test_man_renders_it(rendered):
    assert "HENBACKUP.TOML(5)" in rendered
    for section in ("EXAMPLES", "FILES", "SEE ALSO", "TRIGGERS", "SECRETS", "MERGING"):
        assert f"\n{section}\n" in rendered
    for reference in ("henbackup(8)", "henbackupctl(1)", "restic(1)"):
        assert reference in rendered.split("\nSEE ALSO\n")[1]


def test_the_validator_accepts_exactly_the_declared_keys(tmp_path):
    """Probed with an unknown key, each table lists the keys schema.py declares for it."""
    for number, (section, probes) in enumerate(SECTIONS.items()):
        tables = [table for table in schema.TABLES if table.section == section]
        assert len(tables) == len(probes), section
        for position, ((probe, path), table) in enumerate(zip(probes, tables, strict=True)):
            accepted = accepted_keys(probe, path, tmp_path / f"{number}-{position}")
            assert accepted == list(table.names), table.path
    assert set(SECTIONS) == {table.section for table in schema.TABLES if table is not schema.TOP}


def test_every_table_has_its_section(rendered, tmp_path):
    headings = rendered_sections(rendered)
    top = accepted_keys("", "", tmp_path / "top")
    assert top == list(schema.TOP.names)
    for name in top:
        assert any(heading.startswith(f"[{name}") for heading in headings), name
    assert set(SECTIONS) <= set(headings)


def test_every_accepted_key_is_a_defined_term_of_its_section(rendered, keys):
    sections = rendered_sections(rendered)
    missing = {
        section: sorted(set(names) - defined_terms(sections.get(section, [])))
        for section, names in keys.items()
    }
    assert {section: names for section, names in missing.items() if names} == {}


def test_the_page_documents_no_key_the_validator_refuses(keys):
    sections = source_sections()
    extra = {
        section: sorted(set(key_entries(sections[section])) - set(names))
        for section, names in keys.items()
    }
    assert {section: names for section, names in extra.items() if names} == {}


def test_every_key_has_an_example_that_is_valid_in_its_table(keys, validator, tmp_path):
    sections = source_sections()
    for section, names in keys.items():
        entries = key_entries(sections[section])
        for key in names:
            snippets = list(examples(entries.get(key, [])))
            assert snippets, f"{section} {key}: no example"
            for number, snippet in enumerate(snippets):
                assert defines(tomllib.loads(snippet), key), f"{section} {key}: {snippet}"
                directory = tmp_path / f"{section}-{key}-{number}".replace("/", "_")
                document = whole_configuration(section, snippet)
                try:
                    load(document, directory)
                except ConfigError as error:
                    pytest.fail(f"{section} {key}: {snippet}: {error.problems}")
                refused = [e.message for e in validator.iter_errors(tomllib.loads(document))]
                assert refused == [], f"{section} {key}: {snippet}"


def test_every_example_of_the_examples_section_loads(validator, tmp_path):
    blocks = list(examples(source_sections()["EXAMPLES"]))
    assert len(blocks) >= 2
    for block in blocks:
        assert [e.message for e in validator.iter_errors(tomllib.loads(block))] == [], block
    configs = [load(block, tmp_path / str(number)) for number, block in enumerate(blocks)]

    pictures = configs[0].backups["pictures"]  # to two datacenters, on change and daily
    assert pictures.repositories == ("aws-ireland", "ovh-frankfort")
    assert pictures.watch is not None
    assert pictures.schedule
    grafana = configs[1].backups["grafana"]  # hourly, after an HTTP request for a dump
    assert [type(hook) for hook in grafana.hooks.before] == [HttpHook]
    assert grafana.hooks.before[0].retries == 3


def test_the_notification_recipes_are_those_of_etc_notifications_toml():
    """NOTIFICATIONS shows the hooks that test_notification_recipes.py runs (less timeouts)."""
    etc = tomllib.loads((ROOT / "etc" / "notifications.toml").read_text(encoding="utf-8"))
    shown: dict[str, list] = {}
    for block in examples(source_sections()["NOTIFICATIONS"]):
        for phase, hooks in tomllib.loads(block)["backups"]["home"]["hooks"].items():
            shown.setdefault(phase, []).extend(hooks)
    untimed = {
        phase: [{key: value for key, value in hook.items() if key != "timeout"} for hook in hooks]
        for phase, hooks in etc["backups"]["home"]["hooks"].items()
    }
    assert shown == untimed
