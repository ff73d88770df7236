"""`python -m forecast_loop --config FILE`: validate the config (exit 2 on an error), serve /metrics, loop.

With `scaler.listen` (or --scaler-listen) it also serves KEDA's external scaler (forecast_loop.external_scaler).

SIGTERM or SIGINT ends the process at once with status 0: the iteration runs in a daemon thread, and
an unfinished iteration has nothing to lose (the next process starts a fresh one).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from .config import ConfigError, load, parse_listen
from .external_scaler import serve as serve_scaler
from .loop import ForecastLoop
from .publish import serve

logger = logging.getLogger("forecast_loop")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m forecast_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML config (docs/forecast-loop.md)")
    parser.add_argument("--listen", help="host:port for /metrics, overriding the config's listen (port 0: any)")
    parser.add_argument("--scaler-listen", help="host:port for the KEDA external scaler (gRPC), overriding the "
                        "config's scaler.listen (port 0: any); off unless one of them is set")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    parser.add_argument("--log_level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load(args.config)
        host, port = parse_listen(args.listen) if args.listen else (config.listen_host, config.listen_port)
        scaler_at = parse_listen(args.scaler_listen) if args.scaler_listen else config.scaler_listen
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{args.config}: ok, {len(config.targets)} target(s)")
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    loop = ForecastLoop(config)
    server = serve(loop.metrics, host, port)
    logger.info("serving /metrics on http://%s:%d/metrics; %d target(s) every %gs", host,
                server.server_port, len(config.targets), config.interval)
    scaler = None
    if scaler_at is not None:
        try:
            scaler, scaler_port = serve_scaler(loop, *scaler_at, clock=loop.clock)
        except OSError as exc:
            print(f"error: {exc}", file=sys.stderr)
            server.server_close()
            return 2
        logger.info("serving the KEDA external scaler on %s:%d", scaler_at[0], scaler_port)
    worker = threading.Thread(target=loop.run, args=(stop,), name="forecast-loop", daemon=True)
    worker.start()
    while not stop.wait(0.5):
        pass
    logger.info("stopping")
    worker.join(timeout=0.5)
    server.shutdown()
    server.server_close()
    if scaler is not None:
        scaler.stop(grace=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
