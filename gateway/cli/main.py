"""The caiasoft-gateway command. Exit codes: 0 ok, 2 usage or config error, 1 runtime failure."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway import __version__
from gateway.config import loader as config_module
from gateway.core import logs
from gateway.core.errors import AlreadyRunning, ConfigError, GatewayError, LedgerDamaged, describe
from gateway.core.names import printable
from gateway.core.states import FileState, Verdict
from gateway.state.checkpointfile import CheckpointDamaged

if TYPE_CHECKING:
    from gateway.runtime.pipeline import Pipeline
    from gateway.simulators import LoopbackServer
    from gateway.state.ledger import Ledger
    from gateway.upload.caiasoft import CaiaSoftClient

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def _shown(text: str | None) -> str:
    """Text for the terminal: the key redacted, names and reasons escaped (gateway.core.names.printable)."""
    return printable(logs.redact(text or ""))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caiasoft-gateway", description="Sends ALEPH request files to CaiaSoft and keeps them in a dated archive."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help=f"config file (default: ${config_module.CONFIG_ENV} or {config_module.DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser("run", help="run the service in the foreground (systemd Type=notify)")
    detached = commands.add_parser("daemon", help="run the service detached, for hosts without systemd")
    detached.add_argument(
        "--pidfile",
        required=True,
        type=Path,
        metavar="P",
        help="pidfile to create and hold (a second start is refused)",
    )
    detached.add_argument(
        "--user",
        metavar="USER",
        help="run as this user, with its groups (needed when started as root; CAP_LEASE is not "
        "kept: the init script starts it with setpriv instead)",
    )
    detached.add_argument("--group", metavar="GROUP", help="with --user: this primary group instead of the user's")
    check = commands.add_parser("check", help="check config, folders, permissions and CaiaSoft; list every problem")
    check.add_argument("--offline", action="store_true", help="do not contact CaiaSoft")
    check.add_argument(
        "--as-service",
        action="store_true",
        help="run the check as the installed unit runs the service: its user, groups, capability "
        "and API key credential (as root; uses setpriv)",
    )
    check.add_argument("--unit", type=Path, metavar="FILE", help=argparse.SUPPRESS)  # --as-service: another unit
    check.add_argument("--root", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # --as-service: a scratch root
    check.add_argument(
        "--send-test-alert",
        action="store_true",
        help="also send a test alert through [alerts] (mail, webhook) and say if it went out",
    )
    check.add_argument(
        "--ncip-item",
        metavar="BARCODE",
        help="also ask ALEPH's NCIP server about this item (LookupItem, read-only) and print the "
        "answer in words: proves URL, port, registration, agencies and version",
    )
    check.add_argument(
        "--ncip",
        metavar="NAME",
        dest="ncip_server",
        help="with several NCIP servers: ask only this one ([ncip] is default, [ncip.NAME] is NAME) about "
        "--ncip-item (a library's barcode is unknown to another's ALEPH); default: every server",
    )
    status = commands.add_parser("status", help="what is queued, uploaded and refused")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    send = commands.add_parser("send", help="upload files now, through the same validate/upload/archive path")
    send.add_argument("files", nargs="+", metavar="FILE")
    send.add_argument("--attempts", type=int, default=3, help="tries per file on transient failures (default 3)")
    send.add_argument(
        "--caiasoft",
        default="default",
        metavar="NAME",
        help='the CaiaSoft connection to send to: "default" ([caiasoft], the default) or a [caiasoft.NAME]',
    )
    retry = commands.add_parser("retry", help="put files from error_dir back into the queue")
    retry.add_argument("names", nargs="*", metavar="NAME", help="file names (or paths) in error_dir")
    retry.add_argument("--all", action="store_true", help="every file in error_dir")
    journal = commands.add_parser("journal", help="append one checkout/checkin entry to the NCIP journal (locked)")
    journal.add_argument("action", choices=["checkout", "checkin"])
    journal.add_argument("item", metavar="ITEM", help="the item's barcode")
    journal.add_argument("--stop", help="circulation stop (chooses the user id for a checkout)")
    journal.add_argument("--user", help="user id, instead of the stop's")
    journal.add_argument("--request-id", dest="request_id")
    journal.add_argument("--id", dest="entry_id", help="an id of your own, kept in logs and dead letters")
    journal.add_argument(
        "--ncip",
        metavar="NAME",
        default="default",
        help="the NCIP server whose journal is written: NAME of an [ncip.NAME] table (default: [ncip]'s)",
    )
    find = commands.add_parser("find", help="which request files carried this item (newest first)")
    find.add_argument("barcode", metavar="BARCODE", help="the item's barcode (z30-barcode)")
    find.add_argument("--json", action="store_true", help="print JSON instead of text")
    prune = commands.add_parser(
        "prune",
        help="remove the days retention_days (and error_retention_days) let go, "
        "with the service stopped; --dry-run says what would go",
    )
    prune.add_argument(
        "--dry-run",
        dest="dry_run",
        action="store_true",
        help="only say which day folders would go and what the ledger keeps of them",
    )
    prune.add_argument(
        "--trust-clock",
        dest="trust_clock",
        action="store_true",
        help="count days from the clock even where it is more than 36 hours ahead of the ledger's "
        "time (after a long stop, once you know the clock is right)",
    )
    commands.add_parser(
        "web", help="serve the read-only staff page on [web] listen (in its own process: caiasoft-gateway-web)"
    )
    web_user = commands.add_parser(
        "web-user", help="add a user of the staff page to [web] users_file, or give one a new password"
    )
    web_user.add_argument("name", metavar="NAME", help="the name staff log in with")
    web_user.add_argument(
        "--password-stdin",
        dest="password_stdin",
        action="store_true",
        help="read the password from stdin (its first line) instead of asking twice on the terminal",
    )
    demo = commands.add_parser("demo", help="a self-contained run with the simulator and sample files")
    demo.add_argument("--keep", action="store_true", help="keep the demo folder to look around (else it is removed)")
    demo.add_argument(
        "--connections",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: a second CaiaSoft connection ([caiasoft.law], its own key on the simulator), a source that "
        "names it and a second NCIP server ([ncip.law]); the summary says what each connection sent",
    )
    simulate = commands.add_parser("simulate", help="run a simulator on loopback for dry runs")
    simulate.add_argument("system", choices=["caiasoft", "ncip"])
    simulate.add_argument("--port", type=int, default=8800)
    simulate.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="[NAME=]KEY",
        help="caiasoft: an API key the simulator accepts (default: made up and printed). Repeat it as NAME=KEY "
        "to serve several collections, as a consortium's [caiasoft.NAME] connections: each upload is recorded "
        "under the NAME of its key, any other key gets 401; a key without NAME= is the default collection's "
        "(so is default=KEY: the way to give a key that holds '=')",
    )
    simulate.add_argument(
        "--deny", action="append", default=[], metavar="BARCODE=STATUS", help="deny this barcode with this istatus"
    )
    simulate.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="FAULT",
        help="script the next answers: 500, 503, 429:SECONDS, drop, slow:SECONDS, hang",
    )
    simulate.add_argument("--delay", type=float, default=0.0, help="seconds before every answer")
    simulate.add_argument(
        "--receipts",
        type=Path,
        metavar="FILE",
        help="caiasoft: append one JSON line per upload received (time, name, size)",
    )
    simulate.add_argument(
        "--problem",
        action="append",
        default=[],
        metavar="BARCODE=TYPE",
        help="ncip: answer this barcode with a Problem of this type",
    )
    simulate.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        default=None,
        help="ncip: do not check messages against the schema (faster, for benchmarks)",
    )
    simulate.add_argument(
        "--tcp",
        dest="socket_mode",
        nargs="?",
        const="close",
        default=None,
        choices=["close", "open", "dribble"],
        help="ncip: a raw socket like ALEPH's NCIP port (tcp://...) instead of HTTP, taking "
        "the HTTP/1.0 framing or the bare message; after answering it closes (default), "
        "keeps the connection open, or dribbles",
    )
    simulate.add_argument(
        "--status-line",
        dest="status_line",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ncip: start each answer with an HTTP status line and headers, or not (the NCIP XML "
        "alone, as ALEPH's NCIP port can answer); default: with over HTTP, without on --tcp",
    )
    simulate.add_argument(
        "--like-aleph",
        dest="track_loans",
        action="store_true",
        help="ncip: remember loans, so a repeated check-out or check-in gets ALEPH's answer",
    )
    return parser


def _print_redacted_exception(kind: type[BaseException], value: BaseException, trace: TracebackType | None) -> None:
    """sys.excepthook: an unexpected traceback on stderr never shows a registered secret."""
    sys.stderr.write(logs.redact("".join(traceback.format_exception(kind, value, trace))))


def main(argv: list[str] | None = None) -> int:
    sys.excepthook = _print_redacted_exception
    args = _parser().parse_args(argv)
    handler = {
        "run": cmd_run,
        "daemon": cmd_daemon,
        "check": cmd_check,
        "status": cmd_status,
        "send": cmd_send,
        "retry": cmd_retry,
        "journal": cmd_journal,
        "find": cmd_find,
        "prune": cmd_prune,
        "web": cmd_web,
        "web-user": cmd_web_user,
        "demo": cmd_demo,
        "simulate": cmd_simulate,
    }[args.command]
    try:
        code = handler(args)
        sys.stdout.flush()  # here, so a reader that went away (`find X --json | head`) is caught below
        return code
    except BrokenPipeError:  # the reader of our output closed it: nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    except ConfigError as error:
        print(f"caiasoft-gateway: the configuration has {len(error.problems)} problem(s):", file=sys.stderr)
        for problem in error.problems:
            print(f"  {printable(str(problem))}", file=sys.stderr)
        return EXIT_CONFIG
    except AlreadyRunning as error:
        print(f"caiasoft-gateway: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except (LedgerDamaged, CheckpointDamaged) as error:  # not fixed by a restart: the unit does not restart on 2
        print(f"caiasoft-gateway: {printable(str(error))}", file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as error:  # e.g. the ledger cannot be opened now: a restart may fix it
        print(f"caiasoft-gateway: {printable(str(error))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _load(args: argparse.Namespace) -> config_module.Config:
    """The config with the API key, for commands that talk to CaiaSoft."""
    config = config_module.load(config_module.config_path(args.config))
    for key in config.keys:
        logs.add_secret(key.value)
    return config


def _load_settings(args: argparse.Namespace) -> config_module.Settings:
    """The config without secrets, for commands that do not use them."""
    return config_module.load_settings(config_module.config_path(args.config))


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.runtime.daemonize import StartRefused, writable_folders
    from gateway.runtime.service import Service

    config = _load(args)
    try:  # a read-only or foreign folder: said, exit 2 (the unit does not restart on 2), never a traceback
        writable_folders(config, ("state_dir", "log_dir"))
    except StartRefused as error:
        print(f"caiasoft-gateway run: not started: {printable(str(error))}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup(config.paths.log_dir, console=True)
    return Service(config).run()


def cmd_daemon(args: argparse.Namespace) -> int:
    from gateway.runtime.daemonize import StartRefused, run_detached

    config = _load(args)
    try:
        return run_detached(config, args.pidfile, args.user, args.group)
    except StartRefused as error:
        print(f"caiasoft-gateway daemon: not started: {printable(str(error))}", file=sys.stderr)
        return EXIT_CONFIG


def cmd_check(args: argparse.Namespace) -> int:
    from itertools import chain

    from gateway.cli import asservice
    from gateway.cli.checks import run_checks, unit_sandbox

    if args.as_service:
        return _check_as_service(args)
    try:
        config = _load(args)
    except ConfigError as error:
        print(f"FAIL  configuration {config_module.config_path(args.config)}")
        for problem in error.problems:
            print(f"        {printable(str(problem))}")
        return EXIT_CONFIG
    failures = 0
    if args.ncip_item and (args.offline or config.ncip is None):
        print(
            "caiasoft-gateway check: --ncip-item needs an [ncip] section and cannot go with --offline", file=sys.stderr
        )
        return EXIT_CONFIG
    servers = [server.name for server in config.ncip_servers]
    if args.ncip_server is not None and (not args.ncip_item or args.ncip_server not in servers):
        print(
            f"caiasoft-gateway check: --ncip {args.ncip_server!r} names the NCIP server to ask about --ncip-item; "
            f"{config.file} has: {', '.join(servers) or 'none'}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    root = args.root or Path("/")
    unit = args.unit or asservice.inside(root, str(asservice.UNIT))
    for result in chain(
        run_checks(config, offline=args.offline, ncip_item=args.ncip_item, ncip_server=args.ncip_server),
        unit_sandbox(config, unit, root),
    ):
        print(
            logs.redact(
                f"{result.mark:<5} {_shown(result.what)}"
                + (f"\n        {_shown(result.detail)}" if result.detail else "")
            )
        )
        failures += result.mark == "FAIL"
    if args.send_test_alert:
        failures += _send_test_alert(config)
    _print_unit_warnings()
    print(f"\n{'all checks passed' if not failures else f'{failures} problem(s) found'}")
    if os.geteuid() == 0:
        print(
            "(checked as root, who can read and write everything: `caiasoft-gateway check --as-service` checks "
            "with the service's user, groups, capability and credentials)"
        )
    return EXIT_OK if not failures else EXIT_FAILURE


def _print_unit_warnings() -> None:
    """WARN lines for directives of the installed unit that the running systemd does not know."""
    from gateway.cli import asservice

    for warning in asservice.installed_unit_warnings():
        print(f"WARN  {asservice.UNIT}\n        {warning}")


def _check_as_service(args: argparse.Namespace) -> int:
    """check --as-service: the same check, run by setpriv as the installed unit would run the service."""
    from gateway.cli import asservice

    root = args.root or Path("/")
    unit = args.unit or asservice.inside(root, str(asservice.UNIT))
    forwarded = [
        *(["-c", str(args.config)] if args.config else []),
        "check",
        *(["--offline"] if args.offline else []),
        *(["--send-test-alert"] if args.send_test_alert else []),
        *(["--ncip-item", args.ncip_item] if args.ncip_item else []),
        *(["--ncip", args.ncip_server] if args.ncip_server else []),
        "--unit",
        str(unit),
        *(["--root", str(root)] if args.root else []),
    ]  # the sandbox compared
    if os.geteuid() != 0:
        print("caiasoft-gateway check --as-service: run it as root (it becomes the service's user)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return asservice.run_check(unit, root, forwarded, dict(os.environ))
    except asservice.AsServiceError as error:
        print(f"caiasoft-gateway check --as-service: {printable(str(error))}", file=sys.stderr)
        return EXIT_CONFIG


def _send_test_alert(config: config_module.Config) -> int:
    """check --send-test-alert: send one on each channel; return how many failed."""
    from gateway.monitor import alerts

    if config.alerts is None:
        print("FAIL  test alert\n        there is no [alerts] section in the config: nothing to send with")
        return 1
    failed = 0
    for channel, problem in alerts.send_test(config.alerts):
        where = (
            f"{config.alerts.smtp_host}:{config.alerts.smtp_port} to {', '.join(config.alerts.to)}"
            if channel == "mail"
            else "the webhook"
        )
        print(
            logs.redact(
                f"{'OK' if problem is None else 'FAIL':<5} test alert by {channel} ({_shown(where)})"
                + (f"\n        {_shown(problem)}" if problem else "")
            )
        )
        failed += problem is not None
    return failed


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.report import status

    config = _load_settings(args)
    if _no_ledger_yet(config, args.json):
        return EXIT_FAILURE
    try:
        report = _status_report(config)
        report["state_dir_problem"] = status.state_dir_problem(config.paths.state_dir)
    except GatewayError as error:  # a damaged ledger: the same words as `run` says, never a traceback
        print(
            json.dumps({"error": str(error)}) if args.json else f"caiasoft-gateway: {printable(str(error))}",
            file=sys.stdout if args.json else sys.stderr,
        )
        return EXIT_CONFIG if isinstance(error, LedgerDamaged) else EXIT_FAILURE
    # the ledger redacts what it stores; rows older versions stored raw are redacted here, when this
    # user can read the key (status itself never needs it)
    _register_key_quietly(config)
    print(logs.redact(json.dumps(report, indent=2, ensure_ascii=False) if args.json else status.render(report)))
    return EXIT_OK


def _no_ledger_yet(config: config_module.Settings, as_json: bool) -> bool:
    """Say so (as text or JSON) and return True if the gateway has not run with this config yet."""
    if config.paths.database.exists():
        return False
    message = f"no ledger at {config.paths.database}: the gateway has not run with this config yet"
    print(json.dumps({"error": message}) if as_json else message)
    return True


def _status_report(config: config_module.Settings) -> dict[str, Any]:
    """status.collect on the config's ledger, with its connections. Raise LedgerDamaged or LedgerUnavailable."""
    import sqlite3

    from gateway.report import status
    from gateway.state.ledger import Ledger, LedgerUnavailable

    database = config.paths.database
    try:
        ledger = Ledger(database)
        try:
            return status.collect(ledger, settings=config)
        finally:
            ledger.close()
    except sqlite3.OperationalError as error:
        raise LedgerUnavailable(f"cannot read the ledger {database}: {error}") from None
    except sqlite3.DatabaseError as error:
        raise LedgerDamaged(database, str(error)) from None


def _register_key_quietly(settings: config_module.Settings) -> None:
    """Register the API key for redaction if this user can read it; say nothing if not."""
    from gateway.config import credentials

    for key in credentials.readable_keys(settings, os.environ):
        logs.add_secret(key.value)


def cmd_find(args: argparse.Namespace) -> int:
    from gateway.report import find
    from gateway.state.ledger import Ledger

    config = _load_settings(args)
    if _no_ledger_yet(config, args.json):
        return EXIT_FAILURE
    ledger = Ledger(config.paths.database)
    try:
        if ledger.items.backfill_due() is not None and not args.json:
            print("reading the sidecars of files archived before the item index (once) ...", file=sys.stderr)
        barcode = args.barcode.strip()
        found = find.find(ledger, barcode, [config.paths.archive_dir, config.paths.error_dir])
    finally:
        ledger.close()
    print(
        logs.redact(
            json.dumps(find.as_json(found), indent=2, ensure_ascii=False)
            if args.json
            else find.render(printable(barcode), found, several=config.several)
        )
    )
    return EXIT_OK if found else EXIT_FAILURE


def cmd_prune(args: argparse.Namespace) -> int:
    from gateway.cli.prune import prune

    config = _load_settings(args)
    if _no_ledger_yet(config, as_json=False):
        return EXIT_FAILURE
    lines, code = prune(config, args.dry_run, args.trust_clock)
    print("\n".join(lines), file=sys.stdout if code == EXIT_OK else sys.stderr)
    return code


def cmd_web(args: argparse.Namespace) -> int:
    from gateway.web import server

    config = _load_settings(args)
    if config.web is None:
        print(
            f"caiasoft-gateway web: {config.file} has no [web] table (web.listen): add one to turn the staff page on",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    logs.setup(None, console=True)  # the journal: the page's unit writes nothing, not even gateway.log
    try:
        return server.run(config)
    except OSError as error:  # the address is taken, or not this host's: a restart may fix the first
        print(f"caiasoft-gateway web: {printable(error.strerror or str(error))}", file=sys.stderr)
        return EXIT_FAILURE


def cmd_web_user(args: argparse.Namespace) -> int:
    from gateway.web import users

    config = _load_settings(args)
    users_file = config.web.users_file if config.web is not None else None
    if users_file is None:
        print(
            f"caiasoft-gateway web-user: web.users_file is not set in {config.file}: set it (in the [web] table) "
            "to the file that holds the staff page's users",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    problem = users.name_problem(args.name)
    if problem:
        print(f"caiasoft-gateway web-user: {printable(args.name)}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    password = _new_password(args.name, args.password_stdin)
    if password is None:
        return EXIT_CONFIG
    try:
        known = args.name in users.load_users(users_file)
    except FileNotFoundError:
        known = False
    except OSError as error:
        print(f"caiasoft-gateway web-user: {users_file}: cannot read it: {describe(error)}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        users.add_user(users_file, args.name, password)
    except ValueError as error:
        print(f"caiasoft-gateway web-user: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(
            f"caiasoft-gateway web-user: cannot write web.users_file {users_file}: {describe(error)}", file=sys.stderr
        )
        return EXIT_FAILURE
    print(f"{args.name}: {'new password' if known else 'added'} in {users_file}")
    return EXIT_OK


def _new_password(name: str, from_stdin: bool) -> str | None:
    """The password: stdin's first line, or asked twice on the terminal; None (and why, said) if there is none."""
    import getpass

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        print(
            "caiasoft-gateway web-user: no terminal to ask for the password on: use --password-stdin", file=sys.stderr
        )
        return None
    else:
        password = getpass.getpass(f"Password for {name}: ")
        if getpass.getpass("The same again: ") != password:
            print("caiasoft-gateway web-user: the two passwords differ; nothing was changed", file=sys.stderr)
            return None
    if not password:
        print("caiasoft-gateway web-user: the password cannot be empty; nothing was changed", file=sys.stderr)
        return None
    return password


def _pipeline(
    config: config_module.Settings, client: CaiaSoftClient | None = None, connection: str = "default"
) -> Pipeline:
    """A pipeline without workers, for `send` (client: the connection's) and `retry` (no client)."""
    from gateway.runtime.pipeline import Pipeline
    from gateway.state.ledger import Ledger

    ledger = Ledger(config.paths.database)
    if connection == config.caiasoft.name:
        return Pipeline(config, ledger, client)
    return Pipeline(config, ledger, None, clients={connection: client} if client else None)


def cmd_send(args: argparse.Namespace) -> int:
    from gateway.upload.caiasoft import CaiaSoftClient

    config = _load(args)
    connection = config.connection(args.caiasoft)
    if connection is None:
        known = ", ".join(c.name for c in config.connections)
        print(
            f"caiasoft-gateway send: no CaiaSoft connection {args.caiasoft!r} in {config.file} (there are: {known})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    logs.setup(config.paths.log_dir, console=False)
    client = CaiaSoftClient(connection, config.key_of(connection.name))
    pipeline = _pipeline(config, client, connection.name)
    ledger = pipeline.ledger
    failed = 0
    try:
        for argument in args.files:
            path, name = Path(argument), printable(argument)
            if not path.is_file():
                print(f"{name}: not a file")
                failed += 1
                continue
            row_id = pipeline.admission.adopt_copy(path, connection=connection.name)
            for attempt in range(max(args.attempts, 1)):
                row = ledger.files.assign(row_id)
                if row is None:  # the running service took it first: wait for its answer
                    _wait_until_settled(ledger, row_id, connection.timeout_seconds * 2)
                    break
                outcome = pipeline.upload(row)
                if outcome.verdict != Verdict.TRANSIENT:
                    break
                if attempt + 1 < args.attempts:
                    pipeline.gates[connection.name].wait_open()
            row = ledger.files.row(row_id)
            if row.state == FileState.ARCHIVED:
                print(f"{name}: accepted by CaiaSoft, archived as {_shown(row.final_path)}")
            elif row.state == FileState.REFUSED:
                print(logs.redact(f"{name}: refused: {_shown(row.reason)}\n    kept in {_shown(row.final_path)}"))
                failed += 1
            else:
                print(
                    logs.redact(
                        f"{name}: not sent yet ({_shown(row.reason or row.state)}); it stays queued and the "
                        "running service will send it"
                    )
                )
                failed += 1
    finally:
        client.close()
        ledger.close()
    return EXIT_OK if not failed else EXIT_FAILURE


def _wait_until_settled(ledger: Ledger, row_id: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (
        (row := ledger.files.get(row_id)) is not None
        and row.state == FileState.UPLOADING
        and time.monotonic() < deadline
    ):
        time.sleep(0.1)


def cmd_retry(args: argparse.Namespace) -> int:
    from gateway.cli.retry import ConnectionGone, find_in_error_dir, put_back

    if not args.names and not args.all:
        print("caiasoft-gateway retry: name files from error_dir, or use --all", file=sys.stderr)
        return EXIT_CONFIG
    config = _load_settings(args)
    logs.setup(config.paths.log_dir, console=False)
    paths, missing = find_in_error_dir(config.paths.error_dir, args.names, args.all)
    for name in missing:
        print(f"{printable(name)}: not found in {config.paths.error_dir}")
    pipeline = _pipeline(config)
    failed = 0
    try:
        for path in paths:
            try:
                row = put_back(pipeline, path)
            except OSError as error:  # this file only: the others are retried
                failed += 1
                print(
                    logs.redact(
                        f"{printable(path.name)}: cannot retry: {describe(error)} (the service user "
                        "needs to read and write the file and its folder, and to write state_dir)"
                    )
                )
                continue
            except ConnectionGone as error:
                failed += 1
                print(f"{printable(path.name)}: not retried: {_shown(str(error))}")
                continue
            if row.state == FileState.REFUSED:
                print(
                    logs.redact(
                        f"{printable(path.name)}: refused again: {_shown(row.reason)}\n"
                        f"    kept in {_shown(row.final_path)}"
                    )
                )
            else:
                print(f"{printable(path.name)}: back in the queue (the running service sends it)")
    finally:
        pipeline.ledger.close()
    if not paths and not missing:
        print(f"nothing to retry in {config.paths.error_dir}")
    return EXIT_OK if not missing and not failed else EXIT_FAILURE


def cmd_journal(args: argparse.Namespace) -> int:
    from gateway.ncip import journal
    from gateway.ncip.journal import JournalEntry

    config = _load_settings(args)
    if config.ncip is None:
        print(f"caiasoft-gateway journal: {config.file} has no [ncip] section, so there is no journal", file=sys.stderr)
        return EXIT_CONFIG
    server = next((server for server in config.ncip_servers if server.name == args.ncip), None)
    if server is None:
        print(
            f"caiasoft-gateway journal: {config.file} has no NCIP server {printable(args.ncip)!r} (no "
            f"[ncip.{printable(args.ncip)}] table); its NCIP servers are: "
            f"{', '.join(f'{known.name} ([{known.table}])' for known in config.ncip_servers)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    def text(value: str | None) -> str | None:  # `read b` from a CRLF file keeps the CR: not part of a barcode
        return journal.trimmed(value) if value is not None else None

    entry = JournalEntry(
        args.action,
        journal.trimmed(args.item),
        stop=text(args.stop),
        user=text(args.user),
        request_id=text(args.request_id),
        id=text(args.entry_id),
    )
    try:
        journal.append(server.journal, entry)
    except ValueError as error:
        print(f"caiasoft-gateway journal: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:  # a cron job's user that may not write the journal: say which file and why
        hint = (
            (
                " (the user appending needs write permission on the journal, and on its folder to create it; "
                "see docs/operations.md, The journal)"
            )
            if isinstance(error, PermissionError)
            else ""
        )
        print(
            f"caiasoft-gateway journal: cannot append to {_shown(str(server.journal))}: "
            f"{error.strerror or error}{hint}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    print(f"{args.action} {args.item} appended to {server.journal}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.cli.demo import run_demo

    return run_demo(keep=args.keep, connections=args.connections)


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.system == "ncip":
        return _simulate_ncip(args)
    from gateway.simulators.caiasoft import DEFAULT_COLLECTION, CaiaSoftSimulator

    try:
        named = _simulator_keys(args.key)
    except ValueError as problem:
        print(f"simulate caiasoft: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    key = named.pop(DEFAULT_COLLECTION, None)
    if key is None and not named:
        key = os.environ.get("CAIASOFT_SIMULATOR_KEY") or "sim-" + os.urandom(8).hex()
    deny = dict(item.split("=", 1) if "=" in item else (item, "Invalid Stop Code") for item in args.deny)
    simulator = CaiaSoftSimulator(
        key=key, port=args.port, deny=deny, delay=args.delay, receipts=args.receipts, keys=named
    )
    simulator.queue_faults(*args.fault)
    if not named:
        return _serve(
            simulator,
            f"CaiaSoft simulator on {simulator.url}\n  API key: {key}\n"
            f'  set caiasoft.base_url = "{simulator.url}" and put the key in your api_key_file.',
        )
    accepted = ({DEFAULT_COLLECTION: key} if key is not None else {}) | named
    lines = "".join(f"\n  collection {name}: key {_masked(value)}" for name, value in accepted.items())
    return _serve(
        simulator,
        f"CaiaSoft simulator on {simulator.url}\n  {len(accepted)} key{'s' if len(accepted) > 1 else ''}, each upload "
        f"recorded under its key's collection:{lines}\n"
        f'  set base_url = "{simulator.url}" in the [caiasoft] or [caiasoft.NAME] of each collection, with its key.',
    )


def _simulator_keys(given: list[str]) -> dict[str, str]:
    """`simulate caiasoft --key` values as {collection: key}: NAME=KEY, or KEY alone for the default collection.

    A value is NAME=KEY when NAME is a name (letters, digits, '-', '_') and KEY is not empty and
    does not start with '=' (so a base64 key's padding, "abc==", stays one key).
    """
    from gateway.simulators.caiasoft import DEFAULT_COLLECTION

    keys: dict[str, str] = {}
    for value in given:
        name, separator, key = value.partition("=")
        word = name.replace("-", "").replace("_", "")
        if not (separator and word.isascii() and word.isalnum() and key and not key.startswith("=")):
            name, key = DEFAULT_COLLECTION, value
        if name in keys:
            raise ValueError(f"two keys for the collection {name!r}: give each collection one --key NAME=KEY")
        if key in keys.values():
            raise ValueError(f"collection {name!r} has the same key as another: each needs its own")
        keys[name] = key
    return keys


def _masked(key: str) -> str:
    """A key as the simulator prints it when it has several: its first four characters, never the whole."""
    return f"{key[:4]}... ({len(key)} characters)" if len(key) > 8 else f"... ({len(key)} characters)"


def _simulate_ncip(args: argparse.Namespace) -> int:
    from gateway.simulators.ncip import NcipSimulator

    problems = dict(item.split("=", 1) if "=" in item else (item, "Unknown Item") for item in args.problem)
    simulator = NcipSimulator(
        port=args.port,
        problems=problems,
        validate=args.validate,
        delay=args.delay,
        transport="tcp" if args.socket_mode else "http",
        socket_mode=args.socket_mode or "close",
        track_loans=args.track_loans,
        status_line=args.status_line,
    )
    if simulator.validate:
        checking = "every NCIP 2 message is validated against ncip_v2_02.xsd"
    elif args.validate is None:
        checking = "no schema check (install the xmlschema package, extra [simulators], for one)"
    else:
        checking = "no schema check"
    return _serve(
        simulator,
        f"NCIP simulator on {simulator.url}, answering in the version it is asked in\n"
        f'  set ncip.url = "{simulator.url}"; {checking}.',
    )


def _serve(simulator: LoopbackServer, banner: str) -> int:
    print(f"{banner}\n  Ctrl-C stops it.", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        simulator.serve_forever()
    return EXIT_OK
