"""The ``streamproc`` command line.

``streamproc run`` runs the service; ``--local`` runs it against emulated AWS in this process with
a demo producer. ``streamproc produce`` writes demo transactions to a stream; ``streamproc rules``
lists and checks rule modules. Exit codes: 0 success, 1 rule errors, 2 configuration or usage
errors, 3 a service could not be reached.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, TextIO

from streamproc import __version__
from streamproc.config import Config, load_config
from streamproc.errors import ConfigError, RuleCompileError, StreamprocError, TransportError
from streamproc.metrics import Totals

log = logging.getLogger("streamproc")

EPILOG = """
examples:
  streamproc run --local --duration 60      emulated AWS, demo transactions, live alerts
  streamproc run --config streamproc.toml   production: real AWS, settings from the file
  streamproc kcl --config streamproc.toml   production, scaled out: the KCL daemon, leases
  streamproc produce --stream transactions --endpoint-url http://127.0.0.1:5000 --count 1000
  streamproc rules list rules/
  streamproc replay --rules rules/ --events sample.jsonl --output alerts.jsonl
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        code: int = args.handler(args)
        return code
    except RuleCompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except TransportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except StreamprocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamproc",
        description="Real-time rules over Kinesis streams, with alerts delivered once to "
        "EventBridge, SNS, SQS and DynamoDB.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"streamproc {__version__}")
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="log verbosity on stderr (default: warning)",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="consume the stream, evaluate rules, deliver alerts",
        description="Consume a Kinesis stream, evaluate the rules and deliver alerts to the "
        "enabled sinks, checkpointing only what the sinks acknowledged. Stops cleanly on "
        "Ctrl-C / SIGTERM or after --duration: sinks are drained and a final checkpoint written.",
        epilog="Settings come from --config (TOML; see streamproc.sample.toml) and "
        "STREAMPROC__SECTION__KEY environment variables.",
    )
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    run.add_argument(
        "--local",
        action="store_true",
        help="start emulated AWS (moto) in this process, create the stream, tables, bus, topic "
        "and queues, and run a demo producer",
    )
    run.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    run.add_argument(
        "--rate", type=float, default=500.0, metavar="N", help="--local: demo transactions/s (500)"
    )
    run.add_argument(
        "--count", type=int, metavar="N", help="--local: stop producing after N transactions"
    )
    run.add_argument("--seed", type=int, default=42, help="--local: demo data seed (42)")
    run.add_argument("--shards", type=int, default=4, help="--local: shards of the stream (4)")
    run.add_argument(
        "--summary-interval", type=float, default=2.0, metavar="S", help="live summary every S s"
    )
    run.add_argument("--quiet", action="store_true", help="no live summary, only the totals")
    run.set_defaults(handler=cmd_run)

    kcl = commands.add_parser(
        "kcl",
        help="production source: run the KCL MultiLangDaemon with our rules in each shard",
        description="Run the Kinesis Client Library's MultiLangDaemon (Java) with streamproc as "
        "its per-shard record processor. Every task started with the same kcl.application_name "
        "shares the shards through the KCL lease table in DynamoDB: add tasks to scale out; a "
        "dead task's shards move to the others. SIGTERM/Ctrl-C asks the daemon to drain and "
        "checkpoint every shard, then exits 0.",
        epilog="Needs Java 17+ and the KCL jars (tools/kcl/fetch-jars, or kcl.jars_dir / "
        "STREAMPROC_KCL_JARS). Settings: the [kcl] section of --config (see "
        "streamproc.sample.toml). The child processes log at WARNING to stderr "
        "(STREAMPROC_LOG_LEVEL); the daemon at INFO (KCL_LOG_LEVEL).",
    )
    kcl.add_argument("--config", metavar="FILE", help="TOML configuration file")
    kcl.add_argument(
        "--print-properties",
        action="store_true",
        help="print the daemon's properties file and exit (checks nothing else)",
    )
    kcl.add_argument(
        "--work-dir",
        metavar="DIR",
        help="where to write the properties and logback files (default: a new temp directory)",
    )
    kcl.set_defaults(handler=cmd_kcl)

    produce = commands.add_parser(
        "produce",
        help="write seeded demo transactions to a stream",
        description="Write seeded, realistic card transactions to a Kinesis stream (the same "
        "seed always gives the same transactions).",
    )
    produce.add_argument("--stream", required=True, help="stream name")
    produce.add_argument("--region", default="us-east-1", help="AWS region (us-east-1)")
    produce.add_argument(
        "--endpoint-url", help="endpoint for emulators, e.g. http://127.0.0.1:5000"
    )
    produce.add_argument("--count", type=int, default=1000, help="transactions to write (1000)")
    produce.add_argument("--rate", type=float, help="transactions per second (default: no limit)")
    produce.add_argument("--seed", type=int, default=42, help="data seed (42)")
    produce.add_argument(
        "--bad-every",
        type=int,
        default=0,
        metavar="N",
        help="make every Nth record invalid JSON (to exercise the dead-letter path)",
    )
    produce.set_defaults(handler=cmd_produce)

    replay_cmd = commands.add_parser(
        "replay",
        help="run rules over a JSON-lines file of records and write the alerts",
        description="Run the rules over a JSON-lines file of records as one shard (event time "
        "from the records; every window is closed at the end of the file) and write one alert "
        "per line. The same rules and the same file always give the same output, byte for byte.",
    )
    replay_cmd.add_argument(
        "--rules", action="append", required=True, metavar="PATH", help="rule file or directory"
    )
    replay_cmd.add_argument("--events", required=True, metavar="FILE", help="JSON-lines records")
    replay_cmd.add_argument(
        "--output", metavar="FILE", help="write alerts here (default: standard output)"
    )
    replay_cmd.add_argument(
        "--identity-field", default="tx_id", help="record field identifying a record (tx_id)"
    )
    replay_cmd.set_defaults(handler=cmd_replay)

    rules = commands.add_parser("rules", help="list or check rule modules")
    rules_commands = rules.add_subparsers(title="rules commands", metavar="COMMAND")
    for name, handler, text in (
        ("list", cmd_rules_list, "list the rules found in PATH (default: rules/)"),
        ("check", cmd_rules_check, "compile every rule in PATH; exit 1 on any error"),
        (
            "loop",
            cmd_rules_loop,
            "print the per-record loop a shard processor generates for the rules in PATH",
        ),
    ):
        sub = rules_commands.add_parser(name, help=text, description=text)
        sub.add_argument("paths", nargs="*", default=["rules"], metavar="PATH")
        sub.set_defaults(handler=handler)

    def rules_help(_args: argparse.Namespace) -> int:
        rules.print_help()
        return 2

    rules.set_defaults(handler=rules_help)
    return parser


# ----------------------------------------------------------------------------------- rules


def cmd_rules_list(args: argparse.Namespace) -> int:
    from streamproc.ruleset import load_rules

    ruleset = load_rules(args.paths)
    for rule in ruleset.rules:
        what = rule.condition_text or "python predicate"
        sinks = ", ".join(rule.sinks) or "all sinks"
        print(f"{rule.name} v{rule.version}  [{rule.severity}]  {what}")
        print(f"    key: {rule.key or '-'}  sinks: {sinks}  from {rule.origin}")
    for window_rule in ruleset.window_rules:
        sinks = ", ".join(window_rule.sinks) or "all sinks"
        sql = " ".join(window_rule.sql.split())
        print(f"{window_rule.name} v{window_rule.version}  [{window_rule.severity}]  {sql}")
        print(
            f"    window: {window_rule.window}  emit: {window_rule.emit}  "
            f"lateness: {window_rule.allowed_lateness_ms} ms  late: {window_rule.late}  "
            f"sinks: {sinks}  from {window_rule.origin}"
        )
    for spec in ruleset.stateful_rules:
        sinks = ", ".join(spec.sinks) or "all sinks"
        print(f"{spec.name} v{spec.version}  [{spec.kind}]  {spec.summary()}")
        print(f"    sinks: {sinks}  from {spec.origin}")
    print(f"{len(ruleset)} rule(s)")
    return 0


def cmd_rules_check(args: argparse.Namespace) -> int:
    from streamproc.ruleset import load_rules

    ruleset = load_rules(args.paths)
    print(f"ok: {len(ruleset)} rule(s) compiled from {', '.join(args.paths)}")
    return 0


def cmd_rules_loop(args: argparse.Namespace) -> int:
    from streamproc.processor import ShardProcessor
    from streamproc.ruleset import load_rules

    print(ShardProcessor(load_rules(args.paths)).loop_source(), end="")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from streamproc.replay import alert_line, replay
    from streamproc.ruleset import load_rules

    ruleset = load_rules(args.rules)
    try:
        events = open(args.events, "rb")  # noqa: SIM115 - closed below, streamed line by line
    except OSError as exc:
        raise ConfigError("--events", f"cannot read {args.events!r}: {exc.strerror}") from None
    with events:
        result = replay(ruleset, events, identity_field=args.identity_field)
    lines = b"".join(alert_line(a) for a in result.alerts)
    if args.output:
        with open(args.output, "wb") as out:
            out.write(lines)
    else:
        sys.stdout.buffer.write(lines)
        sys.stdout.flush()
    per_rule = ", ".join(f"{k} {v:,}" for k, v in result.per_rule().items()) or "none"
    print(
        f"replayed {result.records:,} records: {len(result.alerts):,} alerts ({per_rule}); "
        f"{len(result.dead_letters):,} refused",
        file=sys.stderr,
    )
    for letter in result.dead_letters[:20]:
        print(f"  line {letter.sequence_number}: {letter.reason}", file=sys.stderr)
    if len(result.dead_letters) > 20:
        print(f"  ... and {len(result.dead_letters) - 20} more", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------- produce


def cmd_kcl(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streamproc import kcl
    from streamproc.app import build_parts

    config = load_config(args.config)
    if args.print_properties:
        sys.stdout.write(
            kcl.properties(config, config_path=args.config, worker=kcl.worker_id(config))
        )
        return 0
    build_parts(config)  # rules and sinks fail here, once, rather than in every child
    work_dir = Path(args.work_dir) if args.work_dir else None
    return kcl.run_daemon(config, config_path=args.config, work_dir=work_dir)


def cmd_produce(args: argparse.Namespace) -> int:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from streamproc.demo import DemoSpec, Producer, encode, transactions
    from streamproc.emulators import LOCAL_CREDENTIALS

    session = boto3.session.Session()
    credentials: dict[str, str] = {}
    if args.endpoint_url and session.get_credentials() is None:
        credentials = LOCAL_CREDENTIALS  # emulators accept anything; spare the user the setup
    client = session.client(
        "kinesis", region_name=args.region, endpoint_url=args.endpoint_url, **credentials
    )
    try:
        client.describe_stream_summary(StreamName=args.stream)
    except (BotoCoreError, ClientError) as exc:
        raise TransportError(
            f"cannot use stream {args.stream!r}"
            f"{' at ' + args.endpoint_url if args.endpoint_url else ''}: {exc}",
            retryable=False,
        ) from None
    producer = Producer(client, args.stream, rate=args.rate)

    def records() -> Any:
        for n, tx in enumerate(transactions(DemoSpec(seed=args.seed), args.count), start=1):
            data, key = encode(tx)
            if args.bad_every and n % args.bad_every == 0:
                data = b"{not json" + data[:20]
            yield data, key

    started = time.monotonic()
    sent = producer.send(records(), progress=lambda n: _progress(f"sent {n:,}/{args.count:,}"))
    elapsed = time.monotonic() - started
    _progress("")
    print(f"sent {sent:,} transactions to {args.stream} in {elapsed:.1f}s")
    return 0


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text.ljust(60) + ("" if text else "\r"))
        sys.stderr.flush()


# ----------------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from streamproc.app import build_app

    config = load_config(args.config, validate=not args.local)
    moto = None
    resources = None
    producer_thread: threading.Thread | None = None
    stop_producing = threading.Event()
    out = sys.stdout
    if args.local:
        from streamproc.emulators import start_moto
        from streamproc.local import provision

        moto = start_moto()
        config, resources = provision(config, moto.endpoint_url, shards=args.shards)
        print(f"local AWS (moto) at {moto.endpoint_url}; stream {resources.stream!r}", file=out)
    try:
        app = build_app(config, local=args.local)
        if args.local and resources is not None:
            producer_thread = _start_demo_producer(resources, args, stop_producing)
        _describe(config, app.rule_names, app.metrics_url, out)
        summary = _Summary(out, quiet=args.quiet)
        _install_signal_handlers(app.runtime.stop)
        totals = app.runtime.run(
            duration=args.duration, on_tick=summary.tick, tick_interval=args.summary_interval
        )
        stop_producing.set()
        if producer_thread is not None:
            producer_thread.join(timeout=10)
        summary.final(totals)
        if resources is not None:
            from streamproc.local import destination_counts

            print("at the destinations (read back from the emulator):", file=out)
            for where, count in destination_counts(resources).items():
                print(f"  {where:<34} {count:>8,}", file=out)
            print(f"dead letters: {config.dead_letter.path}", file=out)
        return 0
    finally:
        stop_producing.set()
        if moto is not None:
            moto.stop()


def _start_demo_producer(
    resources: Any, args: argparse.Namespace, stop: threading.Event
) -> threading.Thread:
    from streamproc.demo import DemoSpec, Producer, encode, transactions

    producer = Producer(resources.client("kinesis"), resources.stream, rate=args.rate)
    spec = DemoSpec(seed=args.seed)

    def work() -> None:
        try:
            producer.send((encode(tx) for tx in transactions(spec, args.count)), stop=stop)
        except StreamprocError as exc:
            log.error("demo producer stopped: %s", exc)

    thread = threading.Thread(target=work, name="demo-producer", daemon=True)
    thread.start()
    return thread


def _describe(
    config: Config, rule_names: Sequence[str], metrics_url: str | None, out: TextIO
) -> None:
    print(f"rules: {', '.join(rule_names)}", file=out)
    print(f"sinks: {', '.join(config.enabled_sinks())}", file=out)
    if metrics_url:
        print(f"metrics: {metrics_url}", file=out)
    print("running; Ctrl-C stops cleanly (drain sinks, final checkpoint)", file=out)


def _install_signal_handlers(stop: Any) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.warning("signal %d: stopping (draining sinks, final checkpoint)", signum)
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


class _Summary:
    """Prints one line every tick and the totals at the end."""

    def __init__(self, out: TextIO, *, quiet: bool) -> None:
        self.out = out
        self.quiet = quiet
        self.started = time.monotonic()
        self.last_time = self.started
        self.last_read = 0

    def tick(self, totals: Totals) -> None:
        now = time.monotonic()
        rate = (totals.records_read - self.last_read) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_read = now, totals.records_read
        if self.quiet:
            return
        rules = " ".join(f"{k}={v:,}" for k, v in sorted(totals.rule_matches.items())) or "-"
        sinks = " ".join(
            f"{name}={sum(c.values()):,}" for name, c in sorted(totals.sink_outcomes.items())
        )
        lag = max(totals.millis_behind_latest.values(), default=0)
        print(
            f"[{now - self.started:6.1f}s] read {totals.records_read:,} ({rate:,.0f}/s) | "
            f"alerts {rules} | delivered {sinks or '-'} | pending {totals.pending_deliveries} | "
            f"dead letters {totals.records_dead_lettered + totals.alerts_dead_lettered} | "
            f"behind {lag} ms",
            file=self.out,
            flush=True,
        )

    def final(self, totals: Totals) -> None:
        elapsed = time.monotonic() - self.started
        if totals.undecided_at_stop == 0 and not totals.checkpoint_failed_at_stop:
            status = "every alert decided, final checkpoint written"
        else:
            status = (
                f"{totals.undecided_at_stop} deliveries undecided"
                f"{', final checkpoint failed' if totals.checkpoint_failed_at_stop else ''}; "
                "their records were not checkpointed and will be read again on restart"
            )
        print(f"\nstopped after {elapsed:.1f}s: {status}", file=self.out)
        print(f"records read        {totals.records_read:>10,}", file=self.out)
        print(f"records dead-letter {totals.records_dead_lettered:>10,}", file=self.out)
        for name, count in sorted(totals.rule_matches.items()):
            print(f"rule {name:<28} {count:>10,} matches", file=self.out)
        for name, counts in sorted(totals.sink_outcomes.items()):
            detail = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items()))
            print(f"sink {name:<28} {detail}", file=self.out)
        print(f"checkpoints written {totals.checkpoints:>10,}", file=self.out)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
