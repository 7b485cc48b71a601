"""contrib/: the Prometheus alert rules pass their promtool tests, and every PromQL expression
of the Grafana dashboard parses, on series henbackup really exports (observe/metrics.py).

promtool is Debian's, extracted by `make test` (scripts/fetch-promtool) into .cache/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ctl_helpers import PASSWORD, make_tree, write_config
from daemon_helpers import Daemon
from prometheus_client.parser import text_string_to_metric_families

from henbackup.observe import metrics
from tests.conftest import ROOT

PROMTOOL = ROOT / ".cache" / "promtool" / "usr" / "bin" / "promtool"
PROMETHEUS = ROOT / "contrib" / "prometheus"
RULES = PROMETHEUS / "henbackup.rules.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "henbackup.json"
# Series of others that the rules and the dashboard read: Prometheus's own, node_exporter's.
FOREIGN = {"up", "ALERTS", "node_systemd_unit_state"}
# What Grafana puts in for its variables before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$instance": ".+", "$__rate_interval": "5m"}


@pytest.fixture(scope="module")
def promtool() -> str:
    if not PROMTOOL.exists():
        pytest.skip("promtool is not in .cache: run `make test` to set it up")
    return str(PROMTOOL)


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_alert_rules_are_valid_and_pass_their_tests(promtool):
    checked = run(promtool, "check", "rules", RULES.name, cwd=PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    tested = run(promtool, "test", "rules", "henbackup.rules.test.yml", cwd=PROMETHEUS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_the_rule_tests_catch_a_rule_that_alerts_too_late(promtool, tmp_path):
    """The tests have teeth: an overdue backup alerted after two hours instead of one fails."""
    for name in ("henbackup.rules.yml", "henbackup.rules.test.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    rules = tmp_path / "henbackup.rules.yml"
    text = rules.read_text()
    assert text.count('backup!=""} > 3600)') == 1
    rules.write_text(text.replace('backup!=""} > 3600)', 'backup!=""} > 7200)'))
    tested = run(promtool, "test", "rules", "henbackup.rules.test.yml", cwd=tmp_path)
    assert tested.returncode == 1
    assert "alertname: HenbackupBackupOverdue, time: 1h1m" in tested.stderr


def dashboard_expressions() -> list[str]:
    """Every target's PromQL, Grafana's variables put in as Grafana does."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for name, value in GRAFANA_VARIABLES.items():
        expressions = [e.replace(name, value) for e in expressions]
    return expressions


def check_as_rules(
    promtool: str, expressions: list[str], where: Path
) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` of one recording rule per expression: it parses each one."""
    rules = [{"record": f"henbackup:dashboard:{n}", "expr": e} for n, e in enumerate(expressions)]
    path = where / "dashboard.rules.yml"  # JSON is YAML too
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    return run(promtool, "check", "rules", path.name, cwd=where)


def test_every_dashboard_expression_parses(promtool, tmp_path):
    expressions = dashboard_expressions()
    assert len(expressions) == 16
    checked = check_as_rules(promtool, expressions, tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 16 rules found" in checked.stdout
    broken = check_as_rules(promtool, [*expressions, "sum(henbackup_up"], tmp_path)
    assert broken.returncode == 1
    assert "unclosed left parenthesis" in broken.stderr


def series_names(expression: str) -> set[str]:
    """The metric names an expression selects (henbackup_… and the foreign ones)."""
    names = set(re.findall(r"\b(henbackup_[a-z_]+)\b", expression))
    return names | {name for name in FOREIGN if re.search(rf"\b{name}\{{", expression)}


def test_the_rules_and_the_dashboard_read_only_series_that_exist():
    exported = {family.name for family in metrics.FAMILIES} | FOREIGN
    used = series_names(RULES.read_text())  # its comments too: they name series as well
    used |= {name for e in dashboard_expressions() for name in series_names(e)}
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    used |= {
        name for v in variables if v["type"] == "query" for name in series_names(v["definition"])
    }
    assert used - exported == set()
    assert {"henbackup_next_run_timestamp_seconds", "henbackup_job_stalled"} <= used


# the rules on what a real daemon exports


def as_input_series(textfile: str, instance: str) -> list[dict[str, str]]:
    """Each sample of a real textfile as a promtool input series holding its value for 30
    minutes, labelled with the `instance` a scrape would add (empty labels left out, as
    Prometheus drops them)."""
    series = []
    for family in text_string_to_metric_families(textfile):
        for sample in family.samples:
            labels = {**{k: v for k, v in sample.labels.items() if v}, "instance": instance}
            selector = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items()))
            series.append(
                {"series": f"{sample.name}{{{selector}}}", "values": f"{sample.value!r}x30"}
            )
    return series


def alerts_at(promtool: str, where: Path, series: list[dict[str, str]], expected: dict) -> str:
    """Run promtool's rule tests with `series` and, at 10m, these alerts only (alert name →
    its exp_alerts; every other alert of the rules must be silent); returns its report."""
    for name in ("henbackup.rules.yml",):
        shutil.copy(PROMETHEUS / name, where / name)
    names = re.findall(r"- alert: (\w+)", RULES.read_text())
    checks = [
        {
            "alertname": name,
            "eval_time": "10m",
            "exp_alerts": expected.get(name, []),
        }
        for name in names
    ]
    test = {
        "rule_files": ["henbackup.rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": checks}],
    }
    (where / "real.test.yml").write_text(json.dumps(test))  # JSON is YAML too
    tested = run(promtool, "test", "rules", "real.test.yml", cwd=where)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    return tested.stdout


@pytest.mark.parametrize("restic", ["restic-0.14"], indirect=True)  # the engine is not tested
def test_a_real_daemons_failed_backup_and_stop_raise_the_alerts(restic, promtool, tmp_path):
    """A real daemon with two scheduled backups, one to a repository that cannot exist: its
    textfile (once both backups are scheduled again: the next runs reach the file too) raises
    the alert on that one only; once the daemon stops, its last textfile adds HenbackupDown.
    The rules read the series and labels henbackup really writes."""
    data = make_tree(tmp_path / "docs")
    textfile = tmp_path / "metrics" / "henbackup.prom"
    textfile.parent.mkdir()
    config = write_config(
        tmp_path,
        restic,
        {"local": (tmp_path / "local", PASSWORD), "gone": (Path("/dev/null/repository"), PASSWORD)},
        {
            "docs": {"paths": [str(data)], "repositories": ["local"], "schedule": ["1h"]},
            "pictures": {"paths": [str(data)], "repositories": ["gone"], "schedule": ["1h"]},
        },
        {"textfile": str(textfile)},
    )
    daemon = Daemon(config, tmp_path).start()
    try:
        daemon.wait_for("job.succeeded", timeout=120, backup="docs")
        daemon.wait_for("job.failed", timeout=120, backup="pictures")

        def both_scheduled_again() -> bool:
            text = textfile.read_text() if textfile.exists() else ""
            return text.count("henbackup_next_run_timestamp_seconds{") == 2

        assert daemon.pump_until(both_scheduled_again, 60), textfile.read_text()
        running = textfile.read_text()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.report()
    stopped = textfile.read_text()

    failed = {
        "exp_labels": {
            **{"severity": "warning", "instance": "db1", "backup": "pictures"},
            **{"repository": "gone", "operation": "backup"},
        },
        "exp_annotations": {
            "summary": "backup of pictures→gone on db1 failed",
            "description": "The last run did not succeed: `henbackupctl status` or "
            "`henbackupctl logs` there says why.",
        },
    }
    down = {
        "exp_labels": {"severity": "critical", "instance": "db1"},
        "exp_annotations": {
            "summary": "henbackup is down on db1",
            "description": "No backup runs there until it is started again "
            "(systemctl status henbackup).",
        },
    }
    alerts_at(
        promtool, tmp_path, as_input_series(running, "db1"), {"HenbackupLastRunFailed": [failed]}
    )
    expected = {"HenbackupLastRunFailed": [failed], "HenbackupDown": [down]}
    alerts_at(promtool, tmp_path, as_input_series(stopped, "db1"), expected)
