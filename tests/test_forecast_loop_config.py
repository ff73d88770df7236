"""The forecast loop's config: every mistake is an error naming the file and the key, before anything starts."""
from __future__ import annotations

import copy

import pytest
import yaml

from forecast_loop.capacity import Capacity
from forecast_loop.config import ConfigError, load, parse

GOOD = {
    "prometheus": {"url": "http://prometheus:9090", "timeout": "5s"},
    "model": {"url": "http://perf-predictor-predictor", "name": "perf-predictor"},
    "targets": [{"name": "api-rps", "query": "sum by (service) (rate(http_requests_total[5m]))", "step": "5m",
                 "max_series": 50, "thresholds": {"quantile": 0.9, "warning": {"above": 800},
                                                  "critical": {"above": 1000}}}],
}


def test_defaults_and_parsed_values():
    config = parse(GOOD, "loop.yaml")
    assert config.interval == 60 and config.horizons == (900, 1800, 3600)
    assert (config.listen_host, config.listen_port) == ("0.0.0.0", 9400)
    assert config.prometheus.timeout == 5 and config.model.max_batch_series == 1024 and config.model.step is None
    (target,) = config.targets
    assert target.step == 300 and target.max_series == 50
    assert [(t.severity, t.direction, t.value) for t in target.thresholds.levels] == [
        ("warning", "above", 800), ("critical", "above", 1000)]


def with_change(path: str, value) -> dict:
    doc = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("path, value, message", [
    ("prometheus.tmeout", "3s", "prometheus.tmeout: unknown key"),
    ("prometheus.url", "prometheus:9090", "prometheus.url: must be an http:// or https:// URL"),
    ("prometheus.timeout", "soon", "prometheus.timeout: cannot parse duration"),
    ("model.name", KeyError, "model.name: is required"),
    ("model.max_batch_series", 0, "model.max_batch_series: must be a positive integer"),
    ("interval", "0s", "interval: must be a positive duration"),
    ("horizons", [], "horizons: must be a non-empty list"),
    ("listen", "9400", "listen: must be host:port"),
    ("accuracy", {"windw": "1h"}, "accuracy.windw: unknown key"),
    ("targets", [], "targets: must be a non-empty list"),
    ("targets.0.max_series", "3", "targets[0].max_series: must be a positive integer, got '3'"),
    ("targets.0.step", "7m", "targets[0].step: horizon 900s is not a whole number of steps of 420s"),
    ("targets.0.step", "1.5s", "targets[0].step: must be a whole number of seconds"),
    ("targets.0.query", "", "targets[0].query: must be a non-empty string"),
    ("targets.0.name", "a b", "targets[0].name: must be letters, digits"),
    ("targets.0.thresholds.warning", {"above": 1, "below": 0}, "targets[0].thresholds.warning: needs exactly one"),
    ("targets.0.thresholds.critical", {"above": "high"}, "targets[0].thresholds.critical.above: must be a finite number"),
    ("targets.0.thresholds.quantile", 1.5, "targets[0].thresholds.quantile: must be between 0 and 1"),
    ("targets.0.thresholds", {"quantile": 0.9}, "targets[0].thresholds: needs warning or critical"),
    ("targets.0.capacty", {}, "targets[0].capacty: unknown key"),
    ("targets.0.capacity", {"per_replica": 100}, "targets[0].capacity.max_replicas: is required"),
    ("targets.0.capacity", {"max_replicas": 3}, "targets[0].capacity.per_replica: is required"),
    ("targets.0.capacity", {"per_replica": 0, "max_replicas": 3}, "targets[0].capacity.per_replica: must be > 0"),
    ("targets.0.capacity", {"per_replica": -1.5, "max_replicas": 3}, "capacity.per_replica: must be > 0"),
    ("targets.0.capacity", {"per_replica": "lots", "max_replicas": 3}, "capacity.per_replica: must be a finite"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "min_replicas": 3},
     "targets[0].capacity.max_replicas: must be >= min_replicas (3), got 2"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 0, "min_replicas": 0},
     "targets[0].capacity.max_replicas: must be a positive integer"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "min_replicas": -1},
     "targets[0].capacity.min_replicas: must be an integer >= 0"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "quantile": 1},
     "targets[0].capacity.quantile: must be between 0 and 1"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "lead_time": "-5m"},
     "targets[0].capacity.lead_time: cannot parse duration"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "scale_down_window": -60},
     "targets[0].capacity.scale_down_window: must be a duration >= 0"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "lead": "5m"},
     "targets[0].capacity.lead: unknown key"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "calibrate": "yes"},
     "targets[0].capacity.calibrate: must be true or false, got 'yes'"),
    ("targets.0.capacity", {"per_replica": 1, "max_replicas": 2, "quantile": 0.5},
     "targets[0].capacity.calibrate: needs quantile above 0.5 (it scales the distance above the median), got "
     "quantile 0.5; set calibrate: false"),
    ("scaler", {"listen": "9500"}, "scaler.listen: must be host:port"),
    ("scaler", {"port": 9500}, "scaler.port: unknown key"),
])
def test_mistakes_name_the_file_and_key(path, value, message):
    with pytest.raises(ConfigError) as exc:
        parse(with_change(path, value), "loop.yaml")
    assert str(exc.value).startswith("loop.yaml: ") and message in str(exc.value), str(exc.value)


def test_capacity_and_scaler():
    doc = with_change("targets.0.capacity", {"per_replica": 250, "max_replicas": 20})
    (target,) = parse(doc).targets
    assert target.capacity == Capacity(per_replica=250.0, max_replicas=20, min_replicas=1, quantile=0.9,
                                       lead_time=300.0, scale_down_window=0.0, calibrate=True)
    assert parse(doc).scaler_listen is None, "the scaler is off unless configured"
    doc["targets"][0]["capacity"].update(min_replicas=0, quantile=0.5, lead_time="2m30s", scale_down_window=0,
                                         calibrate=False)
    doc["scaler"] = {"listen": "0.0.0.0:9500"}
    config = parse(doc)
    assert config.targets[0].capacity == Capacity(per_replica=250.0, max_replicas=20, min_replicas=0,
                                                  quantile=0.5, lead_time=150.0, scale_down_window=0.0,
                                                  calibrate=False)
    assert config.scaler_listen == ("0.0.0.0", 9500)
    assert parse(GOOD).targets[0].capacity is None


def test_duplicate_target_names_and_missing_files(tmp_path):
    doc = copy.deepcopy(GOOD)
    doc["targets"].append(copy.deepcopy(doc["targets"][0]))
    with pytest.raises(ConfigError, match=r"targets\[1\].name: 'api-rps' is used by more than one target"):
        parse(doc, "loop.yaml")
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(with_change("prometheus.bearer_token_file", str(tmp_path / "token"))))
    with pytest.raises(ConfigError, match=r"loop.yaml: prometheus.bearer_token_file: no such file"):
        load(path)
    path.write_text("targets: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "absent.yaml")
