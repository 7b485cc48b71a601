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
