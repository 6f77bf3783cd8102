"""gateway.toml(5), written from the config schema (gateway.config.schema), so every key is on it as the loader
reads it: its table, TOML type, default and meaning.

`python -m gateway.cli.manpage gateway.toml` prints it; the install puts it in /usr/local/share/man/man5/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.cli.manpage import DOCS, roff
from gateway.config.loader import CONFIG_ENV, DEFAULT_CONFIG, OPTIONAL_TABLES
from gateway.config.schema import REQUIRED, SCHEMA, Key

# The TOML type each kind of key is read as (gateway.config.tables converts them).
TYPES = {
    "str": "string",
    "int": "integer",
    "number": "number",
    "bool": "boolean",
    "path": "string, an absolute path",
    "strings": "array of strings, not empty",
    "table": "table of strings",
    "section": "table",
}
# What a table is for, where the schema alone does not say it.
NOTES = {
    "caiasoft": "Required: the CaiaSoft connection named default. Each [caiasoft.NAME] table (NAME: letters, digits, "
    "- or _) adds a connection with these same keys, whole on its own (nothing is taken from [caiasoft]); its key may "
    "also come from the systemd credential caiasoft-api-key-NAME. A source names its connection with caiasoft.",
    "sources": "One [[sources]] table per folder watched, at least one: a local or mounted folder (path) or "
    "an SFTP folder (url).",
    "ncip": "Optional: without it, nothing is relayed to ALEPH over NCIP. Each [ncip.NAME] table adds an NCIP server "
    "with these same keys, whole on its own, with a journal of its own (default ncip-NAME.jsonl beside this one's).",
    "alerts": "Optional: without it, no alert is sent.",
    "metrics": "Optional: without it, no metrics are served or written.",
}


def header(table: str) -> str:
    """How a table is written in the file: [name], or [[sources]] for the array of tables."""
    return "[[sources]]" if table == "sources" else f"[{table}]"


def toml_value(value: Any) -> str:
    """A default as it would be written in the file."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, Path)):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{name} = {toml_value(item)}" for name, item in value.items()) + "}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _key(key: Key) -> list[str]:
    if key.default is REQUIRED:
        default = "required"
    elif key.default is None:
        default = "not set"
    else:
        default = "default " + roff(toml_value(key.default))
    tag = f"\\fB{roff(key.name)}\\fR (\\fI{roff(TYPES[key.kind])}\\fR; {default})"
    text = key.doc
    if key.choices:
        text += " One of: " + ", ".join(key.choices) + "."
    if key.minimum is not None:
        text += f" At least {key.minimum:g}."
    return [".TP", tag, roff(text)]


def _intro(table: str, keys: tuple[Key, ...]) -> str:
    parent, _, child = table.rpartition(".")
    if parent:  # a sub-table: its parent's key of kind "section" says what it is
        [section] = [key for key in SCHEMA[parent] if key.name == child and key.kind == "section"]
        return section.doc
    if table in NOTES:
        return NOTES[table]
    if table in OPTIONAL_TABLES:
        return "Optional."
    if any(key.default is REQUIRED for key in keys):
        return "Required."
    return "May be left out: every key then has its default."


def render() -> str:
    """The whole page, in man(7) roff."""
    lines = [
        f'.TH GATEWAY.TOML 5 "" "caiasoft-gateway {roff(__version__)}" "File Formats"',
        ".SH NAME",
        "gateway.toml \\- configuration file of caiasoft\\-gateway(8)",
        ".SH SYNOPSIS",
        roff(str(DEFAULT_CONFIG)),
        ".SH DESCRIPTION",
        "The configuration of the ALEPH to CaiaSoft gateway, in TOML. Unknown tables and keys are an error, "
        "so a typo never silently switches something off; a key left out has its default, and a key marked "
        "required must be given where its table is. "
        "\\fBcaiasoft\\-gateway check\\fR lists every problem of a file; the service reads it at start and again "
        "on SIGHUP (\\fBsystemctl reload caiasoft\\-gateway\\fR), where an invalid file is refused and the "
        "service keeps running on the one it has.",
        ".PP",
        "Each key below is shown with its TOML type (a number may be written as an integer or a float) and its "
        "default.",
    ]
    for table, keys in SCHEMA.items():
        lines += [f'.SH "{roff(header(table))}"', roff(_intro(table, keys))]
        for key in keys:
            lines += _key(key)
    lines += [
        ".SH ENVIRONMENT",
        ".TP",
        f"\\fB{roff(CONFIG_ENV)}\\fR",
        f"The file to read instead of {roff(str(DEFAULT_CONFIG))}, unless \\fB\\-c\\fR \\fIFILE\\fR is given.",
        ".SH FILES",
        ".TP",
        roff(str(DEFAULT_CONFIG)),
        "the configuration",
        ".TP",
        roff(str(DEFAULT_CONFIG.parent / "api-key")),
        "the API key, as the sample configuration names it in api_key_file",
        ".SH SEE ALSO",
        f"\\fBcaiasoft\\-gateway\\fR(8), {roff(DOCS)}/docs/configuration.md",
    ]
    return "\n".join(lines) + "\n"
