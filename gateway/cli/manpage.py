"""caiasoft-gateway(8), written from the command's own argument parser, so it never drifts from it; and the roff
helpers gateway.toml(5) (gateway.cli.configpage) shares.

`python -m gateway.cli.manpage` prints caiasoft-gateway(8), `python -m gateway.cli.manpage gateway.toml` prints
gateway.toml(5); the install puts them in /usr/local/share/man/man8/ and man5/.
"""

from __future__ import annotations

import argparse
import sys

from gateway import __version__
from gateway.cli.main import _parser

DOCS = "/usr/local/share/doc/caiasoft-gateway"  # README.md and docs/NAME.md, as in the source tree
GUIDES = ("install", "operations", "troubleshooting")  # the admin's docs/*.md


def roff(text: str) -> str:
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
        lines += [".TP", f"\\fB{roff(name)}\\fR", roff(action.help or "")]
    return lines


def render() -> str:
    """The whole page, in man(7) roff."""
    parser = _parser()
    [commands] = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    helps = {choice.dest: choice.help or "" for choice in commands._choices_actions}
    lines = [
        f'.TH CAIASOFT-GATEWAY 8 "" "caiasoft-gateway {roff(__version__)}" "System Administration"',
        ".SH NAME",
        "caiasoft\\-gateway \\- " + roff(parser.description or ""),
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
        lines += [".SS " + roff(name), roff(helps.get(name, "")), *_options(subparser)]
    lines += [
        ".SH FILES",
        ".TP",
        "/etc/caiasoft\\-gateway/gateway.toml",
        "the configuration: \\fBgateway.toml\\fR(5)",
        ".TP",
        "/var/lib/caiasoft\\-gateway",
        "the ledger, the archive and the error folder",
        ".TP",
        "/var/log/caiasoft\\-gateway/gateway.log",
        "the log, one JSON object a line",
        ".SH SEE ALSO",
        "\\fBgateway.toml\\fR(5), "
        + ", ".join(f"{roff(DOCS)}/{name}" for name in ("README.md", *(f"docs/{doc}.md" for doc in GUIDES)))
        + ", \\fBsystemctl\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Print the page named (caiasoft-gateway, the default, or gateway.toml); 2 for a name it does not know."""
    from gateway.cli import configpage  # it imports roff from here

    pages = {"caiasoft-gateway": render, "gateway.toml": configpage.render}
    name = argv[0] if argv else "caiasoft-gateway"
    if len(argv) > 1 or name not in pages:
        sys.stderr.write(f"usage: python -m gateway.cli.manpage [{' | '.join(pages)}]\n")
        return 2
    sys.stdout.write(pages[name]())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
