"""Serving benchmark (issue 7): the same model served three ways, loaded by separate-process load generators.

    make bench                                  # full run, ~15 min on 2 cores
    make bench BENCH_ARGS=--quick               # ~6 min: shorter runs, fewer scenarios
    .venv/bin/python benchmarks/run.py [--quick] [--model_dir DIR] [--servers a,b] [--protocols ...]

What it does, in one run on one machine:
1. Model: trains a model directory with `python -m training` into .cache/bench/model (or takes
   --model_dir), and the issue's reference "straightforward 36-model forecaster"
   (benchmarks/reference_model.py), cached in .cache/bench/reference.pkl.
2. Times the in-process featurize+predict floor of both, at batch 1, 256 and 1000.
3. Starts each server alone on free loopback ports (OMP_NUM_THREADS=1 for all): perf-predictor
   (`python -m predictor`), a minimal `kserve.Model` (benchmarks/servers/kserve_minimal.py), MLServer
   1.7.1 with a minimal custom runtime (benchmarks/servers/mlserver_runtime.py, in its own venv under
   .cache/bench-venvs/mlserver), and MLServer serving the reference. Before loading a server, one request
   per batch size and protocol must answer 200 with outputs equal to the in-process forecast, or the
   run fails.
4. Loads it with wrk (REST JSON; REST binary tensors) and h2load (gRPC unary calls; --grpc-client python
   uses benchmarks/grpc_load.py instead, which costs the shared cores ~0.5 ms of CPU per call), c
   connections each: single series at concurrency 1 and 16, batch 256 at concurrency 1 (and 4), 1,000
   series in one request.
5. Writes benchmarks/results/latest.md and latest.json and prints the issue's target checks.

Needs `wrk` and `h2load` (Debian packages wrk and nghttp2-client; installed with apt-get when missing
and running as root).
"""
from __future__ import annotations

import os

# Same thread policy in this process (the in-process floor) as in every server.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

import loadgen  # noqa: E402
import reference_model  # noqa: E402
from forecaster import artifact  # noqa: E402

MLSERVER_VENV = REPO / ".cache" / "bench-venvs" / "mlserver"
MLSERVER_PINS = ["mlserver==1.7.1", "uvloop<0.22"]  # MLServer 1.7.1 fails with uvloop 0.22 here
PROTOCOLS = ("rest_json", "rest_binary", "grpc")
BATCHES = (1, 256, 1000)
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[bench {time.perf_counter() - T0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Scenario:
    key: str
    batch: int
    concurrency: int
    label: str


SCENARIOS = [
    Scenario("single_c1", 1, 1, "1 series, c=1"),
    Scenario("single_c16", 1, 16, "1 series, c=16"),
    Scenario("batch256_c1", 256, 1, "256 series, c=1"),
    Scenario("batch256_c4", 256, 4, "256 series, c=4"),
    Scenario("batch1000_c1", 1000, 1, "1000 series, c=1"),
]
QUICK_SKIP = {"batch256_c4"}


@dataclass
class Server:
    name: str
    model: str  # "project" or "reference"
    model_name: str  # name in the v2 URL / gRPC request
    cmd: list[str]
    http_port: int
    grpc_port: int
    env: dict = field(default_factory=dict)
    cwd: Path = REPO
    protocols: tuple = PROTOCOLS
    unsupported: dict = field(default_factory=dict)  # protocol -> why (probed anyway, recorded)
    description: str = ""


# ---------------------------------------------------------------- set-up


def ensure_tool(tool: str, package: str, install: bool) -> str:
    path = shutil.which(tool)
    if path:
        return path
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"{tool} not found: apt-get install -y {package}")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True)
        path = shutil.which(tool)
    if not path:
        sys.exit(f"{tool} is needed: apt-get install -y {package} (Debian/Ubuntu)")
    return path


def mlserver_pins() -> list[str]:
    """MLServer plus the project's runtime dependencies (pyproject.toml) except kserve, each pinned to the
    version in this venv, so the runtime imports `forecaster` (through PYTHONPATH) and loads the same
    model the same way. Not uvloop: MLServer 1.7.1 needs its own pin (MLSERVER_PINS)."""
    import re
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = list(MLSERVER_PINS)
    for dep in deps:
        name = re.split(r"[\s<>=!~;\[]", dep, maxsplit=1)[0]
        if name.lower() in ("kserve", "uvloop"):
            continue
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(dep)
    return pins


def ensure_mlserver_venv() -> Path:
    """MLServer in its own venv: its pins clash with kserve's."""
    pins = mlserver_pins()
    marker = MLSERVER_VENV / ".bench-pins"
    if marker.is_file() and marker.read_text() == "\n".join(pins):
        return MLSERVER_VENV / "bin"
    log(f"creating {MLSERVER_VENV} with {' '.join(pins)}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True)
    pip = [str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    with (REPO / ".cache" / "bench-venvs" / "mlserver-pip.log").open("w") as pip_log:
        subprocess.run(pip + ["--upgrade", "pip"], check=True, stdout=pip_log, stderr=subprocess.STDOUT)
        subprocess.run(pip + pins, check=True, stdout=pip_log, stderr=subprocess.STDOUT)
    marker.write_text("\n".join(pins))
    return MLSERVER_VENV / "bin"


def source_stamp() -> str:
    """Hash of the training and forecaster sources: the cached model is retrained when they change."""
    digest = hashlib.sha256()
    for folder in ("forecaster", "training"):
        for path in sorted((REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_model(model_dir: Path | None, work: Path, retrain: bool) -> Path:
    if model_dir is not None:
        return model_dir
    model_dir = work / "model"
    stamp_file, stamp = work / "model.stamp", source_stamp()
    if not stamp_file.is_file() or stamp_file.read_text() != stamp:
        retrain = True
    if not retrain:
        try:  # a directory left by an older build may load but no longer fit this build's features
            forecaster, card = artifact.load(model_dir)
            forecaster.predict(np.ones((1, int(card["window"]))))
            return model_dir
        except Exception as exc:  # noqa: BLE001
            log(f"(re)training {model_dir}: {type(exc).__name__}: {exc}")
    log(f"training {model_dir} with `python -m training` (built-in synthetic data)")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "training", "--out", str(model_dir)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    stamp_file.write_text(stamp)
    log(f"trained {model_dir} in {time.perf_counter() - started:.0f} s")
    return model_dir


def workload(window: int, n: int, seed: int) -> np.ndarray:
    """n windows of W points cut at random origins from fresh synthetic series (not the training seed),
    rounded to 2 decimals so JSON and binary bodies carry exactly the same FP32 values."""
    from training.sources import synthetic

    series = [np.asarray(s.values, dtype=np.float64) for s in synthetic.generate(n_series=12, seed=seed)]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        values = series[i % len(series)]
        start = rng.integers(0, len(values) - window)
        rows.append(values[start:start + window])
    return np.round(np.stack(rows), 2).astype(np.float32)


def write_bodies(work: Path, history: np.ndarray) -> dict:
    n, w = history.shape
    rounded = [round(float(v), 2) for v in history.ravel()]
    json_body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [n, w], "data": rounded}]})
    raw = np.ascontiguousarray(history, dtype="<f4").tobytes()
    header = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [n, w],
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    files = {"json": work / f"body-{n}.json", "binary": work / f"body-{n}.bin", "npy": work / f"history-{n}.npy"}
    files["json"].write_text(json_body)
    files["binary"].write_bytes(header + raw)
    np.save(files["npy"], history)
    return {**files, "header_length": len(header)}


# ---------------------------------------------------------------- in-process floor


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile of sorted values; NaN for none."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, int(np.ceil(q / 100 * len(sorted_values))) - 1))]


def time_floor(predict, windows: dict[int, np.ndarray], repeats: dict[int, int]) -> dict:
    out = {}
    for batch, history in windows.items():
        x = history.astype(np.float64)
        for _ in range(3):
            predict(x)
        times = []
        for _ in range(repeats[batch]):
            t0 = time.perf_counter()
            predict(x)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        out[batch] = {"repeats": len(times), "median_ms": float(np.median(times)),
                      "p99_ms": percentile(times, 99),
                      "us_per_series": float(np.median(times)) * 1000 / batch}
    return out


# ---------------------------------------------------------------- servers


def start(server: Server, logs: Path) -> subprocess.Popen:
    log_file = (logs / f"{server.name}.log").open("wb")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), str(BENCH)]),
           **server.env}
    proc = subprocess.Popen(server.cmd, cwd=server.cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_path = logs / f"{server.name}.log"  # type: ignore[attr-defined]
    deadline = time.time() + 240
    path = f"/v2/models/{server.model_name}/ready"
    started = time.perf_counter()
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {proc.returncode}; see {proc.log_path}:\n"
                               + proc.log_path.read_text()[-3000:])
        try:
            status, _, _ = http_request(server.http_port, "GET", path, None, {}, timeout=2)
            if status == 200:
                proc.ready_s = time.perf_counter() - started  # type: ignore[attr-defined]
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{server.name} not ready after 240 s; see {proc.log_path}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (its workers)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def http_request(port: int, method: str, path: str, body: bytes | None, headers: dict, timeout: float = 60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def decode_rest(headers: dict, body: bytes) -> dict:
    lowered = {k.lower(): v for k, v in headers.items()}
    header_len = lowered.get("inference-header-content-length")
    if header_len is None:
        doc = json.loads(body)
        raw = b""
    else:
        doc = json.loads(body[: int(header_len)])
        raw = body[int(header_len):]
    out, offset = {}, 0
    for o in doc.get("outputs", []):
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            data = np.frombuffer(raw[offset: offset + size], dtype="<f4")
            offset += size
        else:
            data = np.asarray(o["data"], dtype=np.float32).ravel()
        out[o["name"]] = {"datatype": o.get("datatype"), "shape": list(o.get("shape", [])), "data": data,
                          "binary": size is not None}
    return out


def check_outputs(outputs: dict, expected: np.ndarray, names: list[str]) -> str | None:
    """None when the reply holds every quantile with the expected shape and values, else what is wrong."""
    if sorted(outputs) != sorted(names):
        return f"outputs {sorted(outputs)} != {sorted(names)}"
    for qi, name in enumerate(names):
        o = outputs[name]
        if o["shape"] != list(expected[qi].shape):
            return f"{name} shape {o['shape']} != {list(expected[qi].shape)}"
        got = np.asarray(o["data"], dtype=np.float32).reshape(expected[qi].shape)
        scale = float(np.abs(expected[qi]).max()) or 1.0
        if not np.allclose(got, expected[qi], rtol=1e-4, atol=1e-4 * scale):
            return f"{name} differs from the in-process forecast by up to {np.abs(got - expected[qi]).max():g}"
    return None


def verify(server: Server, protocol: str, bodies: dict, expected: dict, names: list[str]) -> dict:
    """One request per batch size; returns {"ok": bool, "detail": str, "binary_reply": bool,
    "grpc_reply_bytes": {batch: size of the gRPC reply message}}."""
    binary_reply = False
    reply_bytes: dict[int, int] = {}
    for batch, files in bodies.items():
        if protocol == "grpc":
            res = subprocess.run([sys.executable, str(BENCH / "grpc_load.py"), "--target", f"127.0.0.1:{server.grpc_port}",
                                  "--model", server.model_name, "--input", str(files["npy"]), "--verify"],
                                 capture_output=True, text=True, timeout=300)
            if res.returncode != 0:
                return {"ok": False, "detail": f"grpc client failed: {res.stderr[-500:]}"}
            reply = json.loads(res.stdout.strip().splitlines()[-1])
            if not reply["ok"]:
                return {"ok": False, "detail": f"batch {batch}: gRPC {reply['code']}: {reply['details'][:200]}"}
            outputs = reply["outputs"]
            reply_bytes[batch] = reply["reply_bytes"]
        else:
            if protocol == "rest_json":
                body, headers = files["json"].read_bytes(), {"Content-Type": "application/json"}
            else:
                body = files["binary"].read_bytes()
                headers = {"Content-Type": "application/octet-stream",
                           "Inference-Header-Content-Length": str(files["header_length"])}
            status, resp_headers, resp_body = http_request(server.http_port, "POST",
                                                           f"/v2/models/{server.model_name}/infer", body, headers)
            if status != 200:
                return {"ok": False, "detail": f"batch {batch}: HTTP {status}: {resp_body[:200]!r}"}
            try:
                outputs = decode_rest(resp_headers, resp_body)
            except (ValueError, KeyError) as exc:
                return {"ok": False, "detail": f"batch {batch}: undecodable reply: {exc}"}
            binary_reply = binary_reply or any(o["binary"] for o in outputs.values())
        problem = check_outputs(outputs, expected[batch], names)
        if problem:
            return {"ok": False, "detail": f"batch {batch}: {problem}"}
    return {"ok": True, "detail": "", "binary_reply": binary_reply, "grpc_reply_bytes": reply_bytes}


# ---------------------------------------------------------------- load


def run_wrk(wrk: str, url: str, body_file: Path, content_type: str, header_length: int | None,
            concurrency: int, duration: float, warmup: float) -> dict:
    env = {**os.environ, "BENCH_BODY": str(body_file), "BENCH_CONTENT_TYPE": content_type,
           "BENCH_HEADER_LENGTH": str(header_length or "")}
    base = [wrk, "-t", str(min(2, concurrency)), "-c", str(concurrency), "--timeout", "60s",
            "-s", str(BENCH / "wrk_post.lua")]
    if warmup > 0:  # wrk takes whole seconds
        subprocess.run(base + ["-d", f"{max(1, round(warmup))}s", url], env=env, capture_output=True, check=True)
    res = subprocess.run(base + ["-d", f"{max(1, round(duration))}s", url], env=env, capture_output=True, text=True, check=True)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {res.stdout[-500:]} {res.stderr[-500:]}")
    r = json.loads(line[len("BENCH_RESULT "):])
    seconds = r["duration_us"] / 1e6
    errors = r["non2xx"] + r["socket_errors"] + r["timeouts"]
    return {"requests": r["requests"], "errors": errors, "non2xx": r["non2xx"],
            "rps": (r["requests"] - r["non2xx"]) / seconds if seconds else 0.0,
            "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
            "max_ms": r["max_us"] / 1000, "client": "wrk"}


def run_h2load(h2load: str, server: Server, npy: Path, reply_bytes: int, concurrency: int, duration: float,
               warmup: float, work: Path) -> dict:
    """gRPC unary calls from h2load (nghttp2's HTTP/2 load generator, C++ like wrk): C connections with
    one call in flight each, as wrk does for REST. h2load knows HTTP status, not grpc-status: a call
    counts as a success when its reply message came back, from the DATA bytes received (a failed call
    is a trailers-only reply with none); the servers were checked for correct answers beforehand."""
    frame = work / f"grpc-{server.model_name}-{npy.stem}.bin"
    if not frame.exists():
        subprocess.run([sys.executable, str(BENCH / "grpc_load.py"), "--target", "-", "--model", server.model_name,
                        "--input", str(npy), "--frame", str(frame)], check=True)
    requests_log = work / "h2load-requests.tsv"
    requests_log.unlink(missing_ok=True)  # h2load appends
    cmd = [h2load, "-c", str(concurrency), "-m", "1", "-t", str(min(2, concurrency)), "-D", str(max(1, round(duration))),
           "-d", str(frame), "-H", "content-type: application/grpc", "-H", "te: trailers",
           f"--log-file={requests_log}",
           f"http://127.0.0.1:{server.grpc_port}/inference.GRPCInferenceService/ModelInfer"]
    if warmup > 0:
        cmd[1:1] = [f"--warm-up-time={max(1, round(warmup))}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 300)
    out = res.stdout
    if res.returncode != 0 or "finished in" not in out:
        raise RuntimeError(f"h2load failed: {out[-800:]} {res.stderr[-500:]}")
    # not "finished in", which counts the warm-up too: in timed mode (-D) h2load measures for -D seconds
    seconds = max(1, round(duration))
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    data = int(re.search(r"\((\d+)\) data", out).group(1))
    answered = min(done, round(data / (reply_bytes + 5)))  # + the 5-byte gRPC message prefix
    times = sorted(int(line.split("\t")[2]) / 1000 for line in requests_log.read_text().splitlines() if line)
    return {"requests": done, "errors": done - answered, "non2xx": done - answered, "rps": answered / seconds,
            "p50_ms": percentile(times, 50), "p90_ms": percentile(times, 90), "p99_ms": percentile(times, 99),
            "max_ms": times[-1] if times else float("nan"),
            "client": "h2load"}


def run_grpc(server: Server, npy: Path, concurrency: int, duration: float, warmup: float) -> dict:
    res = subprocess.run([sys.executable, str(BENCH / "grpc_load.py"), "--target", f"127.0.0.1:{server.grpc_port}",
                          "--model", server.model_name, "--input", str(npy), "--concurrency", str(concurrency),
                          "--duration", str(duration), "--warmup", str(warmup)],
                         capture_output=True, text=True, timeout=duration + warmup + 300)
    if res.returncode != 0:
        raise RuntimeError(f"grpc_load failed: {res.stderr[-1000:]}")
    r = json.loads(res.stdout.strip().splitlines()[-1])
    return {"requests": r["requests"], "errors": r["errors"], "non2xx": r["errors"], "rps": r["rps"],
            "p50_ms": r["p50_ms"], "p90_ms": r["p90_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
            "client": "grpc_load.py", "client_cpu_s": r["client_cpu_s"], "error_codes": r["error_codes"],
            "client_cpu_pct": 100 * r["client_cpu_s"] / r["duration_s"] if r["duration_s"] else None}


# ---------------------------------------------------------------- report


def machine_info(mlserver_bin: Path | None) -> dict:
    cpu = "unknown"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {"python": platform.python_version()}
    for dist in ("kserve", "scikit-learn", "numpy", "grpcio"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if mlserver_bin:
        res = subprocess.run([str(mlserver_bin / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('mlserver'), m.version('uvloop'))"],
                             capture_output=True, text=True)
        if res.returncode == 0:
            versions["mlserver"], versions["mlserver_uvloop"] = res.stdout.split()
    wrk_v = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    versions["wrk"] = (wrk_v.stdout or wrk_v.stderr).split("[")[0].replace("wrk", "").strip()
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "versions": versions,
            "git": loadgen.git_commit()}


def fmt(v, digits=1) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}" if abs(v) >= 10 else f"{v:.{digits + 1}f}"
    return str(v)


def find(rows, server, protocol, scenario):
    for r in rows:
        if r["server"] == server and r["protocol"] == protocol and r["scenario"] == scenario and r.get("rps") is not None:
            return r
    return None


def target_checks(rows: list[dict], me: str = "perf-predictor") -> list[tuple[str, bool | None, str]]:
    checks = []

    def add(name, ok, detail):
        checks.append((name, ok, detail))

    for proto in ("rest_json", "rest_binary"):
        r = find(rows, me, proto, "single_c1")
        add(f"single series {proto} c=1: p99 <= 5 ms", None if r is None else (r["p99_ms"] <= 5 and r["errors"] == 0),
            "no row" if r is None else f"p99 {r['p99_ms']:.2f} ms")
    for proto in ("rest_json", "grpc"):
        mine = find(rows, me, proto, "single_c16")
        for other, factor in (("mlserver-reference", 10), ("mlserver", 3)):
            theirs = find(rows, other, proto, "single_c16")
            if mine is None or theirs is None or not theirs["rps"]:
                add(f"single series {proto} c=16: >= {factor}x {other}", None, "missing row")
                continue
            ratio = mine["rps"] / theirs["rps"]
            add(f"single series {proto} c=16: >= {factor}x {other}", ratio >= factor and mine["errors"] == 0,
                f"{mine['rps']:.0f} vs {theirs['rps']:.1f} req/s = {ratio:.1f}x")
    # MLServer's default (parallel_workers=1) is two processes: its server and one inference worker
    for proto in ("rest_json", "grpc"):
        mine, theirs = find(rows, f"{me}-w2", proto, "single_c16"), find(rows, "mlserver", proto, "single_c16")
        if mine and theirs and theirs["rps"]:
            ratio = mine["rps"] / theirs["rps"]
            add(f"single series {proto} c=16, 2 workers (as many processes as MLServer's default): >= 3x mlserver",
                ratio >= 3 and mine["errors"] == 0, f"{mine['rps']:.0f} vs {theirs['rps']:.1f} req/s = {ratio:.1f}x")
    for proto in PROTOCOLS:
        r = find(rows, me, proto, "batch1000_c1")
        add(f"1000 series in one request {proto}: p50 <= 100 ms", None if r is None else (r["p50_ms"] <= 100 and r["errors"] == 0),
            "no row" if r is None else f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    for sc in SCENARIOS:
        g, j = find(rows, me, "grpc", sc.key), find(rows, me, "rest_json", sc.key)
        if g and j:
            add(f"gRPC >= REST JSON ({sc.label})", g["rps"] >= j["rps"], f"{g['rps']:.1f} vs {j['rps']:.1f} req/s")
    errs = sum(r.get("errors") or 0 for r in rows if r["server"] == me)
    add(f"{me}: no failed requests", errs == 0, f"{errs} errors")
    return checks


def write_report(path_md: Path, path_json: Path, result: dict) -> str:
    text = render(result)
    path_md.parent.mkdir(parents=True, exist_ok=True)
    path_md.write_text(text)
    path_json.write_text(json.dumps(result, indent=2, default=float) + "\n")
    return text


def render(result: dict, level: int = 1) -> str:
    """The run as markdown: its machine and command, servers, the table, the floor, the target checks."""
    m = result["machine"]
    h = "#" * level
    lines = [f"{h} Serving benchmark ({result['mode']} run)", "",
             f"{result['finished_at']} · git {m['git']} · {m['nproc']} cores ({m['cpu']}) · load average at start "
             f"{' / '.join(f'{x:.1f}' for x in result['loadavg_start'])}, at end {' / '.join(f'{x:.1f}' for x in result['loadavg_end'])} · "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), "",
             f"Command: `{result['command']}` · {result['duration_s']:.0f} s per measurement after "
             f"{result['warmup_s']:.0f} s warm-up · REST load: wrk (c connections); gRPC load: "
             + ("h2load (c connections, one call in flight each)" if result.get("grpc_client") == "h2load"
                else "benchmarks/grpc_load.py (asyncio, a channel per caller; its CPU time in the last column)")
             + " · load generators share the 2 cores · every server alone, OMP_NUM_THREADS=1", "",
             f"{h}# Servers", ""]
    for s in result["servers"]:
        lines.append(f"- **{s['name']}**: {s['description']} (ready in {fmt(s.get('ready_s'))} s)")
    lines += ["", f"{h}# Throughput and latency", "",
              "| server | model | protocol | scenario | req/s | series/s | p50 ms | p99 ms | errors | gRPC client CPU % |",
              "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    servers = {s["name"]: i for i, s in enumerate(result["servers"])}
    scenarios = {sc.key: i for i, sc in enumerate(SCENARIOS)}
    order = lambda r: (servers.get(r["server"], len(servers)), PROTOCOLS.index(r["protocol"]),  # noqa: E731
                       scenarios.get(r["scenario"], -1))
    for r in sorted(result["rows"], key=order):  # measured scenario by scenario, shown protocol by protocol
        if r.get("rps") is None:
            lines.append(f"| {r['server']} | {r['model']} | {r['protocol']} | {r['label']} | – | – | – | – | {r.get('note', '')} | |")
        else:
            lines.append(f"| {r['server']} | {r['model']} | {r['protocol']} | {r['label']} | {fmt(r['rps'])} | "
                         f"{fmt(r['rps'] * r['batch'])} | {fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {r['errors']} | "
                         f"{fmt(r.get('client_cpu_pct'), 0)} |")
    lines += ["", f"{h}# In-process featurize + predict floor (one thread)", "",
              "| model | batch | median ms | p99 ms | µs per series |", "|---|---:|---:|---:|---:|"]
    for model, per_batch in result["floor"].items():
        for batch, t in per_batch.items():
            lines.append(f"| {model} | {batch} | {fmt(t['median_ms'], 2)} | {fmt(t['p99_ms'], 2)} | {fmt(t['us_per_series'])} |")
    lines += ["", f"{h}# Targets", ""]
    for name, ok, detail in result["checks"]:
        lines.append(f"- {'PASS' if ok else ('FAIL' if ok is False else 'N/A')}: {name} — {detail}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def build_servers(names: list[str], model_dir: Path, ref_path: Path, mlserver_bin: Path | None, work: Path,
                  workers: list[int]) -> list[Server]:
    servers = []
    py = sys.executable
    for name in names:
        if name == "perf-predictor":
            for n in workers:
                hp, gp = free_port(), free_port()
                cmd = [py, "-m", "predictor", "--model_dir", str(model_dir), "--http_port", str(hp), "--grpc_port", str(gp)]
                label = name
                if n != 1:
                    cmd += ["--workers", str(n)]
                    label = f"{name}-w{n}"
                servers.append(Server(label, "project", "perf-predictor", cmd, hp, gp,
                                      description=f"`python -m predictor` ({n} worker{'s' if n > 1 else ''}, defaults otherwise)"))
        elif name == "perf-predictor-grpcio":  # the fallback gRPC server, for comparison
            hp, gp = free_port(), free_port()
            cmd = [py, "-m", "predictor", "--model_dir", str(model_dir), "--http_port", str(hp), "--grpc_port", str(gp),
                   "--grpc_front", "kserve"]
            servers.append(Server(name, "project", "perf-predictor", cmd, hp, gp, protocols=("grpc",),
                                  description="`python -m predictor --grpc_front kserve` (1 worker): gRPC served by "
                                  "KServe's grpcio server instead of the native one; gRPC rows only"))
        elif name in ("kserve-minimal", "kserve-minimal-reference"):
            hp, gp = free_port(), free_port()
            ref = name.endswith("reference")
            cmd = [py, str(BENCH / "servers" / "kserve_minimal.py"), "--model_name", "reference" if ref else "perf-predictor",
                   "--http_port", str(hp), "--grpc_port", str(gp)]
            cmd += ["--reference", str(ref_path)] if ref else ["--model_dir", str(model_dir)]
            servers.append(Server(name, "reference" if ref else "project", "reference" if ref else "perf-predictor",
                                  cmd, hp, gp, description="minimal sync `kserve.Model` on `kserve.ModelServer` "
                                  "(benchmarks/servers/kserve_minimal.py)"))
        elif name in ("mlserver", "mlserver-reference"):
            if mlserver_bin is None:
                raise RuntimeError("MLServer venv missing")
            ref = name.endswith("reference")
            hp, gp, mp = free_port(), free_port(), free_port()
            model_name = "reference" if ref else "perf-predictor"
            repo = work / f"mlserver-{model_name}"
            (repo / model_name).mkdir(parents=True, exist_ok=True)
            (repo / "settings.json").write_text(json.dumps({
                "host": "127.0.0.1", "http_port": hp, "grpc_port": gp, "metrics_port": mp, "debug": False}))
            (repo / model_name / "model-settings.json").write_text(json.dumps({
                "name": model_name, "implementation": "mlserver_runtime.ForecastRuntime",
                "parameters": {"uri": str(ref_path if ref else model_dir),
                               "extra": {"kind": "reference" if ref else "project"}}}))
            env = {"PYTHONPATH": os.pathsep.join([str(BENCH / "servers"), str(REPO), str(BENCH)])}
            servers.append(Server(name, "reference" if ref else "project", model_name,
                                  [str(mlserver_bin / "mlserver"), "start", str(repo)], hp, gp, env=env, cwd=repo,
                                  protocols=("rest_json", "rest_binary", "grpc"),
                                  unsupported={"rest_binary": "MLServer has no REST binary tensor extension"},
                                  description="MLServer 1.7.1 with a minimal custom `MLModel` runtime "
                                  "(benchmarks/servers/mlserver_runtime.py), default settings (parallel_workers=1)"))
        else:
            raise SystemExit(f"unknown server {name}")
    return servers


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s per measurement, 1 s warm-up, no batch256 c=4")
    ap.add_argument("--model_dir", type=Path, help="model directory to serve (default: train .cache/bench/model)")
    ap.add_argument("--retrain", action="store_true", help="retrain .cache/bench/model even if it loads")
    ap.add_argument("--work_dir", type=Path, default=REPO / ".cache" / "bench")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="where latest.md/latest.json go")
    ap.add_argument("--servers", default="perf-predictor,perf-predictor-grpcio,kserve-minimal,mlserver,mlserver-reference",
                    help="comma-separated; also: kserve-minimal-reference")
    ap.add_argument("--workers", default="1,2", help="perf-predictor --workers variants, e.g. 1 or 1,2")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--scenarios", help="comma-separated subset of: " + ",".join(s.key for s in SCENARIOS))
    ap.add_argument("--duration", type=float, help="seconds per measurement (default 10, quick 3)")
    ap.add_argument("--warmup", type=float, help="seconds of warm-up load before each (default 3, quick 1)")
    ap.add_argument("--report-from", type=Path, help="rewrite latest.md/.json from this earlier latest.json")
    ap.add_argument("--grpc-client", choices=["h2load", "python"], default="h2load",
                    help="gRPC load generator: h2load (C++, like wrk for REST) or benchmarks/grpc_load.py")
    ap.add_argument("--no-install", action="store_true", help="do not apt-get wrk or create the MLServer venv")
    args = ap.parse_args()
    if args.report_from:  # recompute the checks and the markdown of an earlier run
        result = json.loads(args.report_from.read_text())
        result["checks"] = target_checks(result["rows"])
        result["checks_json"] = [{"target": n, "pass": ok, "detail": d} for n, ok, d in result["checks"]]
        print(write_report(args.out / "latest.md", args.out / "latest.json", result))
        return 0
    duration = args.duration or (3.0 if args.quick else 10.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 3.0)
    wanted = args.scenarios.split(",") if args.scenarios else [s.key for s in SCENARIOS
                                                               if not (args.quick and s.key in QUICK_SKIP)]
    scenarios = [s for s in SCENARIOS if s.key in wanted]
    protocols = [p for p in PROTOCOLS if p in args.protocols.split(",")]
    server_names = [s for s in args.servers.split(",") if s]

    loadavg_start = os.getloadavg()
    wrk = ensure_tool("wrk", "wrk", not args.no_install)
    h2load = ensure_tool("h2load", "nghttp2-client", not args.no_install) if args.grpc_client == "h2load" else None
    work = args.work_dir
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    mlserver_bin = None
    if any(s.startswith("mlserver") for s in server_names):
        mlserver_bin = ensure_mlserver_venv() if not args.no_install else MLSERVER_VENV / "bin"
    model_dir = ensure_model(args.model_dir, work, args.retrain).resolve()
    forecaster, card = artifact.load(model_dir)
    window, horizon, names = int(card["window"]), int(card["horizon"]), list(card["output_names"])
    ref_path = reference_model.ensure(work / "reference.pkl", log=log, window=window, horizon=horizon,
                                      quantiles=tuple(card["quantiles"]))
    reference = reference_model.load(ref_path)
    if reference.output_names != names:
        raise SystemExit(f"reference outputs {reference.output_names} != model outputs {names}")

    histories = {b: workload(window, b, seed=1000 + b) for b in BATCHES}
    bodies = {b: write_bodies(work, h) for b, h in histories.items()}
    expected = {"project": {b: forecaster.predict(h.astype(np.float64)) for b, h in histories.items()},
                "reference": {b: reference.predict(h.astype(np.float64)) for b, h in histories.items()}}

    log("timing the in-process floor")
    repeats = {1: 50 if args.quick else 200, 256: 10 if args.quick else 30, 1000: 5 if args.quick else 10}
    floor = {f"perf-predictor model ({card.get('name', '?')} {card.get('version', '?')})":
             time_floor(forecaster.predict, histories, repeats),
             f"reference 36-model ({reference.n_trees} trees)": time_floor(reference.predict, histories,
                                                                         {1: repeats[1] // 2, 256: 5, 1000: 3})}
    for model, per_batch in floor.items():
        log(f"floor {model}: " + ", ".join(f"b{b} {t['median_ms']:.2f} ms" for b, t in per_batch.items()))

    servers = build_servers(server_names, model_dir, ref_path, mlserver_bin, work,
                            [int(n) for n in args.workers.split(",")])
    rows, server_info = [], []
    for server in servers:
        log(f"starting {server.name}")
        proc = start(server, logs)
        info = {"name": server.name, "model": server.model, "description": server.description,
                "ready_s": getattr(proc, "ready_s", None), "cmd": server.cmd}
        server_info.append(info)
        try:
            checks = {}
            for protocol in protocols:
                if protocol not in server.protocols:
                    continue
                check = verify(server, protocol, bodies, expected[server.model], names)
                if check["ok"]:
                    checks[protocol] = check
                elif protocol in server.unsupported:
                    log(f"{server.name} {protocol}: unsupported ({check['detail'][:120]})")
                    rows.append({"server": server.name, "model": server.model, "protocol": protocol,
                                 "scenario": "all", "label": "all", "batch": None, "concurrency": None,
                                 "rps": None, "note": f"unsupported: {server.unsupported[protocol]}",
                                 "probe": check["detail"][:300]})
                else:
                    raise RuntimeError(f"{server.name} {protocol} answered wrongly: {check['detail']}")
            # scenario by scenario, every protocol in turn: the rows compared with each other (gRPC
            # against REST JSON) are measured within a minute, not minutes apart on a drifting machine
            for sc in scenarios:
                files = bodies[sc.batch]
                for protocol, check in checks.items():
                    if protocol == "grpc":
                        if h2load:
                            r = run_h2load(h2load, server, files["npy"], check["grpc_reply_bytes"][sc.batch],
                                           sc.concurrency, duration, warmup, work)
                        else:
                            r = run_grpc(server, files["npy"], sc.concurrency, duration, warmup)
                    else:
                        url = f"http://127.0.0.1:{server.http_port}/v2/models/{server.model_name}/infer"
                        binary = protocol == "rest_binary"
                        r = run_wrk(wrk, url, files["binary" if binary else "json"],
                                    "application/octet-stream" if binary else "application/json",
                                    files["header_length"] if binary else None, sc.concurrency, duration, warmup)
                        r["binary_reply"] = check.get("binary_reply", False)
                    row = {"server": server.name, "model": server.model, "protocol": protocol, "scenario": sc.key,
                           "label": sc.label, "batch": sc.batch, "concurrency": sc.concurrency, **r}
                    rows.append(row)
                    log(f"{server.name:>20} {protocol:<11} {sc.label:<17} {r['rps']:8.1f} req/s  "
                        f"p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  errors {r['errors']}")
                    if proc.poll() is not None:
                        raise RuntimeError(f"{server.name} died during the load; see {proc.log_path}")
        finally:
            stop(proc)

    result = {"mode": "quick" if args.quick else "full", "grpc_client": args.grpc_client, "command": " ".join(["benchmarks/run.py"] + sys.argv[1:]),
              "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "duration_s": duration, "warmup_s": warmup, "machine": machine_info(mlserver_bin),
              "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(), "model_dir": str(model_dir),
              "model_card": {k: card.get(k) for k in ("name", "version", "window", "horizon", "quantiles")},
              "servers": server_info, "rows": rows, "floor": floor}
    result["checks"] = target_checks(rows)
    result["checks_json"] = [{"target": n, "pass": ok, "detail": d} for n, ok, d in result["checks"]]
    text = write_report(args.out / "latest.md", args.out / "latest.json", result)
    print(text)
    log(f"wrote {args.out / 'latest.md'} and latest.json in {time.perf_counter() - T0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
