"""schema.py: one declaration per key, read by the validator and exported as a JSON Schema.

The declarations must agree with the model (each default is the model's), with the
validator (each example is valid) and with the JSON Schema, which a real validator
(python3-jsonschema) runs on the example configurations in etc/ and on mistakes.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from henbackup.cli.daemon import main
from henbackup.config import model, schema
from henbackup.config.load import load_config
from henbackup.config.problems import At, Run
from henbackup.errors import ConfigError, Problem

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE_CONFIGS = sorted((ROOT / "etc").glob("*.toml"))

# The model class each table of keys builds.
MODELS = {
    "daemon": model.Daemon,
    "metrics": model.Metrics,
    "repositories.NAME": model.Repository,
    "repositories.NAME.check": model.Maintenance,
    "repositories.NAME.prune": model.Maintenance,
    "backups.NAME": model.Backup,
    "backups.NAME.watch": model.Watch,
    "backups.NAME.retention": model.Retention,
    "backups.NAME.resources": model.Resources,
    "backups.NAME.hooks": model.Hooks,
    "HTTP hooks": model.HttpHook,
    "Command hooks": model.CommandHook,
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    document = schema.json_schema()
    jsonschema.Draft7Validator.check_schema(document)
    return jsonschema.Draft7Validator(document)


def errors(validator: jsonschema.Draft7Validator, text: str) -> list[str]:
    """Where the JSON Schema finds the TOML `text` wrong: each error's path, dotted."""
    found = validator.iter_errors(tomllib.loads(text))
    return sorted(".".join(map(str, error.absolute_path)) for error in found)


def model_table(table: schema.Table) -> type:
    return MODELS[table.path if table.path in MODELS else table.section]


def converted(key: schema.Key, value: object) -> object:
    """The key's converter on value; fails the test on any problem."""
    run = Run({"CREDENTIALS_DIRECTORY": "/run/credentials/henbackup.service"})
    result = At(run, "test").attempt(value, key.convert)  # type: ignore[arg-type]
    assert run.problems == [], (key.name, value)
    return result


def test_every_table_is_a_model_and_every_key_with_a_converter_a_field_of_it():
    for table in schema.TABLES[1:]:
        fields = {field.name for field in dataclasses.fields(model_table(table))}
        names = {key.name for key in table.keys if key.convert} - set(table.exactly_one)
        assert names <= fields, table.path


def test_every_declared_default_is_the_models_default():
    for table in schema.TABLES[1:]:
        fields = {field.name: field for field in dataclasses.fields(model_table(table))}
        for key in table.keys:
            if key.default is None or key.convert is None:
                continue
            model_default = fields[key.name].default
            if model_default is not dataclasses.MISSING:  # else the schema's is the only one
                assert converted(key, key.default) == model_default, f"{table.path}.{key.name}"


def test_every_key_has_a_doc_line_and_an_example_valid_to_the_converter_and_the_json():
    for table in schema.TABLES:
        for key in table.keys:
            assert key.doc and "\n" not in key.doc, key.name
            if key.convert is not None:
                converted(key, key.example)
            check = jsonschema.Draft7Validator(schema.key_json(key))
            shown = [key.example] + ([] if key.default is None else [key.default])
            assert [list(check.iter_errors(value)) for value in shown] == [[]] * len(shown)


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda path: path.name)
def test_the_example_configs_load_and_match_the_json_schema(path, validator):
    deferred: list[Problem] = []
    env = {"HENBACKUP_DEMO": "/srv/demo", "HC_UUID": "uuid", "NTFY_TOPIC": "topic"}
    config = load_config(path, env=env, hostname="test-host", deferred=deferred)
    assert config.backups
    assert errors(validator, path.read_text(encoding="utf-8")) == []


def test_there_are_example_configs():
    names = [path.name for path in EXAMPLE_CONFIGS]
    assert names == ["demo.toml", "henbackup.toml", "notifications.toml", "providers.toml"]


VALID = """
[repositories.nas]
location = "/srv/restic"
password_file = "/etc/henbackup/nas"

[backups.home]
paths = ["/home"]
repositories = ["nas"]
"""


@pytest.mark.parametrize(
    ("mistake", "where"),
    [
        ("[daemon]\nmax_concurent_jobs = 2", "daemon"),  # a typo'd key
        ('[daemon]\nmax_concurrent_jobs = "two"', "daemon.max_concurrent_jobs"),
        ('[daemon]\nstall_timeout = "10 minutes"', "daemon.stall_timeout"),
        ("[metrics]\nlisten = 9811", "metrics.listen"),
        ('[backups.home.watch]\nwait_mn = "5s"', "backups.home.watch"),
        ("[backups.home.retention]\nkeep_daily = -1", "backups.home.retention"),
        ('[backups.home.resources]\nionice = "lazy"', "backups.home.resources.ionice"),
        ('[backups.b]\npaths = ["home"]\nrepositories = ["nas"]', "backups.b.paths.0"),
        ('[backups.b]\npaths = ["/home"]\npriority = "superiour"', "backups.b"),
        ('[repositories.r]\nlocation = "/r"', "repositories.r"),  # no password
        (
            '[repositories.r]\nlocation = "/r"\npassword = "a"\npassword_file = "/p"',
            "repositories.r",
        ),
        (
            '[[backups.home.hooks.before]]\ntype = "http"\ncommand = ["/bin/true"]',
            "backups.home.hooks.before.0",
        ),
        ('[[backups.home.hooks.before]]\ntype = "mail"', "backups.home.hooks.before.0"),
        ('[backups."bad name"]\npaths = ["/"]\nrepositories = ["nas"]', "backups"),
        ('[daemon]\nhostname = "a\\nb"', "daemon.hostname"),
        ('[daemon]\nhostname = "web*"', "daemon.hostname"),
        ('[daemon]\nhostname = "a@b"', "daemon.hostname"),
        ('[backups.b]\npaths = ["/a\\tb"]\nrepositories = ["nas"]', "backups.b.paths.0"),
        (
            '[backups.b]\npaths = ["/"]\nrepositories = ["nas"]\nexcludes = ["*.tmp\\u001b"]',
            "backups.b.excludes.0",
        ),
    ],
)
def test_a_mistake_fails_the_json_schema_where_it_is(validator, mistake, where, tmp_path):
    assert errors(validator, VALID) == []
    found = errors(validator, VALID + mistake)
    assert found and all(path.startswith(where) for path in found), found
    path = tmp_path / "henbackup.toml"  # and the loader refuses it too
    path.write_text(VALID + mistake, encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path, env={}, hostname="test-host")


def test_henbackup_schema_prints_the_json_schema(capsys):
    assert main(["schema"]) == 0
    out, err = capsys.readouterr()
    assert (json.loads(out), err) == (schema.json_schema(), "")
    assert json.loads(out)["$schema"] == "http://json-schema.org/draft-07/schema#"
