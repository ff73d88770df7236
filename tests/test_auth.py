"""Who may call (predictor/auth.py), on a real server with real clients: bearer tokens over REST
(tritonclient http, curl) and gRPC (tritonclient grpc, a raw grpcio stub) on both gRPC fronts, token
rotation while serving, KServe's repository API behind its flag, liveness once the model is unloaded,
and the model directory's digest."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from forecaster import digest

from .conftest import MODEL_NAME, REPO, start_server, stop_server, wait_ready
from .test_metrics import scrape, value, wait_for_count
from .test_serving import card, histories, window  # noqa: F401 (fixtures)

TOKEN_A, TOKEN_B, TOKEN_C = "tok-A-" + "a" * 26, "tok-B-" + "b" * 26, "tok-C-" + "c" * 26
HAS_CURL = shutil.which("curl") is not None


def bearer(token: str) -> dict:
    """The header, as REST and gRPC clients take it (gRPC metadata keys are lower case)."""
    return {"authorization": f"Bearer {token}"}


def http(srv, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """(status, headers, JSON body) of one REST call."""
    request = urllib.request.Request(srv.http_url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def curl(srv, path: str, *headers: bytes) -> tuple[int, bytes]:
    """curl sends header bytes as given (several of the same name, non-ASCII)."""
    args = [a for h in headers for a in (b"-H", h)]
    out = subprocess.run([b"curl", b"-s", b"-w", b"\n%{http_code}", *args, f"{srv.http_url}{path}".encode()],
                         capture_output=True, timeout=30, check=True).stdout
    body, _, status = out.rpartition(b"\n")
    return int(status), body


def failures(srv, protocol: str, reason: str) -> float:
    return value(scrape(srv), "perf_predictor_auth_failures_total", protocol=protocol, reason=reason)


def grpc_metadata_call(srv, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """ModelMetadata with exactly this metadata (repeated keys too), through grpcio."""
    with grpc.insecure_channel(srv.grpc_host) as channel:
        try:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelMetadata(
                service_pb2.ModelMetadataRequest(name=MODEL_NAME), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def kserve_unload(srv, metadata: list[tuple[str, str]]) -> grpc.StatusCode:
    """RepositoryModelUnload as KServe's proto has it (model_name is field 1; Triton's proto, which
    tritonclient sends, puts repository_name there and KServe would read an empty name)."""
    name = MODEL_NAME.encode()
    with grpc.insecure_channel(srv.grpc_host) as channel:
        unload = channel.unary_unary("/inference.GRPCInferenceService/RepositoryModelUnload",
                                     request_serializer=bytes, response_deserializer=bytes)
        try:
            unload(b"\x0a" + bytes([len(name)]) + name, metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def triton_infer_grpc(srv, history: np.ndarray, headers: dict | None = None):
    tensor = grpcclient.InferInput("history", list(history.shape), "FP32")
    tensor.set_data_from_numpy(history)
    return grpcclient.InferenceServerClient(srv.grpc_host).infer(MODEL_NAME, [tensor], headers=headers)


def triton_infer_http(srv, history: np.ndarray, headers: dict | None = None):
    tensor = httpclient.InferInput("history", list(history.shape), "FP32")
    tensor.set_data_from_numpy(history, binary_data=True)
    return httpclient.InferenceServerClient(srv.http_host).infer(MODEL_NAME, [tensor], headers=headers)


def write_tokens(path: Path, *tokens: str) -> None:
    path.write_text("# perf-predictor tokens, one per line\n" + "".join(t + "\n" for t in tokens))


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "tokens"
    write_tokens(path, TOKEN_A, TOKEN_B)
    return path


@pytest.fixture(scope="module")
def auth_server(model_dir, token_file, tmp_path_factory):
    """Authentication on, two worker processes (each reads the policy from the environment)."""
    srv = start_server(model_dir, tmp_path_factory.mktemp("logs") / "auth.log", "--workers", "2",
                       "--auth_token_file", str(token_file))
    try:
        wait_ready(srv)
        yield srv
    finally:
        stop_server(srv)


# --- REST
def test_rest_refuses_a_call_without_a_valid_token(auth_server, window):
    for path in (f"/v2/models/{MODEL_NAME}", "/v2", "/v2/models", "/v1/timeseries/models", "/v1/models",
                 "/openapi.json", "/docs"):
        status, headers, body = http(auth_server, path)
        assert status == 401, path
        assert json.loads(body) == {"error": "this server needs a bearer token: send Authorization: Bearer <token>"}
        assert headers["www-authenticate"] == "Bearer"
    status, headers, body = http(auth_server, f"/v2/models/{MODEL_NAME}", bearer("tok-wrong-" + "x" * 22))
    assert (status, headers["www-authenticate"]) == (401, 'Bearer error="invalid_token"')
    assert json.loads(body) == {"error": "the bearer token is not valid"}
    with pytest.raises(InferenceServerException) as refused:
        triton_infer_http(auth_server, histories(1, window))
    assert refused.value.status() == "401"
    with pytest.raises(InferenceServerException):
        triton_infer_http(auth_server, histories(1, window), headers=bearer(TOKEN_A[:-1] + "z"))


def test_rest_answers_every_listed_token(auth_server, window):
    history = histories(2, window)
    for token in (TOKEN_A, TOKEN_B):
        assert triton_infer_http(auth_server, history, headers=bearer(token)).as_numpy("p50").shape[0] == 2
        status, _, body = http(auth_server, f"/v2/models/{MODEL_NAME}", bearer(token))
        assert status == 200 and json.loads(body)["name"] == MODEL_NAME
    # the scheme is case-insensitive (RFC 9110 11.1)
    assert http(auth_server, f"/v2/models/{MODEL_NAME}", {"authorization": f"bEaReR {TOKEN_A}"})[0] == 200


def test_health_and_metrics_stay_open(auth_server):
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready", "/", "/metrics",
                 f"/v1/models/{MODEL_NAME}"):
        assert http(auth_server, path)[0] == 200, path


@pytest.mark.skipif(not HAS_CURL, reason="curl not installed")
@pytest.mark.parametrize("headers", [
    [b"Authorization: Bearer"],
    [b"Authorization: Bearer "],
    [b"Authorization: Basic dXNlcjpwYXNz"],
    [b"Authorization: " + TOKEN_A.encode()],
    [b"Authorization: Bearer " + TOKEN_A.encode() + b" extra"],
    [b"Authorization: Bearer " + TOKEN_A.encode(), b"Authorization: Bearer " + TOKEN_A.encode()],
    [b"Authorization: Bearer " + TOKEN_A.encode(), b"Authorization: Bearer " + TOKEN_B.encode()],
    [b"Authorization: Bearer tok-\xc3\xa9t\xc3\xa9-" + b"a" * 20],
    [b"Authorization: Bearer " + TOKEN_A.encode() + b"\xff"],
], ids=["scheme-only", "empty-token", "basic", "no-scheme", "two-parts", "two-headers-same", "two-headers",
        "non-ascii", "trailing-byte"])
def test_malformed_authorization_is_refused(auth_server, headers):
    before = failures(auth_server, "rest", "malformed")
    status, body = curl(auth_server, f"/v2/models/{MODEL_NAME}", *headers)
    assert status == 401
    assert json.loads(body) == {"error": "the Authorization header must be one 'Bearer <token>' (RFC 6750)"}
    assert wait_for_count(lambda: failures(auth_server, "rest", "malformed"), before + 1) == before + 1


def test_refusals_are_counted_by_reason(auth_server):
    before = {r: failures(auth_server, "rest", r) for r in ("missing", "invalid")}
    for _ in range(3):
        http(auth_server, f"/v2/models/{MODEL_NAME}")
    http(auth_server, f"/v2/models/{MODEL_NAME}", bearer("tok-nope-" + "n" * 23))
    # the counter is summed over both worker processes, whichever answered
    for reason, more in (("missing", 3), ("invalid", 1)):
        count = wait_for_count(lambda r=reason: failures(auth_server, "rest", r), before[reason] + more)
        assert count == before[reason] + more, reason


def test_the_forecast_loop_sends_the_token(auth_server, token_file, tmp_path, window):
    """model.bearer_token_file in the loop's config: its first token on every v2 call; none is a 401."""
    import dataclasses

    from forecast_loop.config import parse
    from forecast_loop.v2_client import ModelError, V2Client

    config = parse({"prometheus": {"url": "http://prometheus:9090"},
                    "model": {"url": auth_server.http_url, "name": MODEL_NAME, "bearer_token_file": str(token_file)},
                    "targets": [{"name": "t", "query": "up"}]}).model
    client = V2Client(config)
    spec = client.spec()
    assert spec.window == window and client.forecast(histories(3, window), spec).shape[1] == 3
    with pytest.raises(ModelError) as anonymous:
        V2Client(dataclasses.replace(config, bearer_token_file=None)).spec()
    assert anonymous.value.reason == "model_error" and "401" in str(anonymous.value)
    with pytest.raises(ModelError) as unreadable:
        V2Client(dataclasses.replace(config, bearer_token_file=str(tmp_path / "absent"))).spec()
    assert unreadable.value.reason == "model_token"


# --- gRPC, the native front
def test_grpc_refuses_a_call_without_a_valid_token(auth_server, window):
    history = histories(1, window)
    for headers in (None, bearer("tok-wrong-" + "x" * 22), {"authorization": "Basic dXNlcjpwYXNz"},
                    {"authorization": "Bearer"}):
        with pytest.raises(InferenceServerException) as refused:
            triton_infer_grpc(auth_server, history, headers)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED", headers
    client = grpcclient.InferenceServerClient(auth_server.grpc_host)
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata(MODEL_NAME)
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    assert "bearer token" in refused.value.message()


def test_grpc_answers_a_valid_token_and_leaves_health_open(auth_server, window):
    history = histories(2, window)
    for token in (TOKEN_A, TOKEN_B):
        assert triton_infer_grpc(auth_server, history, bearer(token)).as_numpy("p90").shape[0] == 2
    client = grpcclient.InferenceServerClient(auth_server.grpc_host)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL_NAME)


def test_grpc_two_authorization_entries_are_refused(auth_server):
    """grpcio sends repeated metadata as repeated HTTP/2 fields; the server joins them into one value
    (predictor/_h2.c), which is then not one bearer token."""
    assert grpc_metadata_call(auth_server, [("authorization", f"Bearer {TOKEN_A}")]) == grpc.StatusCode.OK
    before = failures(auth_server, "grpc", "malformed")
    assert grpc_metadata_call(auth_server, [("authorization", "Bearer tok-wrong-" + "x" * 22),
                                            ("authorization", f"Bearer {TOKEN_A}")]) == grpc.StatusCode.UNAUTHENTICATED
    assert wait_for_count(lambda: failures(auth_server, "grpc", "malformed"), before + 1) == before + 1


# --- rotation
def test_a_rotated_token_file_takes_effect_without_restart(model_dir, tmp_path, window):
    """Rewritten in place, then replaced by a new file as a Secret volume's update does (a new inode
    behind the same name): each change holds from the next call on, on both protocols."""
    tokens = tmp_path / "tokens"
    write_tokens(tokens, TOKEN_A)
    srv = start_server(model_dir, tmp_path / "rotate.log", "--auth_token_file", str(tokens))
    history = histories(1, window)
    try:
        wait_ready(srv)
        assert triton_infer_grpc(srv, history, bearer(TOKEN_A)) is not None
        write_tokens(tokens, TOKEN_A, TOKEN_B)  # rotation starts: both
        assert http(srv, f"/v2/models/{MODEL_NAME}", bearer(TOKEN_B))[0] == 200
        assert triton_infer_grpc(srv, history, bearer(TOKEN_B)) is not None
        assert http(srv, f"/v2/models/{MODEL_NAME}", bearer(TOKEN_A))[0] == 200
        staged = tmp_path / "tokens.new"
        write_tokens(staged, TOKEN_B, TOKEN_C)
        os.replace(staged, tokens)  # rotation ends: A is gone
        assert http(srv, f"/v2/models/{MODEL_NAME}", bearer(TOKEN_A))[0] == 401
        with pytest.raises(InferenceServerException):
            triton_infer_grpc(srv, history, bearer(TOKEN_A))
        assert http(srv, f"/v2/models/{MODEL_NAME}", bearer(TOKEN_C))[0] == 200
        # a file that disappears keeps the tokens read before, and says so once
        tokens.unlink()
        assert http(srv, f"/v2/models/{MODEL_NAME}", bearer(TOKEN_C))[0] == 200
        assert http(srv, f"/v2/models/{MODEL_NAME}", bearer(TOKEN_C))[0] == 200
        assert srv.log().count("not readable") == 1
    finally:
        stop_server(srv)


# --- the grpcio front (--grpc_front kserve)
def test_kserve_grpc_front_checks_tokens_too(model_dir, token_file, tmp_path, window):
    srv = start_server(model_dir, tmp_path / "kserve-front.log", "--grpc_front", "kserve",
                       "--auth_token_file", str(token_file))
    try:
        wait_ready(srv)
        history = histories(1, window)
        with pytest.raises(InferenceServerException) as refused:
            triton_infer_grpc(srv, history)
        assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
        assert triton_infer_grpc(srv, history, bearer(TOKEN_B)).as_numpy("p50").shape[0] == 1
        assert grpc_metadata_call(srv, [("authorization", "Bearer " + TOKEN_A),
                                        ("authorization", "Bearer " + TOKEN_A)]) == grpc.StatusCode.UNAUTHENTICATED
        client = grpcclient.InferenceServerClient(srv.grpc_host)
        assert client.is_server_live() and client.is_model_ready(MODEL_NAME)
        assert kserve_unload(srv, list(bearer(TOKEN_A).items())) == grpc.StatusCode.UNIMPLEMENTED  # API off
        assert wait_for_count(lambda: failures(srv, "grpc", "missing"), 1) == 1
    finally:
        stop_server(srv)


def test_closed_health_and_metrics_need_a_token(model_dir, token_file, tmp_path):
    srv = start_server(model_dir, tmp_path / "closed.log", "--auth_token_file", str(token_file), "--auth_open", "")
    try:
        deadline = time.monotonic() + 60
        while http_or_none(srv, "/v2/health/live") != 401:  # up: refusing, not ready-checking, anonymous probes
            assert srv.process.poll() is None and time.monotonic() < deadline, srv.log()
            time.sleep(0.2)
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL_NAME}/ready", "/metrics"):
            assert http(srv, path)[0] == 401, path
            assert http(srv, path, bearer(TOKEN_A))[0] == 200, path
        with pytest.raises(InferenceServerException) as refused:
            grpcclient.InferenceServerClient(srv.grpc_host).is_server_live()
        assert "UNAUTHENTICATED" in str(refused.value)
    finally:
        stop_server(srv)


def http_or_none(srv, path: str):
    try:
        return http(srv, path)[0]
    except OSError:
        return None


# --- KServe's repository API
def test_the_repository_api_is_absent_by_default(server):
    """kserve 0.21 mounts POST /v2/repository/models/{name}/load|unload (protocol/rest/v2_endpoints.py
    register_v2_endpoints) and the RepositoryModelLoad/Unload RPCs (protocol/grpc/servicer.py) with no
    check: here they are not served unless --enable_repository_api."""
    for action in ("unload", "load"):
        status, _, body = http(server, f"/v2/repository/models/{MODEL_NAME}/{action}", method="POST", body=b"")
        assert status == 404 and "repository API is off" in json.loads(body)["error"]
    assert kserve_unload(server, []) == grpc.StatusCode.UNIMPLEMENTED
    assert http(server, f"/v2/models/{MODEL_NAME}/ready")[0] == 200
    assert http(server, "/v2/health/live")[0] == 200


def test_the_repository_api_needs_authentication(model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "predictor", "--model_dir", str(model_dir), "--http_port", "0",
                           "--enable_repository_api"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--enable_repository_api lets a caller unload the model: it needs authentication" in proc.stdout + proc.stderr


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_unload_with_a_token_makes_liveness_fail(model_dir, token_file, tmp_path, protocol):
    """Before this, an unloaded model left /v2/health/live at 200 and nothing restarted the pod. The
    chart's livenessProbe is GET /v2/health/live (templates/_helpers.tpl). KServe passes the predictor's
    probes to the pod as they are; Knative keeps a liveness httpGet aimed at the user container, only
    setting its port (knative/serving pkg/reconciler/revision/resources/deploy.go,
    rewriteUserLivenessProbe), so the kubelet sees this 503 in both modes and restarts the container."""
    srv = start_server(model_dir, tmp_path / "repository.log", "--auth_token_file", str(token_file),
                       "--enable_repository_api")
    try:
        wait_ready(srv)
        path = f"/v2/repository/models/{MODEL_NAME}/unload"
        assert http(srv, path, method="POST", body=b"")[0] == 401  # anonymous: refused
        assert kserve_unload(srv, []) == grpc.StatusCode.UNAUTHENTICATED
        assert http(srv, "/v2/health/live")[0] == 200
        if protocol == "rest":
            status, _, body = http(srv, path, bearer(TOKEN_A), method="POST", body=b"")
            assert (status, json.loads(body)) == (200, {"name": MODEL_NAME, "unload": True})
        else:
            assert kserve_unload(srv, list(bearer(TOKEN_A).items())) == grpc.StatusCode.OK
        status, _, body = http(srv, "/v2/health/live")
        assert (status, json.loads(body)) == (503, {"error": f"model {MODEL_NAME} is not loaded"})
        assert http(srv, "/")[0] == 503
        assert http(srv, f"/v2/models/{MODEL_NAME}/ready")[0] != 200
    finally:
        stop_server(srv)


# --- the model directory's digest
def test_digest_covers_names_and_contents(model_dir, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(model_dir, copy)
    first = digest.of_directory(copy)
    assert first == digest.of_directory(model_dir) and first.startswith("sha256:") and len(first) == 71
    out = subprocess.run([sys.executable, "-m", "forecaster.digest", str(copy)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == first
    card_file = copy / "model-card.json"
    card_text = card_file.read_text()
    card_file.write_text(card_text + " ")
    assert digest.of_directory(copy) != first
    card_file.write_text(card_text)
    assert digest.of_directory(copy) == first
    (copy / "extra").write_bytes(b"")
    assert digest.of_directory(copy) != first
    (copy / "extra").unlink()
    os.rename(card_file, copy / "model-card.jsom")
    assert digest.of_directory(copy) != first
    assert digest.normalized(first.upper().replace("SHA256:", "")) == first
    with pytest.raises(ValueError):
        digest.normalized("sha256:1234")


def test_training_prints_the_digest(tmp_path):
    out = subprocess.run([sys.executable, "-m", "training", "--out", str(tmp_path / "m"), "--max-iter", "2",
                          "--stride", "96", "--jobs", "1"], cwd=REPO, capture_output=True, text=True, check=True)
    assert f"model digest {digest.of_directory(tmp_path / 'm')} " in out.stdout


def test_a_swapped_model_directory_is_refused(model_dir, tmp_path, window):
    """A directory whose card was changed with it still passes the card's own artifact hashes; the
    pinned digest refuses it at start with one line, and the process exits non-zero."""
    expected = digest.of_directory(model_dir)
    swapped = tmp_path / "swapped"
    shutil.copytree(model_dir, swapped)
    card_path = swapped / "model-card.json"
    doctored = json.loads(card_path.read_text())
    doctored["version"] = "not-what-you-pinned"
    card_path.write_text(json.dumps(doctored))
    proc = subprocess.run([sys.executable, "-m", "predictor", "--model_dir", str(swapped), "--http_port", "0",
                           "--model_digest", expected], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "digest" in line]
    assert len(lines) == 1 and f"not the expected {expected}" in lines[0], proc.stdout + proc.stderr
    srv = start_server(model_dir, tmp_path / "pinned.log", "--model_digest", expected)  # the right one serves
    try:
        wait_ready(srv)
        assert triton_infer_grpc(srv, histories(1, window)).as_numpy("p50").shape[0] == 1
    finally:
        stop_server(srv)
