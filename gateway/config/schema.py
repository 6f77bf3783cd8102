"""Every config key the gateway knows: its section, TOML type, default and meaning.

gateway.config.loader reads and validates files against this; conf/gateway.toml and
docs/configuration.md (written by tools/config-reference --write) must name every key, and
gateway.toml(5) is written from it (gateway/cli/configpage.py).

To add a key:
  1. declare it below, in its table, with kind, default (or REQUIRED), doc and bounds;
  2. add a field of the same name to that table's dataclass in gateway/config/settings.py
     (for [[sources]]: to LocalSourceSettings and/or SftpSourceSettings);
  3. if a value needs more than its kind, choices and minimum, check it in gateway/config/rules.py;
  4. name it in conf/gateway.toml and run tools/config-reference --write (docs/configuration.md).
tests/test_config.py fails until 2 and 4 are done.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.settings import ALERT_EVENTS, IN_STATUSES, OUT_STATUSES

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    """One config key: its TOML type, default (or REQUIRED) and what it means."""

    name: str
    kind: str  # str | int | number | bool | path | strings | table (free keys) | section (a sub-table of keys)
    default: Any
    doc: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None


SCHEMA: dict[str, tuple[Key, ...]] = {
    "paths": (
        Key(
            "state_dir",
            "path",
            Path("/var/lib/caiasoft-gateway"),
            "Ledger (gateway.db), lock file and work/ folder of files in flight.",
        ),
        Key(
            "archive_dir",
            "path",
            Path("/var/lib/caiasoft-gateway/archive"),
            "Files CaiaSoft accepted, as archive_dir/YYYY/MM/DD/NAME with NAME.json beside.",
        ),
        Key(
            "error_dir",
            "path",
            Path("/var/lib/caiasoft-gateway/error"),
            "Files refused by CaiaSoft or by the gateway, with the reason in NAME.json. Not archive_dir itself.",
        ),
        Key(
            "log_dir",
            "path",
            Path("/var/log/caiasoft-gateway"),
            "gateway.log, one JSON object a line. None of these folders may be, hold or lie in a source folder.",
        ),
    ),
    "caiasoft": (
        Key("base_url", "str", REQUIRED, "Your CaiaSoft site, e.g. https://SITE.caiasoft.com."),
        Key(
            "api_key_file",
            "path",
            None,
            "File holding the API key (mode 0600 or 0640). One of api_key_file, api_key_env "
            "or a systemd credential named caiasoft-api-key.",
        ),
        Key("api_key_env", "str", None, "Name of an environment variable holding the API key."),
        Key("requestfile_path", "str", "/api/requestfile/v1", "Path of the request-file endpoint."),
        Key("upload_field", "str", "file", "Multipart form field that carries the file."),
        Key("extra_fields", "table", {}, "Extra form fields sent with every upload (strings)."),
        Key(
            "timeout_seconds",
            "number",
            30.0,
            "Timeout for connecting and for each wait for data from CaiaSoft.",
            minimum=1,
        ),
        Key(
            "deadline_seconds",
            "number",
            90.0,
            "Longest one call to CaiaSoft may take in all (connect, send the file, read the answer); "
            "past it the connection is cut and the upload is retried later. Keep it below the unit's "
            "WatchdogSec (120).",
            minimum=1,
        ),
        Key(
            "max_answer_bytes",
            "int",
            1024 * 1024,
            "CaiaSoft's answer is read up to this size; the rest is never read, and only an excerpt "
            "of an answer that is not JSON is kept (ledger, sidecar).",
            minimum=1024,
        ),
        Key(
            "unreadable_answer_retries",
            "int",
            2,
            "A 2xx answer that is not CaiaSoft's JSON (a proxy's maintenance page) may mean CaiaSoft has "
            "the file: it is sent again at most this many times, then goes to error_dir.",
            minimum=0,
        ),
        Key(
            "verify_tls",
            "bool",
            True,
            "Verify CaiaSoft's TLS certificate. Leave on. REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE in the "
            "environment are ignored: the config decides.",
        ),
        Key(
            "ca_file",
            "path",
            None,
            "CA bundle to verify CaiaSoft with, if not the default one (certifi's, shipped with requests).",
        ),
        Key(
            "backoff_initial_seconds",
            "number",
            2.0,
            "First wait after a transient failure; doubles each time.",
            minimum=0.01,
        ),
        Key("backoff_max_seconds", "number", 300.0, "Longest wait between retries.", minimum=0.01),
        Key(
            "auth_pause_seconds",
            "number",
            300.0,
            "After a 401/403, uploads pause this long before trying again.",
            minimum=0.01,
        ),
        Key(
            "upload_workers",
            "int",
            4,
            "Uploads on the wire at once; each starts in the order files arrived.",
            minimum=1,
        ),
    ),
    "intake": (
        Key("max_file_bytes", "int", 50 * 1024 * 1024, "Larger files are refused.", minimum=1),
        Key(
            "text_fallback_encoding",
            "str",
            "",
            "Encoding tried when a text file is not UTF-8 (e.g. cp1252); empty = UTF-8 only.",
        ),
    ),
    "archive": (
        Key(
            "retention_days",
            "int",
            0,
            "Archive days older than this are deleted, counted on the ledger's time if the clock is more than "
            '36 hours ahead of it (docs/design.md, "The clock is not trusted"; prune --trust-clock); 0 keeps '
            "everything. The ledger keeps, per item, what `find` needs of the files removed.",
            minimum=0,
        ),
        Key(
            "error_retention_days",
            "int",
            0,
            "Days in error_dir older than this are deleted too, the same way; 0 (the default) keeps every "
            "refused file until an admin deals with it.",
            minimum=0,
        ),
    ),
    "sources": (
        Key("name", "str", REQUIRED, "Short unique name, shown in logs, sidecars and status."),
        Key("path", "path", None, "The folder ALEPH writes request files into (a local or mounted folder)."),
        Key("url", "str", None, "Instead of path: an SFTP folder, sftp://user@host:port/remote/folder."),
        Key(
            "include",
            "strings",
            ["*"],
            "Glob patterns of file names to take; in ALEPH's print folder (files "
            'named NAME.PRINT-ID), the print IDs meant for CaiaSoft, e.g. ["*.hold_req"].',
        ),
        Key(
            "settle_seconds",
            "number",
            2.0,
            "A file is ready once its size and mtime have not changed for this long.",
            minimum=0,
        ),
        Key(
            "incomplete_grace_seconds",
            "number",
            300.0,
            "A file that looks unfinished at its end (XML not closed, last text line without a newline, "
            "empty) waits this long unchanged before it is taken as it is (and refused if invalid).",
            minimum=0,
        ),
        Key(
            "keep_original_seconds",
            "number",
            300.0,
            "Where a writer cannot be seen (SFTP, network mounts, no CAP_LEASE) the original stays in the "
            "source after it was taken, and is removed (or moved) only once its outcome is known and it "
            "stayed unchanged this long; if it changed, it is taken again whole. Set it above the longest "
            "pause of ALEPH's writer.",
            minimum=0,
        ),
        Key(
            "ready_marker",
            "str",
            "",
            'Optional marker mode: a file is taken only once its marker exists, e.g. "{name}.done" '
            "(created by ALEPH's job after the file is written). Markers are never uploaded; each is "
            "removed once its file is taken. Empty = off.",
        ),
        Key(
            "watch",
            "str",
            "auto",
            "auto: inotify on local disks, polling on network mounts; or force one.",
            choices=("auto", "inotify", "polling"),
        ),
        Key(
            "rescan_seconds",
            "number",
            30.0,
            "With inotify: a full rescan this often anyway (events can be lost).",
            minimum=0.1,
        ),
        Key(
            "poll_seconds",
            "number",
            2.0,
            "With polling (network mounts) and SFTP: how often the folder is listed.",
            minimum=0.1,
        ),
        Key(
            "known_hosts_file",
            "path",
            None,
            "SFTP: known_hosts file holding the server's host key. Required: keys are never auto-accepted.",
        ),
        Key("private_key_file", "path", None, "SFTP: the private key to log in with."),
        Key("private_key_passphrase_file", "path", None, "SFTP: file holding the private key's passphrase."),
        Key(
            "private_key_passphrase_env",
            "str",
            None,
            "SFTP: environment variable holding the private key's passphrase.",
        ),
        Key(
            "password_file", "path", None, "SFTP: file holding a password; password login is used only if this is set."
        ),
        Key(
            "remote_after",
            "str",
            "delete",
            "SFTP: after CaiaSoft accepted or refused a file, delete it remotely, or move it: "
            '"move:/remote/done/folder".',
        ),
        Key("timeout_seconds", "number", 30.0, "SFTP: timeout of connect, login and every SFTP call.", minimum=1),
        Key(
            "caiasoft",
            "str",
            "default",
            'The CaiaSoft connection its files go to: "default" ([caiasoft]) or the NAME of a [caiasoft.NAME] '
            "table. Its files are recorded with it when taken, and wait for it if it is removed.",
        ),
    ),
    "ncip": (
        Key(
            "url",
            "str",
            REQUIRED,
            "ALEPH's NCIP server: http(s)://HOST:PORT/PATH (its NCIP port, or the web server's /ncip path), "
            "or tcp://HOST:PORT[/PATH] for a raw socket to the NCIP port (a PATH only with framing = http10).",
        ),
        Key(
            "framing",
            "str",
            "http10",
            "tcp:// only: what is written on the socket. http10 (as the most used open-source ALEPH client does): "
            '"POST PATH HTTP/1.0", Content-Length, Content-Type (form_content_type), a blank line, then the '
            "message itself, not URL-encoded; bare: the message alone. Either way the answer is read until it "
            "holds a whole NCIPMessage or the server closes, with or without an HTTP status line before it.",
            choices=("http10", "bare"),
        ),
        Key(
            "version",
            "str",
            "1",
            "NCIP version the server speaks: 1 (what ALEPH's NCIP server speaks) or 2 "
            "(NCIP 2.02, for servers that need it).",
            choices=("1", "2"),
        ),
        Key(
            "send_as",
            "str",
            "body",
            "HTTP only: how the message travels: body (POSTed as the request body), "
            "query (URL-encoded after '?', as ALEPH's web server takes it: http://HOST:8991/ncip?MESSAGE) or form "
            "(URL-encoded in a POST body).",
            choices=("body", "query", "form"),
        ),
        Key("content_type", "str", "text/xml; charset=UTF-8", "HTTP only, send_as = body: the Content-Type sent."),
        Key(
            "form_content_type",
            "str",
            "application/x-www-form-urlencoded",
            "The Content-Type sent with send_as = form (one ALEPH client labels the URL-encoded message "
            '"text/html; charset=UTF-8") and on tcp:// with framing = http10.',
        ),
        Key(
            "max_answer_bytes",
            "int",
            1048576,
            "Largest NCIP answer read; a longer one counts as unreadable (see unreadable_attempts).",
            minimum=1024,
        ),
        Key(
            "unreadable_attempts",
            "int",
            5,
            "Unreadable answers (not NCIP) for one entry before it goes to the "
            "dead letters with an excerpt of the answer; each attempt after a backoff.",
            minimum=1,
        ),
        Key(
            "client_error_tries",
            "int",
            5,
            "HTTP client errors (4xx other than 408 and 429: the server will not "
            "take this message) for one entry in a row before it goes to the dead letters and the next entry is "
            "sent; each try after a backoff.",
            minimum=1,
        ),
        Key("from_agency", "str", REQUIRED, "FROM Unique Agency ID (CAIAAGENCY): the CaiaSoft agency."),
        Key("to_agency", "str", REQUIRED, "TO Unique Agency ID (CLIENTAGENCY): the ALEPH agency."),
        Key(
            "application_profile",
            "str",
            "",
            "Application Profile Type (CAIAPROFILE), sent on check-in only; empty = not sent.",
        ),
        Key("user_id", "str", REQUIRED, "User ID (CAIAUSER) for check-outs whose stop has no own user."),
        Key("stop_users", "table", {}, 'User ID per circulation stop, as [ncip.stop_users] STOP = "USER".'),
        Key(
            "journal",
            "path",
            Path("/var/lib/caiasoft-gateway/ncip.jsonl"),
            "The journal of checkout/checkin entries to relay (JSON Lines).",
        ),
        Key(
            "timeout_seconds",
            "number",
            30.0,
            "Total deadline of one NCIP exchange: connect, send the message and read the whole answer.",
            minimum=1,
        ),
        Key(
            "backoff_initial_seconds",
            "number",
            2.0,
            "First wait after a failed attempt; doubles each time.",
            minimum=0.01,
        ),
        Key("backoff_max_seconds", "number", 300.0, "Longest wait between attempts.", minimum=0.01),
        Key(
            "done_problems_checkin",
            "strings",
            ["Item Not Checked Out", "Item not on loan"],
            "Problems that mean a check-in was already done: matched, ignoring case, as parts of the Problem's "
            'type, detail or value (ALEPH: "Item Not Checked Out", value "Item not on loan.").',
        ),
        Key(
            "done_problems_checkout",
            "strings",
            ["Already Checked Out", "Duplicate", "Loan cannot be renewed (no change in due date)"],
            "Problems that mean a check-out was already done, matched the same way (ALEPH answers a repeated "
            'check-out with "Apply to circulation desk - Loan cannot be renewed (no change in due date)").',
        ),
        Key(
            "temporary_problems",
            "strings",
            ["Temporary Processing Failure"],
            "Problems that are retried instead of dead-lettered, matched the same way.",
        ),
        Key(
            "request_agency",
            "str",
            "from",
            "NCIP 1 only: whose agency id UniqueRequestId carries on a check-out: from (from_agency, as ALEPH "
            "clients send it) or to (to_agency).",
            choices=("from", "to"),
        ),
        Key(
            "agency_scheme",
            "str",
            "http://www.niso.org/ncip/v1_0/schemes/agencyidtype/agencyidtype.scm",
            "NCIP 1 only: the Scheme of UniqueAgencyId.",
        ),
        Key("max_line_bytes", "int", 65536, "Longer journal lines go to the dead letters.", minimum=256),
        Key("feed", "section", None, "Optional [ncip.feed]: journal CaiaSoft's retrieved/refiled lists."),
    ),
    "ncip.feed": (
        Key("collection", "str", REQUIRED, "The CaiaSoft collection whose retrieved/refiled lists are read."),
        Key("interval_seconds", "number", 300.0, "How often the lists are read.", minimum=10),
        Key("lookback_days", "int", 1, "Days before today that each read covers too (late refiles).", minimum=0),
        Key(
            "retrievalinfo_path",
            "str",
            "/api/retrievalinfo/v1/{from}/{to}/{collection}",
            "Where retrievalinfo is asked for a day's retrievals ({from} and {to}: YYYYMMDD, {collection}), as the "
            "lists are; CaiaSoft's guide does not show this path, so it is a setting. Empty = not asked (check-outs "
            "then carry no request id and go in the retrieved list's order).",
        ),
        Key(
            "in_statuses",
            "strings",
            list(IN_STATUSES),
            "CaiaSoft item statuses (itemstatus) that mean the item is in the facility. Asked only for an item "
            "retrieved and refiled on the same day, to journal the two in the order that leaves ALEPH as CaiaSoft "
            'has the item. Matched ignoring case, spacing and a trailing date ("... on 08-02-2018"). Setting it '
            "replaces the whole list: keep the phrases of the default you still want.",
        ),
        Key(
            "out_statuses",
            "strings",
            list(OUT_STATUSES),
            "CaiaSoft item statuses that mean the item is out of the facility, matched the same way. A status in "
            "neither list is unknown: that item's same-day retrieval and refile are not journaled (the log, "
            "status and an unknown_status alert name the status) until its status is known.",
        ),
        Key(
            "no_checkout_types",
            "strings",
            ["ERT"],
            'Retrieval types (retrievalinfo\'s "retrieval type") that do not check the item out in ALEPH: ERT, '
            "an electronic retrieval (the item is scanned and stays in the facility). Not empty: to have every "
            "retrieval check out, name a type CaiaSoft never sends.",
        ),
        Key(
            "caiasoft",
            "str",
            "",
            "The CaiaSoft connection whose lists are read (with its key): empty = the one named like this NCIP "
            'server ([ncip.NAME.feed] reads [caiasoft.NAME]), else "default".',
        ),
    ),
    "alerts": (
        Key("smtp_host", "str", "localhost", "Mail server the alerts go through (the host's own MTA by default)."),
        Key("smtp_port", "int", 25, "Its port (25; 587 for a relay with STARTTLS).", minimum=1),
        Key("starttls", "bool", False, "Use STARTTLS, with the server's certificate verified."),
        Key("username", "str", "", "Login for an authenticated relay (with password_file); empty = no login."),
        Key("password_file", "path", None, "File holding the relay's password (mode 0600 or 0640)."),
        Key("from", "str", "caiasoft-gateway@localhost", "Sender address of the alert mails."),
        Key("to", "strings", ["root@localhost"], "Who gets the alert mails."),
        Key(
            "webhook_url",
            "str",
            "",
            "Optional: also POST each alert as JSON to this URL (chat tools, incident systems); empty = off.",
        ),
        Key(
            "events",
            "strings",
            list(ALERT_EVENTS),
            "What is alerted: refused (a file went to error_dir), denied (CaiaSoft denied items), paused (the API "
            "key was refused), unreachable (CaiaSoft or NCIP failing for unreachable_after_seconds), dead_letter "
            "(NCIP refused an entry), source_problem (a source cannot be read for a minute), stuck (a file "
            "waiting longer than unreachable_after_seconds), unknown_status (the status feed met a CaiaSoft item "
            "status it does not know).",
        ),
        Key(
            "unreachable_after_seconds",
            "number",
            900.0,
            'CaiaSoft or NCIP failing this long raises "unreachable"; a file pending this long is "stuck".',
            minimum=1,
        ),
        Key(
            "min_interval_seconds",
            "number",
            900.0,
            "The first alert of a kind goes at once; more of that kind are gathered into one digest per interval.",
            minimum=0,
        ),
    ),
    "metrics": (
        Key(
            "listen",
            "str",
            "127.0.0.1:9464",
            "Serve GET /metrics (Prometheus text format) on HOST:PORT; empty = off. Keep it on loopback and let "
            "a reverse proxy or the local node_exporter/Prometheus reach it.",
        ),
        Key(
            "textfile",
            "path",
            None,
            "Or also write the same figures to this .prom file (node_exporter's textfile directory), "
            "atomically, every 15 s.",
        ),
    ),
    "web": (
        Key(
            "listen",
            "str",
            "127.0.0.1:9465",
            "The staff page (`caiasoft-gateway web`) serves HOST:PORT. Without TLS it belongs on loopback: put the "
            "site's web server (nginx, Apache) with TLS in front of it to reach it from the circulation desk.",
        ),
        Key(
            "users_file",
            "path",
            None,
            "Ask for a name and password (HTTP basic auth) from the users in this file (`caiasoft-gateway "
            "web-user NAME` adds one, with a salted hash); not set = no login (loopback only).",
        ),
    ),
}
