"""Data sources. Each returns a list of `Series` on a regular grid; see `base` for the gap policy.

One loader interface for the CLIs: `add_arguments(parser)` declares every source's options and
`load(args)` returns (series, description) from whichever source the options select:

- `--data PATH` (repeatable): CSV files (`csv_files`);
- `--prometheus-url URL --query PROMQL --start T --end T --step 5m`: a Prometheus server (`prometheus`);
- neither: the built-in synthetic workload (`synthetic`).
"""
from __future__ import annotations

import argparse

from .base import Series, regularize

__all__ = ["Series", "regularize", "add_arguments", "load"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data source (default: the built-in synthetic workload)")
    group.add_argument("--data", action="append",
                       help="a CSV file or a directory of CSVs (timestamp,value); repeat for several")
    group.add_argument("--prometheus-url", help="base URL of a Prometheus server, e.g. http://prometheus:9090")
    group.add_argument("--query", help="PromQL expression; one series per returned label set")
    group.add_argument("--start", help="range start: RFC 3339, Unix seconds, or relative like -14d")
    group.add_argument("--end", default="now", help="range end (default now)")
    group.add_argument("--step", default="5m", help="resolution, e.g. 5m or 300 (default 5m)")


def load(args: argparse.Namespace) -> tuple[list[Series], str]:
    if args.data and args.prometheus_url:
        raise ValueError("give either --data or --prometheus-url, not both")
    if args.prometheus_url:
        from . import prometheus

        if not args.query or not args.start:
            raise ValueError("--prometheus-url needs --query and --start")
        series = prometheus.load(args.prometheus_url, args.query, args.start, args.end, args.step)
        return series, f"prometheus:{args.prometheus_url} query={args.query} start={args.start} end={args.end} step={args.step}"
    if args.data:
        from . import csv_files

        return [s for path in args.data for s in csv_files.load(path)], "csv:" + ",".join(args.data)
    from . import synthetic

    return synthetic.generate(), "synthetic"
