"""caiasoft-gateway(8), written from the command's own argument parser, so it never drifts from it.

`python -m gateway.cli.manpage` prints it; the install puts it in /usr/local/share/man/man8/.
"""

from __future__ import annotations

import argparse
import sys

from gateway import __version__
from gateway.cli.main import _parser

DOCS = "/usr/local/share/doc/caiasoft-gateway"


def _roff(text: str) -> str:
    """text safe in a roff line: backslashes and hyphens escaped, no line starting with a control character."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + escaped if escaped.startswith((".", "'")) else escaped


def _options(parser: argparse.ArgumentParser) -> list[str]:
    lines: list[str] = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(
            action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
        ):
            continue
        if action.option_strings:
            metavar = (
                f" {action.metavar}" if action.metavar else (f" {action.dest.upper()}" if action.nargs != 0 else "")
            )
            name = ", ".join(action.option_strings) + metavar
        else:
            name = str(action.metavar or action.dest)
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(action.help or "")]
    return lines


def render() -> str:
    """The whole page, in man(7) roff."""
    parser = _parser()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    lines = [
        f'.TH CAIASOFT-GATEWAY 8 "" "caiasoft-gateway {_roff(__version__)}" "System Administration"',
        ".SH NAME",
        "caiasoft\\-gateway \\- " + _roff(parser.description or ""),
        ".SH SYNOPSIS",
        "\\fBcaiasoft\\-gateway\\fR [\\fB\\-c\\fR \\fIFILE\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        "Takes each finished request file ALEPH writes into its print folders, sends it to CaiaSoft's "
        "requestfile API and keeps it in a dated archive with what CaiaSoft answered; relays item status "
        "back to ALEPH over NCIP. Exit codes: 0 ok, 2 usage or config error, 1 runtime failure.",
        ".SH OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
    ]
    for name, subparser in commands.choices.items():
        lines += [".SS " + _roff(name), _roff(helps.get(name, "")), *_options(subparser)]
    lines += [
        ".SH FILES",
        ".TP",
        "/etc/caiasoft\\-gateway/gateway.toml",
        "the configuration",
        ".TP",
        "/var/lib/caiasoft\\-gateway",
        "the ledger, the archive and the error folder",
        ".TP",
        "/var/log/caiasoft\\-gateway/gateway.log",
        "the log, one JSON object a line",
        ".SH SEE ALSO",
        f"{_roff(DOCS)}/install.md, {_roff(DOCS)}/README.md, \\fBsystemctl\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
