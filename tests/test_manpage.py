"""caiasoft-gateway(8) is written from the argument parser and gateway.toml(5) from the config schema: every
command, option, table and key is on its page, and groff reads both without a warning."""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from gateway.cli import configpage
from gateway.cli.main import _parser
from gateway.cli.manpage import main, render, roff
from gateway.config.schema import REQUIRED, SCHEMA


def groff_warnings(page: Path) -> list[str]:
    """What groff says reading the page with every warning on, as PostScript and as terminal text."""
    groff = shutil.which("groff")
    assert groff, "groff is missing (apt-get install groff-base)"
    said = []
    for device in ("ps", "utf8"):
        result = subprocess.run(
            [groff, "-man", "-ww", "-z", f"-T{device}", str(page)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        said += result.stderr.splitlines()
    return said


def test_every_command_and_option_is_on_the_page_and_groff_reads_it_clean(tmp_path):
    page = render()
    [commands] = [action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction)]
    for name, parser in commands.choices.items():
        assert f"\n.SS {name.replace('-', chr(92) + '-')}\n" in page, name  # hyphens escaped, as man(7) wants
        for action in parser._actions:
            for option in action.option_strings:
                if action.help != argparse.SUPPRESS and option not in ("-h", "--help"):
                    assert option.replace("-", chr(92) + "-") in page, (name, option)
    assert "--as-service" not in page and "\\-\\-as\\-service" in page  # hyphens escaped, as man(7) wants
    assert "\\fBgateway.toml\\fR(5)" in page
    (tmp_path / "caiasoft-gateway.8").write_text(page)
    assert groff_warnings(tmp_path / "caiasoft-gateway.8") == []


def test_every_key_of_every_table_is_on_the_config_page_with_its_type_and_default(tmp_path):
    page = configpage.render()
    assert page.startswith(".TH GATEWAY.TOML 5 ")
    sections = {part.split("\n", 1)[0]: part for part in page.split("\n.SH ")[1:]}
    for table, keys in SCHEMA.items():
        title = '"[[sources]]"' if table == "sources" else f'"[{table}]"'
        assert title in sections, f"no section for {table}"
        entries = sections[title].split("\n.TP\n")[1:]
        assert [entry.split(" ", 1)[0] for entry in entries] == [f"\\fB{key.name}\\fR" for key in keys], table
        for key, entry in zip(keys, entries, strict=True):
            tag, doc = entry.split("\n")[:2]
            assert f"(\\fI{configpage.TYPES[key.kind]}\\fR; " in tag, (table, key.name)
            if key.default is REQUIRED:
                assert tag.endswith("; required)"), (table, key.name)
            elif key.default is not None:
                assert tag.endswith(f"; default {roff(configpage.toml_value(key.default))})"), (table, key.name)
            assert doc.startswith(roff(key.doc)), (table, key.name)
    assert '"/var/lib/caiasoft\\-gateway/archive"' in sections['"[paths]"']  # a default as written in TOML
    assert "; default true)" in sections['"[caiasoft]"'] and "; default 30)" in sections['"[caiasoft]"']
    for part in ("FILES\n.TP\n/etc/caiasoft\\-gateway/gateway.toml\n", "SEE ALSO\n\\fBcaiasoft\\-gateway\\fR(8)"):
        assert part in page
    (tmp_path / "gateway.toml.5").write_text(page)
    assert groff_warnings(tmp_path / "gateway.toml.5") == []


def test_the_module_prints_the_page_it_is_asked_for(capsys):
    assert main([]) == 0 and capsys.readouterr().out == render()
    assert main(["caiasoft-gateway"]) == 0 and capsys.readouterr().out == render()
    assert main(["gateway.toml"]) == 0 and capsys.readouterr().out == configpage.render()
    assert main(["gateway.conf"]) == 2
    said = capsys.readouterr()
    assert said.out == "" and "caiasoft-gateway | gateway.toml" in said.err
