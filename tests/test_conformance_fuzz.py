"""Conformance fuzzing: schemathesis generates requests from the Open Inference Protocol's REST spec
(../shared/spec/open_inference_rest.yaml) and sends them to a real server. Whatever it sends, no
answer is a 5xx, every error body is `{"error": "<text>"}`, no traceback is logged, and the server is
still ready afterwards.

The spec writes its paths `/v2/models/${MODEL_NAME}/versions/${MODEL_VERSION}/...`; the copy made here
(never ../shared itself) has each of them with the model name fixed and generated, the version fixed
and generated, and without the version. Its tensors name `history` and FP32/FP64 more often than not,
and three bodies in four get a shape their data fills (half of them also a tensor named `history`,
FP32 or FP64, and no unknown outputs), so that many cases reach the model.

PERF_PREDICTOR_FUZZ_CASES sets the number of cases (CI: 300; the long run in benchmarks/README.md),
PERF_PREDICTOR_FUZZ_REPORT a file for the run's figures (benchmarks/report.py reads them).
"""
from __future__ import annotations

import collections
import copy
import json
import os
import time
from pathlib import Path

import pytest
import requests
import yaml

from .conftest import MODEL_NAME, end_process, shared_dir, start_server, wait_ready
from .test_serving import card, get  # noqa: F401 (fixtures)

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

SPEC = shared_dir() / "spec" / "open_inference_rest.yaml"
CASES = int(os.environ.get("PERF_PREDICTOR_FUZZ_CASES", "300"))
NAME, VERSION = "${MODEL_NAME}", "${MODEL_VERSION}"
OUTPUTS = ("p10", "p50", "p90")


def spec_for(model_version: str) -> dict:
    """The spec with its model paths in every variant, and tensors that are often this model's."""
    raw = yaml.safe_load(SPEC.read_text())
    paths = {}
    for path, item in raw["paths"].items():
        if NAME not in path:
            paths[path] = item
            continue
        unversioned = path.replace(f"/versions/{VERSION}", "")
        for variant in {path, unversioned}:
            for name in (MODEL_NAME, "{MODEL_NAME}"):
                for version in ((model_version, "{MODEL_VERSION}") if VERSION in variant else (None,)):
                    concrete = variant.replace(NAME, name)
                    if version is not None:
                        concrete = concrete.replace(VERSION, version)
                    copied = copy.deepcopy(item)
                    copied["parameters"] = [p for p in item.get("parameters", []) if f"{{{p['name']}}}" in concrete]
                    for operation in copied.values():
                        if isinstance(operation, dict) and "operationId" in operation:
                            operation["operationId"] += f"-{len(paths)}"
                    paths[concrete] = copied
    raw["paths"] = paths
    tensor = raw["components"]["schemas"]["request_input"]["properties"]
    tensor["name"] = {"anyOf": [{"enum": ["history"]}, {"type": "string"}]}
    tensor["datatype"] = {"anyOf": [{"enum": ["FP32", "FP64"]}, {"type": "string"}]}
    return raw


def numbers_in(data) -> list:
    out = []
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, list):
            out += numbers_in(item)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            out.append(item)
    return out


def fill(body, rows: int, length: int, tidy: bool):
    """The body with its first tensor's data made to fill a [rows, length] shape (from its own numbers);
    `tidy`: also that tensor alone, named `history`, FP32 or FP64, and only outputs the model has."""
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        return body
    if not body["inputs"] and tidy:
        body["inputs"].append({})
    tensor = body["inputs"][0] if body["inputs"] else None
    if not isinstance(tensor, dict):
        return body
    if tidy:
        body["inputs"] = [tensor]
        tensor["name"] = "history"
        tensor["datatype"] = tensor.get("datatype") if tensor.get("datatype") in ("FP32", "FP64") else "FP32"
        if isinstance(body.get("outputs"), list):
            body["outputs"] = [o for o in body["outputs"] if isinstance(o, dict) and o.get("name") in OUTPUTS]
    numbers = numbers_in(tensor.get("data", [])) or [1.0]
    if tensor.get("datatype") in ("FP32", "FP64"):  # a number no float holds is a 400, not what filling is for
        numbers = [float(n) if abs(n) < 1e30 else 1.0 for n in numbers]
    tensor["shape"] = [rows, length]
    tensor["data"] = [numbers[i % len(numbers)] for i in range(rows * length)]
    return body


def check_reply(case, response, tally: collections.Counter) -> None:
    where = f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}"
    tally[response.status_code] += 1
    assert response.status_code < 500, where
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"} and isinstance(body["error"], str), where


def fuzz(srv, session, operation, mode, examples: int, tally: collections.Counter,
         reached: collections.Counter) -> None:
    """`examples` cases of one operation in one generation mode, each checked as it is answered."""

    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), shape=st.tuples(
        st.integers(1, 9), st.integers(20, 400), st.sampled_from(["tidy", "fill", "tidy", "as generated"])))
    def run(case, shape):
        rows, length, how = shape
        if how != "as generated" and case.method == "POST":
            case.body = fill(case.body, rows, length, tidy=how == "tidy")
        response = case.call(base_url=srv.http_url, session=session, timeout=30)
        check_reply(case, response, tally)
        if response.status_code == 200 and case.method == "POST":
            reached[operation.label] += 1

    run()


@pytest.fixture(scope="module")
def fuzzed(model_dir, tmp_path_factory):
    srv = start_server(model_dir, tmp_path_factory.mktemp("fuzz") / "server.log")
    try:
        wait_ready(srv)
        yield srv
    finally:
        end_process(srv.process, 30)


@pytest.mark.skipif(not SPEC.exists(), reason=f"no Open Inference Protocol spec at {SPEC} (PERF_PREDICTOR_SHARED)")
def test_no_generated_request_gets_a_5xx_or_an_error_of_another_shape(fuzzed, card):
    schema = schemathesis.openapi.from_dict(spec_for(card["version"]))
    operations = [result.ok() for result in schema.get_all_operations()]
    tally: collections.Counter = collections.Counter()
    reached: collections.Counter = collections.Counter()
    # inference gets three times the cases of a GET: it is where bodies are read
    weight = {op.label: 3 if op.method.upper() == "POST" else 1 for op in operations}
    unit = CASES / (2 * sum(weight.values()))
    session = requests.Session()
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzz(fuzzed, session, operation, mode, max(1, round(unit * weight[operation.label])), tally, reached)
            except Unsatisfiable:  # nothing to break in an operation without parameters or body
                assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    sent = sum(tally.values())
    print(f"\n{sent} cases over {len(operations)} operations; statuses {dict(sorted(tally.items()))}; "
          f"forecasts {sum(reached.values())}")
    assert sent >= CASES // 2
    assert sum(reached.values()) > 0, "no generated request reached the model"
    assert get(fuzzed, "/v2/health/ready") == (200, {"ready": True})
    assert fuzzed.process.poll() is None
    assert "Traceback" not in fuzzed.log(), fuzzed.log()[-3000:]
    if os.environ.get("PERF_PREDICTOR_FUZZ_REPORT"):  # the long run's figures, for benchmarks/report.py
        report = Path(os.environ["PERF_PREDICTOR_FUZZ_REPORT"])
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({
            "cases": sent, "operations": len(operations), "statuses": {str(k): v for k, v in sorted(tally.items())},
            "forecasts": sum(reached.values()), "what": "Conformance fuzzing",
            "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": " / ".join(f"{x:.1f}" for x in os.getloadavg())}, indent=1))
