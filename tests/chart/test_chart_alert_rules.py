"""The chart's alert rules, rendered by Helm with values, unit-tested by promtool: each fires and stays quiet."""
from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from chartlib import promtool, promtool_unit_test, render

HERE = Path(__file__).resolve().parent
RULE_VALUES = ["--set-json", 'monitoring.prometheusRule={"enabled": true, "errorRatioThreshold": 0.1, '
               '"latencyP99SloSeconds": 0.25, "for": "2m"}']


def rendered_rules(*values: str) -> dict:
    (rule,) = [o for o in render("helm4", *values) if o["kind"] == "PrometheusRule"]
    return rule["spec"]


def test_rules_carry_the_values(tmp_path):
    spec = rendered_rules(*RULE_VALUES)
    exprs = {r["alert"]: r["expr"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    assert "> 0.25" in exprs["PerfPredictorLatencyHigh"] and "> 0.1" in exprs["PerfPredictorHighErrorRatio"]
    assert 'job=~".*perf-predictor.*"' in exprs["PerfPredictorDown"]
    assert all(r.get("for") == "2m" for g in spec["groups"] for r in g["rules"] if "alert" in r)
    assert "__" not in yaml.safe_dump(spec), "a placeholder was left unreplaced"


def test_promtool_check_rules(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rendered_rules("--set", "monitoring.prometheusRule.enabled=true")))
    proc = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_fire_and_stay_quiet(tmp_path):
    tested = promtool_unit_test(tmp_path, rendered_rules(*RULE_VALUES), HERE / "alert-rules.test.yaml")
    alerts = {r["alert"] for g in rendered_rules(*RULE_VALUES)["groups"] for r in g["rules"] if "alert" in r}
    assert alerts <= tested, f"alerts without a promtool test: {alerts - tested}"
