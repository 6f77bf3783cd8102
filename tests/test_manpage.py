"""caiasoft-gateway(8) is written from the argument parser: every command and option is in it, and groff reads it
without a warning."""

from __future__ import annotations

import argparse
import shutil
import subprocess

from gateway.cli.main import _parser
from gateway.cli.manpage import render


def test_every_command_and_option_is_on_the_page_and_groff_reads_it_clean(tmp_path):
    page = render()
    [commands] = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    for name, parser in commands.choices.items():
        assert f"\n.SS {name}\n" in page, name
        for action in parser._actions:
            for option in action.option_strings:
                if action.help != argparse.SUPPRESS and option not in ("-h", "--help"):
                    assert option.replace("-", chr(92) + "-") in page, (name, option)
    assert "--as-service" not in page and "\\-\\-as\\-service" in page  # hyphens escaped, as man(7) wants
    groff = shutil.which("groff")
    assert groff, "groff is missing (apt-get install groff-base)"
    (tmp_path / "caiasoft-gateway.8").write_text(page)
    result = subprocess.run(
        [groff, "-man", "-ww", "-z", str(tmp_path / "caiasoft-gateway.8")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
