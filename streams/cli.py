"""The ``txwatch`` command line: one entry point, a subcommand per task."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from streams.settings import Settings, SettingsError

SEVERITY_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m",
                    "low": "\033[36m"}
RESET = "\033[0m"


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- worker ---------------------------------------------------------------------------
def run_worker(settings: Settings) -> int:
    """Run one worker until SIGINT/SIGTERM."""
    import faust
    from prometheus_client import start_http_server

    from streams import __version__
    from streams.app import create_app
    from streams.clients import (
        KafkaSetupError,
        check_access,
        create_topics,
        resolve_replication_factor,
    )
    from streams.metrics import PrometheusSensor
    from streams.rules import build_rules, detector_config
    from streams.stages import STAGES, stage_topic

    try:  # a configuration that does not build stops the worker before it touches Kafka
        build_rules(detector_config(settings), STAGES)
    except ValueError as exc:
        source = settings.detector_config or "the packaged detector configuration"
        print(f"txwatch worker: {source}: {exc}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Wrong credentials or an untrusted certificate stop the worker here, with
        # the cause; Faust's own clients would log it and retry for ever.
        asyncio.run(check_access(settings))
        # one number of replicas for the topics created here and those Faust creates
        settings = asyncio.run(resolve_replication_factor(settings))
        # Faust subscribes before it would create a missing input topic, and would only
        # see it after a metadata refresh: create every topic we read or write first.
        # The derived stages' topics too: one Faust creates a few ms before it subscribes
        # can be missing from the group leader's metadata ("Ignoring missing topic"), and
        # that stage then reads nothing until the next rebalance, minutes later.
        asyncio.run(create_topics(settings, [
            *settings.input_topics, settings.alert_topic, settings.dead_letter_topic,
            *(stage_topic(settings.app_id, name) for name in STAGES),
        ]))
    except KafkaSetupError as exc:
        print(f"txwatch worker: {exc}", file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from detectors.registry import build_alerters

    config = detector_config(settings)
    alert_labels = set()
    for alerter in build_alerters(config):
        alert_labels.add((alerter.name, alerter.severity))
        if alerter.critical_threshold is not None:
            alert_labels.add((alerter.name, "critical"))
    metrics = PrometheusSensor(version=__version__, alert_labels=sorted(alert_labels),
                               config_version=str(config.get("version", "unversioned")))
    server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    port = server.server_address[1]
    print(f"txwatch worker: metrics on http://{settings.metrics_host}:{port}/metrics",
          flush=True)
    if settings.dev_mode:
        logging.getLogger("txwatch").warning(
            "development mode (TXWATCH_DEV_MODE): %s; never run it in production",
            "a secret TXWATCH_PII_KEY is set" if settings.pii_key.get() else
            "personal identifiers are hashed with the public development key")
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    runtime = create_app(settings, metrics)
    from streams.rules import preload_rules

    preload_rules(runtime)  # the config topic's latest version judges the first event
    worker = faust.Worker(runtime.app, loglevel=settings.log_level, quiet=True,
                          redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
    return 0


# -- simulate / replay ----------------------------------------------------------------
def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from streams.simulate import simulate, simulated_traffic, write_jsonl

    if args.out is not None:
        if args.events is None:
            print("txwatch simulate: --out needs --events", file=sys.stderr)
            return 2
        try:
            traffic = simulated_traffic(args.variant, args.seed, accounts=args.accounts,
                                        scenarios=args.scenario or None, events=args.events)
        except ValueError as exc:
            print(f"txwatch simulate: {exc}", file=sys.stderr)
            return 2
        count = write_jsonl(traffic, args.out, labels_path=args.labels)
        print(f"wrote {count:,} events to {args.out}")
        return 0
    report = asyncio.run(simulate(
        settings, rate=args.rate, duration=args.duration, events=args.events,
        seed=args.seed, scenarios=args.scenario or None, labels_path=args.labels,
        progress=_progress, accounts=args.accounts, variant=args.variant,
    ))
    print(report)
    return 1 if report.failed else 0


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    """Check every line as the worker would, then publish the file.

    A file with rejected lines is not published (exit 1) unless
    ``--allow-bad``, which publishes them too, for the worker to dead-letter.
    """
    from streams.codec import Decoder
    from streams.rejects import check_lines, describe_rejected
    from streams.simulate import replay

    if not args.file.is_file():
        print(f"txwatch replay: no such file: {args.file}", file=sys.stderr)
        return 2
    # The key only hashes personal fields of the dead letters, which are not kept here.
    decoder = Decoder(pii_key=b"replay line check", max_message_bytes=settings.max_message_bytes)
    checked, rejected = check_lines(args.file, decoder)
    for line in describe_rejected(rejected, checked, args.file, verbose=args.verbose):
        _progress(line)
    if rejected and not args.allow_bad:
        _progress("txwatch replay: nothing published; fix these lines, or pass --allow-bad "
                  "to publish them too (the worker dead-letters them)")
        return 1
    report = asyncio.run(replay(settings, args.file, rate=args.rate, progress=_progress))
    print(report)
    return 1 if report.failed else 0


# -- tail -----------------------------------------------------------------------------
def format_alert(alert: dict[str, Any], colour: bool) -> str:
    severity = str(alert.get("severity", "?"))
    head = f"{alert.get('occurred_at', '?')}  {severity.upper():8} {alert.get('detector')}"
    if colour:
        head = SEVERITY_COLOURS.get(severity, "") + head + RESET
    amount = f" {alert['amount']} {alert.get('currency') or ''}" if alert.get("amount") else ""
    reasons = "; ".join(alert.get("reasons", []))
    return (f"{head}  account={alert.get('account_id')} {alert.get('event_type')}{amount}\n"
            f"    {reasons}  [score {alert.get('score')}, id {alert.get('alert_id')}]")


async def follow_topic(settings: Settings, topic: str, handle: Callable[[Any], bool], *,
                       from_beginning: bool, what: str,
                       stop: asyncio.Event | None = None) -> None:
    """Hand each record of ``topic`` to ``handle`` until it returns False, or ``stop`` is set.

    Says on stderr that it is waiting, once the consumer is connected.
    """
    from streams import clients

    consumer = clients.consumer(
        settings, topic, client_id=f"{settings.app_id}-{what.replace(' ', '-')}",
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    try:
        await consumer.start()
        _progress(f"waiting for {what} on {topic} at {settings.broker}; Ctrl-C to stop")
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if not handle(record):
                        return
    finally:
        await consumer.stop()


async def tail_alerts(settings: Settings, from_beginning: bool, as_json: bool,
                      limit: int | None = None, stop: asyncio.Event | None = None) -> int:
    seen = 0
    colour = sys.stdout.isatty()

    def show(record: Any) -> bool:
        nonlocal seen
        if as_json:
            print(record.value.decode(), flush=True)
        else:
            print(format_alert(orjson.loads(record.value), colour), flush=True)
        seen += 1
        return limit is None or seen < limit

    await follow_topic(settings, settings.alert_topic, show, from_beginning=from_beginning,
                       what="alerts", stop=stop)
    return seen


def run_tail(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(tail_alerts(settings, args.from_beginning, args.json, args.limit))
    return 0


# -- dead letters ---------------------------------------------------------------------
#: Characters of a dead letter's payload shown in the human form.
PAYLOAD_SHOWN = 200


def dead_letter_reasons() -> list[str]:
    """The reasons a dead letter can carry (``dead_letter.schema.json``)."""
    from streams.codec import load_schema

    reasons: list[str] = load_schema("dead_letter")["properties"]["reason"]["enum"]
    return reasons


def format_dead_letter(record: dict[str, Any]) -> str:
    """A dead-letter record in three lines: when, why and where from; the detail; the payload."""
    import base64
    import binascii

    source = record.get("source") or {}
    where = f"{source.get('topic')}[{source.get('partition')}]@{source.get('offset')}"
    try:
        payload = base64.b64decode(str(record.get("payload_b64", "")), validate=True)
        shown = payload.decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        shown = "(payload_b64 is not base64)"
    if len(shown) > PAYLOAD_SHOWN:
        shown = shown[:PAYLOAD_SHOWN] + f"... ({len(shown):,} characters)"
    hashed = " (personal fields hashed)" if record.get("payload_redacted") else ""
    return (f"{record.get('dead_lettered_at', '?')}  {record.get('reason', '?')}  "
            f"from {where}\n    {record.get('detail', '')}\n    payload{hashed}: {shown}")


async def read_dead_letters(settings: Settings, from_beginning: bool, as_json: bool,
                            reasons: Sequence[str] = (), limit: int | None = None,
                            stop: asyncio.Event | None = None) -> int:
    """Print dead letters of ``TXWATCH_DEAD_LETTER_TOPIC``; return how many were printed."""
    shown = 0

    def show(record: Any) -> bool:
        nonlocal shown
        try:
            letter = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            letter = None
        if not isinstance(letter, dict):
            if not reasons:
                print(f"(record {record.partition}@{record.offset} of "
                      f"{settings.dead_letter_topic} is not a dead-letter record)", flush=True)
            return True
        if reasons and letter.get("reason") not in reasons:
            return True
        print(record.value.decode() if as_json else format_dead_letter(letter), flush=True)
        shown += 1
        return limit is None or shown < limit

    await follow_topic(settings, settings.dead_letter_topic, show,
                       from_beginning=from_beginning, what="dead letters", stop=stop)
    return shown


def run_dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(read_dead_letters(settings, args.from_beginning, args.json,
                                  reasons=args.reason or (), limit=args.limit))
    return 0


# -- broker ---------------------------------------------------------------------------
def run_broker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.localkafka import run_broker_cli

    return run_broker_cli(args.data_dir, args.port)


# -- demo -----------------------------------------------------------------------------
def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams import demo

    return demo.run_demo(settings, args)


# -- settings -------------------------------------------------------------------------
def plain_value(value: Any) -> str:
    """A setting's value as a person would type it in the environment."""
    from streams.settings import Secret

    if value is None:
        return "unset"
    if isinstance(value, Secret):
        return "(secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "(empty)"
    return str(value)


def settings_table() -> list[str]:
    """``txwatch settings``: variable, default and meaning in aligned columns."""
    from dataclasses import fields

    rows = [("VARIABLE", "DEFAULT", "MEANING")]
    rows += [(f.metadata["env"], plain_value(f.default), f.metadata["help"])
             for f in fields(Settings)]
    name_width = max(len(row[0]) for row in rows)
    default_width = max(len(row[1]) for row in rows)
    return [f"{name:{name_width}}  {default:{default_width}}  {meaning}".rstrip()
            for name, default, meaning in rows]


def run_settings(settings: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(Settings.markdown_table())
        return 0
    for line in settings_table():
        print(line)
    return 0


DESCRIPTION = """\
txwatch: an event-streaming transaction monitor on Kafka.
Settings come from TXWATCH_* environment variables (txwatch settings lists them);
txwatch COMMAND --help shows a command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txwatch", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, title="commands",
                                metavar="COMMAND")
    sub.add_parser("worker", help="run a monitor worker (Faust) with its /metrics endpoint")

    demo = sub.add_parser(
        "demo", help="local broker + worker + simulator, alerts printed live (Ctrl-C stops all)")
    demo.add_argument("--rate", type=float, default=200.0, help="simulated events per second")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--all", action="store_true",
                      help="show low-severity alerts too (default: medium and above)")
    demo.add_argument("--resume", action="store_true",
                      help="keep the previous run's topics, state and logs (default: start "
                           "clean) and show only new alerts")

    from streams.populations import VARIANTS, describe_variants

    sim = sub.add_parser("simulate", help="publish realistic labelled traffic to the input topics",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="population variants (--variant):\n" + describe_variants())
    sim.add_argument("--rate", type=float, default=None,
                     help="events per second (default: as fast as possible)")
    sim.add_argument("--duration", type=float, default=None, help="seconds to run")
    sim.add_argument("--events", type=int, default=None, help="number of events to send")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--accounts", type=int, default=None,
                     help="population size (default 5000, or the variant's own)")
    sim.add_argument("--scenario", action="append",
                     help="inject only these scenarios (repeatable; default all)")
    sim.add_argument("--labels", type=Path, default=None,
                     help="write the injected scenarios' labels to this JSON Lines file")
    sim.add_argument("--variant", choices=sorted(VARIANTS), default=None, metavar="NAME",
                     help="a population that differs from the default one (listed below)")
    sim.add_argument("--out", type=Path, default=None,
                     help="write the events to this JSON Lines file instead of publishing "
                          "(needs --events)")

    replay = sub.add_parser(
        "replay", help="publish a JSON Lines file of events, keeping their event times")
    replay.add_argument("file", type=Path)
    replay.add_argument("--rate", type=float, default=None,
                        help="events per second (default: as fast as possible)")
    replay.add_argument("--allow-bad", action="store_true",
                        help="publish even when lines would be rejected (default: publish "
                             "nothing and exit 1, listing them)")
    replay.add_argument("--verbose", action="store_true",
                        help="list every rejected line (default: the first 5)")

    tail = sub.add_parser("tail", help="print alerts as they arrive")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="print raw alert JSON")
    tail.add_argument("--limit", type=int, default=None, help="stop after N alerts")

    dead = sub.add_parser(
        "dead-letters", help="print rejected input messages with their reason and source",
        description="Read TXWATCH_DEAD_LETTER_TOPIC: each rejected message with its reason, "
                    "detail, source topic/partition/offset and payload.")
    dead.add_argument("--from-beginning", action="store_true",
                      help="start at the oldest dead letter (default: only new ones)")
    dead.add_argument("--json", action="store_true", help="print the raw records")
    dead.add_argument("--reason", action="append", choices=dead_letter_reasons(),
                      metavar="REASON", help="only this reason (repeatable): "
                      + ", ".join(dead_letter_reasons()))
    dead.add_argument("--limit", type=int, default=None, help="stop after N dead letters")

    broker = sub.add_parser("broker", help="run a local Apache Kafka broker in the foreground")
    broker.add_argument("--data-dir", type=Path, default=None,
                        help="keep the broker's data here between runs (default: a temporary "
                             "directory, deleted when the broker stops)")
    broker.add_argument("--port", type=int, default=None,
                        help="client port on 127.0.0.1 (default: the previous run's on "
                             "--data-dir, else 9092 when free, else any free port)")

    settings = sub.add_parser("settings", help="list every TXWATCH_* variable with its default")
    settings.add_argument("--markdown", action="store_true",
                          help="print the README's table (Configuration) instead")

    from streams import calibrate, feedback, importer, rules, trace
    from streams.evaluation import cli as evaluation
    from streams.portfolio import cli as portfolio

    for module in (portfolio, rules, feedback, evaluation, importer, calibrate, trace):
        module.register_cli(sub)
    return parser


#: Commands that hash personal identifiers: they need TXWATCH_PII_KEY or development mode.
HASHING_COMMANDS = frozenset({"worker", "backtest", "evaluate"})

COMMANDS = {
    "demo": run_demo, "simulate": run_simulate, "replay": run_replay, "tail": run_tail,
    "broker": run_broker, "settings": run_settings, "dead-letters": run_dead_letters,
}

#: Commands that talk to the broker in TXWATCH_BROKER (``demo`` and ``broker`` start
#: their own, ``settings`` and ``backtest`` need none).
BROKER_COMMANDS = frozenset({"worker", "simulate", "replay", "tail", "portfolio", "rules",
                             "feedback", "dead-letters", "evaluate"})
#: Seconds allowed for the first connection to the broker before a command gives up.
ACCESS_TIMEOUT = 5.0


def bootstrap_problem(bootstrap: str) -> str | None:
    """Why ``bootstrap`` is not ``host:port[,host:port]``, or ``None`` when it is.

    Examples
    --------
    >>> bootstrap_problem("127.0.0.1:9092,kafka-2:9092") is None
    True
    >>> bootstrap_problem("host:notaport")
    "port 'notaport' of 'host:notaport' is not a number from 1 to 65535"
    """
    servers = [part.strip() for part in bootstrap.split(",")]
    if not any(servers):
        return "is empty"
    for server in servers:
        host, colon, port = server.rpartition(":")
        if not colon or not host:
            return f"{server!r} is not host:port"
        if not port.isdigit() or not 0 < int(port) < 65536:
            return f"port {port!r} of {server!r} is not a number from 1 to 65535"
    return None


def _command_name(args: argparse.Namespace) -> str:
    action = getattr(args, "rules_command", None) or getattr(args, "portfolio_command", None)
    return f"{args.command} {action}" if action else str(args.command)


def _uses_broker(args: argparse.Namespace) -> bool:
    if args.command == "evaluate" and getattr(args, "local_broker", False):
        return False
    if args.command == "simulate" and getattr(args, "out", None) is not None:
        return False  # writes a file instead of publishing
    return args.command in BROKER_COMMANDS


def _broker_check(settings: Settings, args: argparse.Namespace) -> str | None:
    """One line saying why the command cannot use TXWATCH_BROKER, or ``None``."""
    problem = bootstrap_problem(settings.broker)
    if problem is not None:
        return f"TXWATCH_BROKER={settings.broker!r}: {problem} (expected host:port[,host:port])"
    if args.command == "worker":
        return None  # run_worker checks access itself, with the same message
    from streams.clients import KafkaSetupError, check_access

    try:
        asyncio.run(check_access(settings, timeout=ACCESS_TIMEOUT))
    except KafkaSetupError as exc:
        hint = ("; start one with `txwatch broker`, or point TXWATCH_BROKER at yours"
                if str(exc).startswith("cannot reach") else "")
        return f"{exc}{hint}"
    return None


def _quiet_libraries(settings: Settings) -> None:
    """Keep aiokafka's connection errors out of a short command's output.

    The command reports a failure itself, in one line; the library would log
    the same failure a second time, with retries. ``TXWATCH_LOG_LEVEL=DEBUG``
    shows it all.
    """
    if settings.log_level.upper() == "DEBUG":
        logging.basicConfig(level=logging.DEBUG,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return
    for name in ("aiokafka", "kafka", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _run(argv: Sequence[str] | None) -> int:
    from aiokafka.errors import KafkaError

    from streams.clients import KafkaSetupError

    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"txwatch: bad setting: {exc}", file=sys.stderr)
        return 2
    name = _command_name(args)
    if args.command in HASHING_COMMANDS:
        try:
            settings.hashing_key()
        except SettingsError as exc:
            print(f"txwatch {name}: {exc}", file=sys.stderr)
            return 2
    if args.command not in ("worker", "demo"):
        _quiet_libraries(settings)
    if _uses_broker(args):
        problem = _broker_check(settings, args)
        if problem is not None:
            print(f"txwatch {name}: {problem}", file=sys.stderr, flush=True)
            return 2
    try:
        if args.command == "worker":
            return run_worker(settings)
        func = getattr(args, "func", None) or COMMANDS[args.command]
        status = int(func(settings, args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return status
    except (KafkaError, KafkaSetupError) as exc:
        # The broker went away after the first check, or refused a request.
        reason = str(exc) or type(exc).__name__
        print(f"txwatch {name}: Kafka at {settings.broker}: {reason}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """``txwatch COMMAND ...``; returns the exit status.

    2 when the command cannot start (a bad setting, an unreachable or
    malformed broker address), 130 after Ctrl-C, and 0 when the reader of
    stdout went away (``txwatch settings | head``: the reader had what it
    wanted); never a traceback for any of these.
    """
    try:
        return _run(argv)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Python would report the closed pipe again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
