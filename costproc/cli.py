"""The `costproc` command: serve, check-config, demo, rules."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from costproc.config import Config, default_config_path, load_config
from costproc.errors import ConfigError, StartupError
from costproc.runtime import tune_gc

log = logging.getLogger("costproc")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="costproc", description="Cost per job from OpenTelemetry traces."
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument(
        "--config", help=f"config file (default: the bundled {default_config_path().name})"
    )
    serve.set_defaults(run=_serve)

    check = commands.add_parser(
        "check-config", help="validate a config file and report every problem"
    )
    check.add_argument("file")
    check.set_defaults(run=_check_config)

    demo = commands.add_parser(
        "demo", help="run the service on a synthetic workload with a live cost table"
    )
    demo.add_argument("--config", help="config file (default: the bundled one)")
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.add_argument("--rate", type=float, default=40.0, help="jobs per second to generate")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the workload")
    demo.set_defaults(run=_demo)

    rules = commands.add_parser(
        "rules", help="generate Prometheus recording and alerting rules from the budgets"
    )
    rules.add_argument("--config", help="config file (default: the bundled one)")
    rules.add_argument(
        "--scrape-job", default="costproc", help="Prometheus job name (prefix) of the targets"
    )
    rules.add_argument("--output", help="write the rule file here (default: stdout)")
    rules.set_defaults(run=_rules)
    return parser


def _check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {len(exc.problems)} problem(s):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    tables = ", ".join(f"{t.version}" for t in config.pricing.tables)
    count = len(config.pricing.tables)
    print(f"{args.file}: OK ({count} price table(s): {tables}; {config.pricing.currency})")
    return 0


def _load_or_report(path: str | None) -> Config | None:
    """The config, or None after printing every problem in it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    from costproc.service import Service

    config = _load_or_report(args.config)
    if config is None:
        return 1

    async def run() -> None:
        # Handlers first: a SIGTERM during start-up must still stop the service cleanly.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        service = Service(config)
        try:
            await service.start()
        except StartupError as exc:
            print(f"costproc: {exc}", file=sys.stderr)
            raise SystemExit(1) from exc
        tune_gc()
        for key, receiver in service.receivers:
            log.info("costproc serving %s on port %d", key, receiver.port)
        log.info(
            "costproc serving metrics on %s, health on %s",
            config.prometheus.endpoint,
            config.health.endpoint,
        )
        await stop.wait()
        log.info("shutting down: closing open jobs")
        await service.stop()

    asyncio.run(run())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from costproc.demo import run_demo

    config = _load_or_report(args.config)
    if config is None:
        return 1
    code: int = run_demo(config, duration=args.duration, rate=args.rate, seed=args.seed)
    return code


def _rules(args: argparse.Namespace) -> int:
    from costproc.rules import render_rules

    if not args.scrape_job:
        print("costproc rules: --scrape-job must not be empty", file=sys.stderr)
        return 2
    config = _load_or_report(args.config)
    if config is None:
        return 1
    text = render_rules(config, args.scrape_job, config_path=args.config)
    if args.output is None:
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
    return 0
