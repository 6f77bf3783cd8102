"""`check`: everything an admin needs to be true before starting the service, checked and named."""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config.loader import Config
from gateway.config.settings import LocalSourceSettings, Ncip, SftpSourceSettings, SourceSettings
from gateway.core.errors import SourceUnavailable
from gateway.core.states import Verdict
from gateway.sources import writers
from gateway.sources.folder import FolderReplaced, HeldFolder, own_folders
from gateway.sources.local import NETWORK_FILESYSTEMS, choose_mode, filesystem_type
from gateway.upload.caiasoft import CaiaSoftClient


@dataclass(frozen=True)
class Result:
    mark: str  # ok | WARN | FAIL
    what: str
    detail: str = ""


def run_checks(config: Config, offline: bool = False, ncip_item: str | None = None) -> Iterator[Result]:
    """Every check in order; with ncip_item, also a read-only NCIP LookupItem for that barcode."""
    yield Result("ok", f"configuration {config.file}")
    for warning in config.warnings:
        yield Result("WARN", "secret file permissions", warning)
    for key in ("state_dir", "archive_dir", "error_dir", "log_dir"):
        yield _writable_folder(f"paths.{key}", getattr(config.paths, key))
    for index, source in enumerate(config.sources):
        yield from _source(index, source, config.paths.state_dir, own_folders(config))
    if config.ncip:
        yield from _ncip_local(config.ncip)
    if offline:
        yield Result("ok", "CaiaSoft and NCIP not contacted (--offline)")
    else:
        yield _caiasoft(config)
        if config.ncip:
            reached = _ncip(config.ncip.url, config.ncip.timeout_seconds)
            yield reached
            if ncip_item and reached.mark == "ok":
                from gateway.ncip import probe

                for finding in probe.lookup(config.ncip, ncip_item):
                    yield Result(finding.mark, finding.what, finding.detail)
            elif not ncip_item and reached.mark == "ok":
                yield Result(
                    "ok",
                    "NCIP version and agencies not checked",
                    "caiasoft-gateway check --ncip-item BARCODE asks ALEPH about one item (read-only) "
                    "and tells which version it answers in",
                )


def service_folders(config: Config) -> list[tuple[str, Path]]:
    """Every folder the service writes in, by the setting that names it."""
    folders = [
        (f"paths.{key}", Path(getattr(config.paths, key)))
        for key in ("state_dir", "archive_dir", "error_dir", "log_dir")
    ]
    if config.ncip:
        folders.append(("ncip.journal (its folder)", config.ncip.journal.parent))
    if config.metrics and config.metrics.textfile is not None:
        folders.append(("metrics.textfile (its folder)", config.metrics.textfile.parent))
    folders += [
        (f"sources[{index}].path", source.path)
        for index, source in enumerate(config.sources)
        if isinstance(source, LocalSourceSettings)
    ]
    return folders


def unit_sandbox(config: Config, unit: Path, root: Path = Path("/")) -> Iterator[Result]:
    """The installed unit's sandbox against the folders the service writes: a FAIL for each it cannot write."""
    from gateway.cli import asservice

    if not unit.is_file():
        return
    try:
        identity = asservice.read_unit(unit)
    except asservice.AsServiceError as error:
        yield Result("FAIL", f"the unit {unit}", str(error))
        return
    problems = asservice.sandbox_problems(identity, service_folders(config), root)
    for problem in problems:
        yield Result("FAIL", "the unit's sandbox", problem)
    if not problems:
        yield Result("ok", f"the unit's sandbox ({unit})", "every folder the gateway writes is writable under it")


def _ncip_local(ncip: Ncip) -> Iterator[Result]:
    yield _writable_folder("ncip.journal (its folder)", ncip.journal.parent)
    yield _journal(ncip.journal)
    if ncip.feed:
        yield _feed_users(ncip)


def _journal(path: Path) -> Result:
    """The journal as the relay opens it: a regular file, never through a link, never blocking."""
    from gateway.ncip.journal import JournalRefused, open_journal

    try:
        fd = open_journal(path)
    except JournalRefused as error:
        return Result("FAIL", "ncip.journal", str(error))
    if fd is None:
        return Result("ok", f"ncip.journal {path}", "not there yet: the first `journal` command (or the feed) makes it")
    os.close(fd)
    return Result("ok", f"ncip.journal {path}", "a regular file")


def _feed_users(ncip: Ncip) -> Result:
    """The status feed cannot choose a stop's user: no CaiaSoft endpoint it reads gives the stop."""
    what = f"status feed (collection {ncip.feed.collection if ncip.feed else ''})"
    detail = (
        f"CaiaSoft's retrieval lists give no circulation stop: every feed check-out goes to ncip.user_id "
        f"({ncip.user_id})"
    )
    if ncip.stop_users:
        return Result("WARN", what, f"{detail}; [ncip.stop_users] applies only to journal entries that carry a stop")
    return Result("ok", what, detail)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def _writable_folder(key: str, path: Path) -> Result:
    if path.exists():
        if not path.is_dir():
            return Result("FAIL", f"{key} {path}", "exists but is not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            return Result("FAIL", f"{key} {path}", f"not writable by {_user()}")
        return Result("ok", f"{key} {path}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if os.access(parent, os.W_OK | os.X_OK):
        return Result("ok", f"{key} {path}", "does not exist yet; will be created")
    return Result("FAIL", f"{key} {path}", f"does not exist, and {_user()} cannot create it in {parent}")


def _never_read(source: LocalSourceSettings, own: tuple[tuple[Path, ...], tuple[Path, ...]]) -> str | None:
    """Why the service would pause this folder at once (a symlink, one of the gateway's folders), or None."""
    held = HeldFolder(source.path, *own)
    try:
        held.fd()
    except FolderReplaced as error:
        return str(error)
    except OSError:
        return None  # missing or unreadable: said by the checks that follow
    finally:
        held.close()
    return None


def _source(
    index: int, source: SourceSettings, state_dir: Path, own: tuple[tuple[Path, ...], tuple[Path, ...]] = ((), ())
) -> Iterator[Result]:
    label = f"sources[{index}] {source.name}: {source.location}"
    if isinstance(source, SftpSourceSettings):
        yield _sftp(label, source)
        yield _writers(
            label,
            source,
            False,
            "SFTP: a writer on the server cannot be seen from here; "
            f"rely on settle_seconds (now {source.settle_seconds:g}; set it above the longest pause of "
            "ALEPH's writer, e.g. 30) or ready_marker",
        )
        return
    if (paused := _never_read(source, own)) is not None:
        yield Result("FAIL", label, paused)
        return
    if not source.path.is_dir():
        yield Result("FAIL", label, "folder does not exist (or is not a folder)")
        return
    if not os.access(source.path, os.R_OK | os.X_OK):
        yield Result("FAIL", label, f"{_user()} cannot list this folder")
        return
    if not os.access(source.path, os.W_OK):
        yield Result(
            "FAIL",
            label,
            f"{_user()} cannot move files out of this folder (needs write permission "
            "on the folder, e.g. through ALEPH's group)",
        )
        return
    mode = choose_mode(source)
    filesystem = filesystem_type(source.path)
    yield Result("ok", label, f"watched by {mode} (filesystem {filesystem or 'unknown'})")
    yield _writers(
        label,
        source,
        *writers.writer_detection(source.path, filesystem in NETWORK_FILESYSTEMS, filesystem, source.settle_seconds),
    )
    if state_dir.exists() and os.stat(state_dir).st_dev != os.stat(source.path).st_dev:
        yield Result(
            "WARN",
            label,
            f"on another filesystem than {state_dir}: files are copied and then "
            "deleted instead of renamed in one atomic step",
        )


def _writers(label: str, source: SourceSettings, detectable: bool, why: str) -> Result:
    """Whether a file still open for writing can be told from a finished one in this source."""
    what = f"{label}: open writers"
    if source.ready_marker:
        return Result(
            "ok",
            what,
            f"marker mode: a file is taken once {source.ready_marker} exists "
            f"({'and nobody has it open' if detectable else why.split(';')[0]})",
        )
    if detectable:
        return Result(
            "ok", what, f"{why} (checked as {_user()}; a file that changes after it is taken is taken again whole)"
        )
    return Result(
        "WARN",
        what,
        f"cannot be detected: {why}. A file that changes after it is taken is "
        "taken again whole, but waiting long enough avoids sending partial versions",
    )


def _sftp(label: str, settings: SftpSourceSettings) -> Result:
    from gateway.sources.sftp import SftpSource

    remote = SftpSource(settings)
    try:
        return Result("ok", label, remote.describe_folder())
    except SourceUnavailable as error:
        return Result("FAIL", label, str(error))
    finally:
        remote.stop()


def _ncip(url: str, timeout: float) -> Result:
    """A TCP connect to the NCIP server: proves address, port and firewall without sending a message."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as error:
        return Result(
            "FAIL",
            f"NCIP server {url}",
            f"cannot connect to {parts.hostname}:{port}: "
            f"{error.strerror or error} (a firewall between this host and ALEPH's NCIP port?)",
        )
    return Result("ok", f"NCIP server {url}", f"{parts.hostname}:{port} accepts connections")


def _caiasoft(config: Config) -> Result:
    client = CaiaSoftClient(config.caiasoft, config.api_key)
    try:
        outcome = client.check()
    finally:
        client.close()
    where = f"CaiaSoft {config.caiasoft.base_url}"
    if outcome.verdict == Verdict.ACCEPTED:
        stops = outcome.answer.get("count") if isinstance(outcome.answer, dict) else None
        return Result(
            "ok",
            where,
            f"reached in {outcome.elapsed_ms} ms, API key accepted"
            + (f", {stops} active circulation stop(s)" if stops is not None else ""),
        )
    return Result("FAIL", where, outcome.reason)
