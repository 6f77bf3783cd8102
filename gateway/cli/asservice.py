"""`check --as-service`: run `check` as the installed unit runs the service.

Read from the unit and its drop-ins: the user, its groups and SupplementaryGroups=, the capabilities
(AmbientCapabilities=), the API key credential (LoadCredential=) and the command (ExecStart=). Then run
`check` with them through setpriv (util-linux), so a green `check` means the service can do what it
checks. The unit's sandbox is not applied, but what it takes away from the gateway's own folders is compared:
sandbox_problems() names each folder the config writes that ProtectSystem=, PrivateTmp= or ProtectHome= hide
or make read-only for the service (the unit's StateDirectory=, LogsDirectory= and ReadWritePaths= are writable).
installed_unit_warnings() says when the running systemd is older than a directive the installed unit relies on.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gateway.config.credentials import CREDENTIAL_NAME

UNIT = Path("/etc/systemd/system/caiasoft-gateway.service")
SETPRIV = "setpriv"
NEWEST_DIRECTIVES = {
    "ProtectProc": 247,
    "LoadCredential": 247,
    "ProtectClock": 245,
    "ProtectKernelLogs": 244,
    "ProtectHostname": 242,
    "RestrictSUIDSGID": 242,
}
CHECK_TIMEOUT_SECONDS = 600
DROPINS_NAME = f"{UNIT}.d"
DIRECTORY_SETTINGS = {
    "StateDirectory": "/var/lib",
    "LogsDirectory": "/var/log",
    "RuntimeDirectory": "/run",
    "CacheDirectory": "/var/cache",
}


class AsServiceError(Exception):
    """The unit cannot be read or run as it says (no unit, an unknown user or group, no setpriv)."""


@dataclass
class ServiceIdentity:
    """What the unit's [Service] section (with its drop-ins) says about who runs the service."""

    user: str = "root"
    group: str = ""
    supplementary: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    credentials: dict[str, str] = field(default_factory=dict)
    exec_start: str = ""
    directives: set[str] = field(default_factory=set)
    protect_system: str = "no"
    protect_home: str = "no"
    private_tmp: bool = False
    writable: list[str] = field(default_factory=list)  # ReadWritePaths= and the *Directory= folders


def _service_lines(path: Path) -> list[tuple[str, str]]:
    """(key, value) of each setting in the [Service] section of one unit file or drop-in."""
    settings: list[tuple[str, str]] = []
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, _, value = line.partition("=")
            settings.append((key.strip(), value.strip()))
    return settings


def read_unit(unit: Path) -> ServiceIdentity:
    """The identity in unit and its drop-ins (UNIT.d/*.conf, in name order, as systemd reads them).

    Raise AsServiceError if the unit cannot be read.
    """
    try:
        files = [unit, *sorted(unit.with_name(unit.name + ".d").glob("*.conf"))]
        settings = [setting for path in files for setting in _service_lines(path)]
    except OSError as error:
        raise AsServiceError(f"cannot read the unit {unit}: {error.strerror or error}") from None
    identity = ServiceIdentity()
    for key, value in settings:
        identity.directives.add(key)
        if key == "User":
            identity.user = value
        elif key == "Group":
            identity.group = value
        elif key == "SupplementaryGroups":  # an empty assignment resets the list, as in systemd
            identity.supplementary = identity.supplementary + value.split() if value else []
        elif key == "AmbientCapabilities":
            identity.capabilities = identity.capabilities + value.split() if value else []
        elif key == "LoadCredential" and ":" in value:
            name, _, source = value.partition(":")
            identity.credentials[name] = source
        elif key == "ExecStart":
            identity.exec_start = value.lstrip("@-:+!").split()[0] if value.split() else ""
        else:
            _sandbox_setting(identity, key, value)
    return identity


def _sandbox_setting(identity: ServiceIdentity, key: str, value: str) -> None:
    """The settings that decide what the service can write: ProtectSystem=, ReadWritePaths= and the rest."""
    if key in ("ProtectSystem", "ProtectHome"):
        setattr(identity, "protect_system" if key == "ProtectSystem" else "protect_home", value.lower() or "no")
    elif key == "PrivateTmp":
        identity.private_tmp = value.lower() in ("yes", "true", "on", "1")
    elif key == "ReadWritePaths":  # "-" (ignore if missing) and "+" (outside RootDirectory=) prefixes
        identity.writable = identity.writable + [path.lstrip("-+") for path in value.split()] if value else []
    elif key in DIRECTORY_SETTINGS:
        identity.writable = identity.writable + [
            f"{DIRECTORY_SETTINGS[key]}/{name.split(':')[0]}" for name in value.split()
        ]


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/") or "/"
    return path == folder or path.startswith(folder if folder == "/" else folder + "/")


def sandbox_problems(identity: ServiceIdentity, folders: list[tuple[str, Path]], root: Path = Path("/")) -> list[str]:
    """A line for each (setting, folder) the service could not write under the unit's sandbox, with the fix.

    root is a scratch root the unit is installed in (its paths are seen under it); a folder outside it is
    taken as it is written.
    """
    problems: list[str] = []
    read_only = {
        "strict": ["/"],
        "full": ["/usr", "/boot", "/efi", "/etc"],
        "yes": ["/usr", "/boot", "/efi"],
        "true": ["/usr", "/boot", "/efi"],
    }.get(identity.protect_system, [])
    hidden_home = identity.protect_home in ("yes", "true", "read-only", "tmpfs")
    for setting, folder in folders:
        written = os.path.normpath(os.path.abspath(folder))
        seen = written
        if root != Path("/") and _under(written, str(root)):
            relative = os.path.relpath(written, root)
            seen = "/" if relative == "." else "/" + relative
        fix = (
            f"add `ReadWritePaths={written}` to {DROPINS_NAME}/site.conf (or install again with "
            f"--writable-path {written}), then systemctl daemon-reload"
        )
        if identity.private_tmp and (_under(seen, "/tmp") or _under(seen, "/var/tmp")):
            problems.append(
                f"{setting} {written}: the service has a /tmp of its own (PrivateTmp=yes) and "
                "would not see this folder: put it elsewhere (e.g. under /var/lib/caiasoft-gateway)"
            )
        elif hidden_home and any(_under(seen, home) for home in ("/home", "/root", "/run/user")):
            problems.append(f"{setting} {written}: ProtectHome= hides home folders from the service: put it elsewhere")
        elif any(_under(seen, folder) for folder in read_only) and not any(
            _under(seen, path) for path in identity.writable
        ):
            problems.append(
                f"{setting} {written} is read-only for the service (ProtectSystem="
                f"{identity.protect_system}; not in the unit's StateDirectory=, LogsDirectory= or "
                f"ReadWritePaths=): {fix}"
            )
    return problems


def _table(path: Path) -> list[list[str]]:
    try:
        return [
            line.split(":")
            for line in path.read_text(encoding="utf-8").splitlines()
            if line and not line.startswith("#") and line.count(":") >= 2
        ]
    except OSError as error:
        raise AsServiceError(f"cannot read {path}: {error.strerror or error}") from None


def ids(identity: ServiceIdentity, root: Path) -> tuple[int, int, list[int]]:
    """uid, gid and supplementary gids of the unit's user, from root's /etc/passwd and /etc/group.

    As systemd does: the user's own groups, then SupplementaryGroups=. On this host (root /) through the
    system's user database (NSS: LDAP and sssd groups too); in a scratch root from its files.
    Raise AsServiceError for a user or group that does not exist.
    """
    if root == Path("/"):
        return _host_ids(identity)
    users = {row[0]: row for row in _table(root / "etc" / "passwd") if len(row) >= 4}
    groups = {row[0]: row for row in _table(root / "etc" / "group") if len(row) >= 4}
    if identity.user not in users:
        raise AsServiceError(f"the unit's User={identity.user} does not exist in {root / 'etc' / 'passwd'}")
    uid, gid = int(users[identity.user][2]), int(users[identity.user][3])
    for name in ([identity.group] if identity.group else []) + identity.supplementary:
        if name not in groups:
            raise AsServiceError(f"the unit's group {name} does not exist in {root / 'etc' / 'group'}")
    if identity.group:
        gid = int(groups[identity.group][2])
    member_of = [int(row[2]) for row in groups.values() if identity.user in row[3].split(",")]
    extra = [int(groups[name][2]) for name in identity.supplementary]
    return uid, gid, sorted({gid, *member_of, *extra})


def _host_ids(identity: ServiceIdentity) -> tuple[int, int, list[int]]:
    try:
        user = pwd.getpwnam(identity.user)
    except KeyError:
        raise AsServiceError(f"the unit's User={identity.user} does not exist (getent passwd)") from None
    gids = {}
    for name in ([identity.group] if identity.group else []) + identity.supplementary:
        try:
            gids[name] = grp.getgrnam(name).gr_gid
        except KeyError:
            raise AsServiceError(f"the unit's group {name} does not exist (getent group)") from None
    gid = gids[identity.group] if identity.group else user.pw_gid
    member_of = os.getgrouplist(identity.user, gid)
    return user.pw_uid, gid, sorted({gid, *member_of, *(gids[name] for name in identity.supplementary)})


def inside(root: Path, path: str) -> Path:
    """path as seen from root: joined to it, and a link there with an absolute target followed inside root."""
    where = root / path.lstrip("/")
    for _ in range(8):
        if not where.is_symlink():
            break
        target = os.readlink(where)
        where = root / target.lstrip("/") if target.startswith("/") else where.parent / target
    return where


def systemd_version() -> int | None:
    """The running (installed) systemd's version, or None without systemctl."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    try:
        first = subprocess.run([systemctl, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.match(r"systemd (\d+)", first)
    return int(found.group(1)) if found else None


def version_warnings(identity: ServiceIdentity, version: int | None) -> list[str]:
    """A line for each directive of the unit that the running systemd is too old for."""
    if version is None:
        return []
    return [
        f"systemd {version} does not know {name}= (systemd {since} and later): it is ignored"
        + (
            ", so the API key credential is missing; use api_key_file"
            if name == "LoadCredential"
            else "; remove newer-systemd.conf from the unit's drop-ins"
        )
        for name, since in sorted(NEWEST_DIRECTIVES.items())
        if name in identity.directives and version < since
    ]


def installed_unit_warnings(unit: Path = UNIT) -> list[str]:
    """version_warnings for the installed unit, if there is one (for every `check`)."""
    if not unit.is_file():
        return []
    try:
        identity = read_unit(unit)
    except AsServiceError:
        return []
    return version_warnings(identity, systemd_version())


def command(identity: ServiceIdentity, root: Path, check_args: list[str]) -> list[str]:
    """The setpriv command that runs `caiasoft-gateway check` as the unit's user, groups and capabilities."""
    setpriv = shutil.which(SETPRIV)
    if setpriv is None:
        raise AsServiceError("setpriv is missing (it is in util-linux)")
    uid, gid, groups = ids(identity, root)
    caps = [name.lower().removeprefix("cap_") for name in identity.capabilities]
    executable = inside(root, identity.exec_start) if identity.exec_start else None
    if executable is None or not os.access(executable, os.X_OK):
        raise AsServiceError(f"the unit's ExecStart= program {identity.exec_start or '(none)'} is not executable")
    cap_args = [f"--inh-caps=-all{''.join(',+' + cap for cap in caps)}"]
    if caps:
        cap_args.append(f"--ambient-caps={','.join('+' + cap for cap in caps)}")
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={gid}",
        f"--groups={','.join(map(str, groups))}",
        *cap_args,
        "--",
        str(executable),
        *check_args,
    ]


def run_check(unit: Path, root: Path, check_args: list[str], environ: dict[str, str]) -> int:
    """Print the systemd warnings, run check as the unit says, return its exit code.

    Raise AsServiceError when the unit cannot be followed.
    """
    identity = read_unit(unit)
    argv = command(identity, root, check_args)
    uid, gid, _groups = ids(identity, root)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": environ.get("LANG", "C.UTF-8"), "HOME": "/"}
    if "CAIASOFT_GATEWAY_CONFIG" in environ:
        env["CAIASOFT_GATEWAY_CONFIG"] = environ["CAIASOFT_GATEWAY_CONFIG"]
    credentials = Path(tempfile.mkdtemp(prefix="caiasoft-gateway-credentials-")) if identity.credentials else None
    try:
        if credentials is not None:
            _load_credentials(identity, root, credentials, uid, gid)
            env["CREDENTIALS_DIRECTORY"] = str(credentials)
        print(
            f"checking as the service runs: user {identity.user} (uid {uid}), groups "
            f"{' '.join(identity.supplementary) or '-'}, capabilities {' '.join(identity.capabilities) or '-'}"
            f"{', credential ' + CREDENTIAL_NAME if CREDENTIAL_NAME in identity.credentials else ''}",
            flush=True,
        )
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, timeout=CHECK_TIMEOUT_SECONDS).returncode
    finally:
        if credentials is not None:
            shutil.rmtree(credentials, ignore_errors=True)


def _load_credentials(identity: ServiceIdentity, root: Path, folder: Path, uid: int, gid: int) -> None:
    """Copy each LoadCredential= file into folder, readable by the service user alone (as systemd does)."""
    for name, source in identity.credentials.items():
        if "/" in name or name in ("", ".", ".."):
            raise AsServiceError(f"the unit's LoadCredential= name {name!r} is not a plain name")
        try:
            data = inside(root, source).read_bytes()
        except OSError as error:
            raise AsServiceError(f"LoadCredential={name}:{source}: {error.strerror or error}") from None
        descriptor = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chown(folder / name, uid, gid)
    os.chown(folder, uid, gid)
    os.chmod(folder, 0o500)
