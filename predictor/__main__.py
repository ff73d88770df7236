"""`python -m predictor`: serve a model directory with KServe's ModelServer and KServe's own flags.

Worker processes (`--workers N`) import this module too, so it does nothing at import time.
"""
from __future__ import annotations

import argparse
import atexit
import os
import shutil
import sys
import tempfile

DEFAULT_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts the model
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DIGEST_ENV = "PERF_PREDICTOR_MODEL_DIGEST"
GRACE_PERIOD_S = 30  # KServe's default: in-flight requests get this long after SIGTERM


def prepare_process_environment() -> None:
    """Before numpy, sklearn or prometheus_client are imported; workers inherit the result."""
    # One OpenMP/BLAS thread per process unless the operator says otherwise: the forecast thread
    # must not fight the event loop, or other workers, for the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    # prometheus-client multiprocess mode, in a directory that starts empty.
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    else:
        os.environ[MULTIPROC_ENV] = path = tempfile.mkdtemp(prefix="perf-predictor-metrics-")
        atexit.register(shutil.rmtree, path, True)


def env_flag(name: str, default: str) -> str:
    return os.environ.get(name, default)


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    from kserve import model_server

    from . import auth, logs
    from .batching import FORECAST_NICE

    parser = argparse.ArgumentParser(prog="python -m predictor", parents=[model_server.parser])
    parser.add_argument("--model_dir", default=DEFAULT_MODEL_DIR, help="model directory to serve")
    parser.add_argument("--log_level", default=env_flag(logs.LEVEL_ENV, "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper,
                        help=f"level of the server's own logs (env {logs.LEVEL_ENV})")
    parser.add_argument("--log_format", default=env_flag(logs.FORMAT_ENV, "text"), choices=["text", "json"],
                        help=f"text, or one JSON object per line (env {logs.FORMAT_ENV})")
    parser.add_argument("--request_log", default=env_flag(logs.REQUEST_LOG_ENV, "false"),
                        type=lambda v: v.lower() in ("1", "true", "yes"),
                        help=f"log a line per request: access and latency lines (env {logs.REQUEST_LOG_ENV})")
    parser.add_argument("--max_batch_delay_ms", type=float, default=0.0,
                        help="hold a micro-batch open this long for more requests (0: batch only what "
                             "arrives while the previous predict runs)")
    parser.add_argument("--max_batch_series", type=int, default=4096,
                        help="most series per micro-batch (a larger single request still goes whole)")
    parser.add_argument("--max_request_series", type=int, default=None,
                        help="most series one request may hold, on every protocol (default: 8 x --max_batch_series)")
    parser.add_argument("--max_body_bytes", type=int, default=None,
                        help="largest REST request body, answered 413 beyond (default: --max_batch_series series "
                             "of W numbers written as JSON, 26 bytes each, plus 64 KiB: docs/limits.md)")
    parser.add_argument("--inline_max_series", type=int, default=32,
                        help="REST batches of at most this many series are predicted on the event loop "
                             "instead of the forecast thread (0: never)")
    parser.add_argument("--max_requests_held", type=non_negative_int,
                        default=env_flag("PERF_PREDICTOR_MAX_REQUESTS_HELD", "64"),
                        help="inference requests one process holds at once (read, queued, predicted); past it a "
                             "request is refused at once with REST 503 + Retry-After or gRPC UNAVAILABLE; 0: no "
                             "bound (env PERF_PREDICTOR_MAX_REQUESTS_HELD)")
    parser.add_argument("--header_timeout", type=float, default=10.0,
                        help="seconds a REST connection may take to send a request's headers (from opening, or "
                             "from the request's first byte); then 408 and closed")
    parser.add_argument("--body_timeout", type=float, default=60.0,
                        help="seconds a REST request's body may take to arrive after its headers; then 408 and closed")
    parser.add_argument("--max_connections", type=non_negative_int, default=None,
                        help="open REST connections per process; past it the one waiting longest for a request is "
                             "closed, or the new one's request gets 503 (default: 4096, or a quarter of the "
                             "file-descriptor limit if less)")
    parser.add_argument("--predict_threads", type=int, default=None,
                        help="threads one large batch may use (default: cores / workers)")
    parser.add_argument("--forecast_nice", type=int, choices=range(20), metavar="0-19",
                        default=env_flag("PERF_PREDICTOR_FORECAST_NICE", str(FORECAST_NICE)),
                        help="how far below the event loop predicts run on the CPU (nice): higher keeps refusals "
                             "fastest under overload, lower keeps accepted requests' latency tail shorter "
                             "(docs/design.md; env PERF_PREDICTOR_FORECAST_NICE)")
    parser.add_argument("--grpc_front", default=env_flag("PERF_PREDICTOR_GRPC_FRONT", "native"),
                        choices=["native", "kserve"],
                        help="what serves --grpc_port: libnghttp2 inside this process (predictor/grpc_server.py; "
                             "kserve where it was not built), or KServe's grpcio server (env PERF_PREDICTOR_GRPC_FRONT)")
    parser.add_argument("--drain_seconds", type=non_negative_int, default=env_flag("PERF_PREDICTOR_DRAIN_SECONDS", "2"),
                        help="on SIGTERM, keep serving this long after telling gRPC clients (HTTP/2 GOAWAY) to move, "
                             "so they go elsewhere before the server stops; native server (env "
                             "PERF_PREDICTOR_DRAIN_SECONDS)")
    parser.add_argument("--auth_token_file", default=env_flag(auth.TOKEN_FILE_ENV, "") or None,
                        help="bearer tokens, one per line (a mounted Secret; re-read when it changes): every call "
                             f"but --auth_open needs one (env {auth.TOKEN_FILE_ENV}; default: no authentication)")
    parser.add_argument("--auth_open", type=auth.parse_open, default=",".join(auth.OPENABLE),
                        help="with authentication on, what stays open: health,metrics (the default), one of them, "
                             "or '' for nothing")
    parser.add_argument("--enable_repository_api", action="store_true",
                        default=env_flag(auth.REPOSITORY_ENV, "false").lower() == "true",
                        help="serve KServe's model repository API (load/unload, REST and gRPC); needs "
                             f"--auth_token_file (env {auth.REPOSITORY_ENV})")
    parser.add_argument("--model_digest", default=env_flag(DIGEST_ENV, "") or None,
                        help="refuse to start unless the model directory's digest (python -m forecaster.digest "
                             f"DIR) is this sha256:<hex> (env {DIGEST_ENV})")
    parser.set_defaults(model_name="perf-predictor", enable_latency_logging=None)
    return parser


def use_uvloop(event_loop: str) -> None:
    """KServe runs a single process's servers under asyncio.run with the default loop, whatever
    --event-loop says (only its worker processes honour it); uvloop serves REST and gRPC faster."""
    if event_loop == "asyncio":
        return
    import asyncio

    import uvloop  # a dependency of ours, so "auto" always finds it

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())  # KServe asks for the current loop before asyncio.run


def main(argv: list[str] | None = None) -> int:
    prepare_process_environment()
    import logging

    from kserve import ModelServer, model_server
    from kserve import logging as kserve_logging

    from forecaster import digest
    from forecaster.artifact import ModelLoadError

    from . import auth, connections, grpc_infer, grpc_server, logs, rest, workers
    from .model import PerfPredictor

    log = logging.getLogger("perf_predictor")
    args, _ = build_parser().parse_known_args(argv)
    if args.configure_logging and not args.log_config_file:
        # KServe reads its module-level args when it starts worker processes: give them the same config.
        model_server.args.log_config_file = logs.write_config(args.log_level, args.log_format, args.request_log)
        atexit.register(os.remove, model_server.args.log_config_file)
        kserve_logging.configure_logging(model_server.args.log_config_file)
    latency_lines = args.request_log if args.enable_latency_logging is None else args.enable_latency_logging

    policy = auth.Policy(args.auth_token_file, args.auth_open, args.enable_repository_api, args.model_name)
    try:
        policy.check()
    except ValueError as exc:
        log.error("not started: %s", exc)
        return 2
    policy.export()  # worker processes read it from the environment
    if args.model_digest:
        try:
            expected, actual = digest.normalized(args.model_digest), digest.of_directory(args.model_dir)
        except (ValueError, OSError) as exc:
            log.error("model %s not loaded: no digest to check: %s", args.model_name, exc)
            return 1
        if actual != expected:
            log.error("model %s not loaded: %s has digest %s, not the expected %s", args.model_name,
                      args.model_dir, actual, expected)
            return 1
    threads = args.predict_threads or max(1, (os.cpu_count() or 1) // max(1, args.workers))
    model = PerfPredictor(args.model_name, args.model_dir, args.max_batch_delay_ms, args.max_batch_series, threads,
                          args.inline_max_series, args.max_request_series, args.max_body_bytes,
                          args.max_requests_held, args.forecast_nice)
    try:
        model.load()
    except ModelLoadError as exc:
        log.error("model %s not loaded from %s: %s", args.model_name, args.model_dir, exc)
        return 1
    native = args.grpc_front == "native"
    if args.enable_grpc and native and not grpc_server.available():
        log.warning("gRPC served by KServe's grpcio server: the native server is not available (%s)",
                    grpc_server.UNAVAILABLE_BECAUSE)
        native = False
    model_server.RESTServer = rest.RESTServer
    connections.limits = connections.Limits(args.header_timeout, args.body_timeout,
                                            args.max_connections or connections.default_max_connections())
    grpc_in_workers = args.enable_grpc and args.workers > 1
    if args.enable_grpc and native:
        try:  # bound here, so a taken port fails start-up clearly; workers bind their own (SO_REUSEPORT)
            sock = grpc_server.bind(args.grpc_port)
        except RuntimeError as exc:
            log.error("gRPC front not started: %s", exc)
            return 1
        if grpc_in_workers:
            sock.close()
        else:
            server = grpc_server.NativeGRPCServer(args.grpc_port, sock=sock, drain_s=args.drain_seconds,
                                                  grace_period=GRACE_PERIOD_S)
            model_server.GRPCServer = server.as_kserve_class()  # ModelServer builds and stops it
            grpc_server.drain_on_shutdown(server)
    elif args.enable_grpc and not grpc_in_workers:
        grpc_infer.use_forecast_servicer()  # KServe's gRPC server, in this process
    workers.install(workers.GRPCSettings(args.grpc_port, args.max_threads, GRACE_PERIOD_S, vars(args), native=native,
                                         drain_s=args.drain_seconds) if grpc_in_workers else None)
    use_uvloop(args.event_loop)
    ModelServer(http_port=args.http_port, grpc_port=args.grpc_port, workers=args.workers,
                enable_grpc=args.enable_grpc and not grpc_in_workers, grace_period=GRACE_PERIOD_S,
                enable_latency_logging=latency_lines).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
