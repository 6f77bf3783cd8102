"""docs/install.md, run as written: the wheelhouse built, then install, configure, upgrade, uninstall and
purge in a scratch root (the install's --root), the install with the network cut (a network namespace of its
own: no route anywhere, only pip --no-index from the folder's wheels can work). The installed service is
started as the unit says (its user, its groups, CAP_LEASE, the scratch root read-only but for the unit's
writable folders, as ProtectSystem=strict does; no running systemd needed) and a sample file
written by another user, as ALEPH does, is archived. The uninstall leaves exactly what the docs name.

Each command line of a block is run as it is written, with only these changes for the scratch root:
VERSION is the tarball's version (unpacked in the admin's download folder), install commands get --root,
paths of the installed system are looked up under the root, `vi` is the test's edit of the config,
`systemctl` start/stop is starting and stopping the ExecStart of the installed unit as the unit says,
and `runuser -u USER` is setpriv with that user's ids from the root's /etc/passwd.
A line the test does not know fails the test, so the docs cannot drift from what is tested.

docs/web.md's "Turning it on" is run the same way once the service runs: its [web] table added to the config
(on a free port), `web-user` given the password on its input, and `systemctl enable --now caiasoft-gateway-web`
starting the staff page's unit as it says (its user, no capability, read-only but for its ReadWritePaths=, with
its ReadOnlyPaths= read-only again), which must then answer, with the login, from the service's ledger.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import KEY, REPO, wait_for

pytestmark = pytest.mark.e2e

DOCS = REPO / "docs" / "install.md"
WEB_DOCS = REPO / "docs" / "web.md"
WEB_UNIT = "caiasoft-gateway-web.service"
WEB_USER, WEB_PASSWORD = "circdesk", "desk-password-5e0b"
SYSTEM_PYTHON = Path("/usr/bin/python3.11")  # what the docs name: Debian 12's python3 is this file
SETPRIV = "/usr/bin/setpriv"
PRINT_FOLDER = "/exlibris/aleph/u23_1/usm50/print/caiasoft"
ALEPH_GROUP, ALEPH_GID, ALEPH_UID = "aleph", 4242, 4243  # ALEPH's group and OS user on the scratch host
BARCODE = "31234001234567"
# What a real host has before the install: the folders the install puts its files into.
HOST_FOLDERS = (
    "etc/systemd/system",
    "etc/logrotate.d",
    "etc/init.d",
    "etc/sysusers.d",
    "usr/lib/sysusers.d",
    "usr/lib/tmpfiles.d",
    "usr/local/bin",
    "usr/local/share/doc",
    "usr/local/share/man/man8",
    "opt",
    "run",
    "var/lib",
    "var/log",
    "exlibris/aleph/u23_1/usm50/print",
)
LEFT_BY_UNINSTALL = ("var/lib/caiasoft-gateway", "var/log/caiasoft-gateway", "etc/caiasoft-gateway")
ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")


def blocks(doc: Path = DOCS) -> dict[str, list[str]]:
    """The command blocks of docs/install.md (or doc) by their test name (<!-- test: NAME --> before a ```sh
    block)."""
    found = re.findall(r"<!-- test: (\w+) -->\n```sh\n(.*?)```", doc.read_text(), flags=re.S)
    return {name: [line for line in body.splitlines() if line.strip()] for name, body in found}


def web_config_block() -> str:
    """docs/web.md's [web] table, as the admin adds it to the config."""
    [block] = re.findall(r"<!-- test: web-config -->\n```toml\n(.*?)```", WEB_DOCS.read_text(), flags=re.S)
    return block


@pytest.fixture(scope="session")
def installer_tarball(tmp_path_factory) -> Path:
    """The docs' wheelhouse block, run once a session (it fetches the dependencies' wheels: set-up, not test)."""
    [line] = blocks()["wheelhouse"]
    assert line == "make wheelhouse PYTHON=python3.11"
    out = tmp_path_factory.mktemp("dist")
    python = shutil.which("python3.11") or str(SYSTEM_PYTHON)
    had_build = (REPO / "build").exists()
    result = subprocess.run(
        [*shlex.split(line.replace("PYTHON=python3.11", f"PYTHON={python}")), f"OUT={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert had_build or not (REPO / "build").exists(), "the wheelhouse left a build/ folder in the source tree"
    [tarball] = out.glob("caiasoft-gateway-*.tar.gz")
    return tarball


@dataclass
class Host:
    """A scratch root standing in for the ALEPH host, and the service started in it."""

    root: Path
    simulator_url: str
    downloads: Path
    cwd: Path = field(init=False)
    service: subprocess.Popen | None = None
    web: subprocess.Popen | None = None
    web_port: int = 0
    editor_runs: int = 0

    def __post_init__(self) -> None:
        self.cwd = self.downloads

    def under(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def ids(self, user: str) -> tuple[int, int]:
        for line in self.under("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise AssertionError(f"no user {user} in the scratch root")

    def gid(self, group: str) -> int:
        for line in self.under("/etc/group").read_text().splitlines():
            if line.split(":")[0] == group:
                return int(line.split(":")[2])
        raise AssertionError(f"no group {group} in the scratch root")

    def member_gids(self, user: str) -> list[int]:
        return [
            int(line.split(":")[2])
            for line in self.under("/etc/group").read_text().splitlines()
            if user in line.split(":")[3].split(",")
        ]

    @property
    def config(self) -> Path:
        return self.under("/etc/caiasoft-gateway/gateway.toml")

    @property
    def program(self) -> Path:
        return self.under("/opt/caiasoft-gateway/bin/caiasoft-gateway")


def unit_settings(host: Host, name: str = "caiasoft-gateway.service") -> dict[str, list[str]]:
    """The [Service] settings of the installed unit and its drop-ins (in name order), as systemd reads them."""
    unit = host.under(f"/etc/systemd/system/{name}")
    settings: dict[str, list[str]] = {}
    for path in [unit, *sorted(unit.with_name(unit.name + ".d").glob("*.conf"))]:
        section = ""
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


# The part of ProtectSystem=strict that matters to the gateway, in a mount namespace of its own: the scratch root
# read-only but for the unit's writable folders (StateDirectory=, LogsDirectory=, ReadWritePaths=), and in those the
# unit's ReadOnlyPaths= read-only again, then exec.
SANDBOX = """root=$1; shift
mount --bind "$root" "$root"
while [ "$1" != -- ]; do [ -d "$root$1" ] && mount --bind "$root$1" "$root$1"; shift; done; shift
mount -o remount,bind,ro "$root"
while [ "$1" != -- ]; do
    [ -d "$root$1" ] && mount --bind "$root$1" "$root$1" && mount -o remount,bind,ro "$root$1"; shift
done; shift
exec "$@"
"""


def writable_paths(settings: dict[str, list[str]]) -> list[str]:
    """The folders the unit lets the service write, as systemd reads its settings."""
    paths = [path.lstrip("-+") for value in settings.get("ReadWritePaths", []) for path in value.split()]
    for key, parent in (("StateDirectory", "/var/lib"), ("LogsDirectory", "/var/log")):
        paths += [f"{parent}/{name}" for value in settings.get(key, []) for name in value.split()]
    return paths


def start_unit(host: Host, name: str, expected_caps: list[str]) -> subprocess.Popen:
    """What systemd does for the unit's ExecStart=: as User=, with its groups and SupplementaryGroups=,
    AmbientCapabilities= as the only capabilities (expected_caps, checked), and the scratch root read-only but for
    the unit's writable folders, its ReadOnlyPaths= read-only again. Its stderr goes to downloads/NAME.err."""
    settings = unit_settings(host, name)
    assert settings["ProtectSystem"] == ["strict"]
    [user] = settings["User"]
    uid, gid = host.ids(user)
    groups = {
        gid,
        *host.member_gids(user),
        *(host.gid(group) for value in settings.get("SupplementaryGroups", []) for group in value.split()),
    }
    caps = [
        cap.lower().removeprefix("cap_") for value in settings.get("AmbientCapabilities", []) for cap in value.split()
    ]
    assert caps == expected_caps
    [exec_start] = settings["ExecStart"]
    program, *arguments = exec_start.split()
    link = host.under(program)
    assert link.is_symlink() and os.readlink(link) == "/opt/caiasoft-gateway/bin/caiasoft-gateway"
    read_only = [path.lstrip("-+") for value in settings.get("ReadOnlyPaths", []) for path in value.split()]
    with (host.downloads / f"{name}.err").open("ab") as errors:
        return subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                SANDBOX,
                "sh",
                str(host.root),
                *writable_paths(settings),
                "--",
                *read_only,
                "--",
                SETPRIV,
                f"--reuid={uid}",
                f"--regid={gid}",
                f"--groups={','.join(map(str, sorted(groups)))}",
                f"--inh-caps=-all{''.join(f',+{cap}' for cap in caps)}",
                *([f"--ambient-caps={','.join(f'+{cap}' for cap in caps)}"] if caps else []),
                "--",
                str(host.program),
                *arguments,
            ],
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/", "CAIASOFT_GATEWAY_CONFIG": str(host.config)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )


def start_service(host: Host) -> None:
    """The service, started as its unit says (CAP_LEASE its one capability)."""
    host.service = start_unit(host, "caiasoft-gateway.service", ["lease"])
    wait_for(
        lambda: host.under("/var/lib/caiasoft-gateway/gateway.lock").exists() or host.service.poll() is not None,
        timeout=30,
        message="the service to start",
    )
    assert host.service.poll() is None, (
        f"the service exited {host.service.returncode}: {(host.downloads / 'caiasoft-gateway.service.err').read_text()}"
    )


def start_web(host: Host) -> None:
    """The staff page, started as its unit says (no capability), answering on its port."""
    host.web = start_unit(host, WEB_UNIT, [])

    def listening() -> bool:
        if host.web is not None and host.web.poll() is not None:
            return True  # exited: said below
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", host.web_port)) == 0

    wait_for(listening, timeout=30, message="the staff page to listen")
    assert host.web.poll() is None, (
        f"the staff page exited {host.web.returncode}: {(host.downloads / f'{WEB_UNIT}.err').read_text()}"
    )


def stop_web(host: Host) -> None:
    if host.web is not None and host.web.poll() is None:
        host.web.send_signal(signal.SIGTERM)
        assert host.web.wait(30) == 0
    host.web = None


def ask_web(host: Host, path: str, login: tuple[str, str] | None = (WEB_USER, WEB_PASSWORD)) -> tuple[int, str]:
    """The staff page's answer to GET path on loopback (status, text), with the login."""
    request = urllib.request.Request(f"http://127.0.0.1:{host.web_port}{path}")
    if login is not None:
        import base64

        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def stop_service(host: Host) -> None:
    if host.service is not None and host.service.poll() is None:
        host.service.send_signal(signal.SIGTERM)
        assert host.service.wait(60) == 0
    host.service = None


def edit_config(host: Host) -> None:
    """The admin's edit: CaiaSoft's URL (the simulator), and, for the scratch root, its folders."""
    host.editor_runs += 1
    text = host.config.read_text()
    text = re.sub(r'(?m)^base_url = ".*"', f'base_url = "{host.simulator_url}"', text)
    for path in ("/var/lib/caiasoft-gateway", "/var/log/caiasoft-gateway", "/etc/caiasoft-gateway", PRINT_FOLDER):
        text = text.replace(f'"{path}', f'"{host.under(path)}')
    text = re.sub(r"(?m)^settle_seconds = .*", "settle_seconds = 0.3", text)
    host.config.write_text(text + "\n# edited by the admin\n")


def run_shell(host: Host, command: str, network: bool = True, codes: tuple[int, ...] = (0,)) -> str:
    """command through bash in the current folder (a `cd` in it carries over to the next line)."""
    marker = host.downloads / ".cwd"
    argv = ["bash", "-c", f"set -e; {command}\npwd > {shlex.quote(str(marker))}"]
    if not network:
        argv = ["unshare", "--net", "--", *argv]
    result = subprocess.run(argv, cwd=host.cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode in codes, f"{command!r} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    if result.returncode == 0:
        host.cwd = Path(marker.read_text().strip())
    return result.stdout + result.stderr


def run_line(host: Host, line: str) -> str:
    """One line of the docs, run in the scratch root (see the module's docstring for what changes)."""
    words = shlex.split(line, comments=True)
    for kind in (_installer_line, _admin_line, _files_line):
        said = kind(host, line, words)
        if said is not None:
            return said
    raise AssertionError(f"docs/install.md: the test does not know how to run this line in a scratch root: {line}")


def _installer_line(host: Host, line: str, words: list[str]) -> str | None:
    root = shlex.quote(str(host.root))
    if line == "tar -xzf caiasoft-gateway-VERSION.tar.gz && cd caiasoft-gateway-VERSION/":
        host.cwd = host.downloads  # where the admin copied the tarball
        return run_shell(host, line.replace("VERSION", version_of(host)))
    if words[0] == "./install":
        return run_shell(host, f"{line} --root {root}", network=False)
    if words[0] == "/opt/caiasoft-gateway/share/install":
        return run_shell(host, f"{shlex.quote(str(host.under(words[0])))} {shlex.join(words[1:])} --root {root}")
    if words[:2] == ["caiasoft-gateway", "web-user"]:  # no terminal here: the password on its input
        program = shlex.join([str(host.program), "-c", str(host.config), *words[1:], "--password-stdin"])
        return run_shell(host, f"printf '%s\\n' {shlex.quote(WEB_PASSWORD)} | {program}")
    if words[0] == "caiasoft-gateway":
        extra = ["--root", str(host.root)] if words[1:3] == ["check", "--as-service"] else []
        return run_shell(host, shlex.join([str(host.program), "-c", str(host.config), *words[1:], *extra]))
    if words[:4] == ["runuser", "-u", "caiasoft-gateway", "--"] and words[4] == "caiasoft-gateway":
        uid, gid = host.ids("caiasoft-gateway")
        return run_shell(
            host,
            shlex.join(
                [
                    SETPRIV,
                    f"--reuid={uid}",
                    f"--regid={gid}",
                    "--clear-groups",
                    "--",
                    str(host.program),
                    "-c",
                    str(host.config),
                    *words[5:],
                ]
            ),
        )
    return None


def _admin_line(host: Host, line: str, words: list[str]) -> str | None:
    if words == ["vi", "/etc/caiasoft-gateway/gateway.toml"]:
        edit_config(host)
        return ""
    if words in (["systemctl", "enable", "--now", "caiasoft-gateway"], ["systemctl", "start", "caiasoft-gateway"]):
        start_service(host)
        return ""
    if words == ["systemctl", "stop", "caiasoft-gateway"]:
        stop_service(host)
        return ""
    if words == ["systemctl", "enable", "--now", WEB_UNIT.removesuffix(".service")]:
        start_web(host)
        return ""
    if words[0] == "userdel":
        return run_shell(host, shlex.join(["userdel", "--root", str(host.root), *words[1:]]))
    return None


def _files_line(host: Host, line: str, words: list[str]) -> str | None:
    if words[:2] == ["printf", "%s\\n"] and words[3:] == [">", "/etc/caiasoft-gateway/api-key"]:
        assert words[2] == "THE-KEY-FROM-CAIASOFT"
        return run_shell(host, f"printf '%s\\n' {KEY} > {shlex.quote(str(host.under(words[4])))}")
    if words[:2] == ["diff", "-u"]:
        return run_shell(host, shlex.join(["diff", "-u", *(str(host.under(path)) for path in words[2:])]), codes=(0, 1))
    if words[:2] == ["rm", "-rf"]:
        assert all(path.startswith("/") and path.count("/") >= 2 for path in words[2:])
        return run_shell(host, shlex.join(["rm", "-rf", *(str(host.under(path)) for path in words[2:])]))
    return None


def version_of(host: Host) -> str:
    """The version of the tarball in the admin's download folder (the newest, if older ones lie beside it)."""
    versions = [
        path.name.removeprefix("caiasoft-gateway-").removesuffix(".tar.gz")
        for path in host.downloads.glob("caiasoft-gateway-*.tar.gz")
    ]
    return max(versions, key=lambda version: [int(part) if part.isdigit() else 0 for part in version.split(".")])


def run_block(host: Host, name: str, doc: Path = DOCS) -> str:
    return "".join(run_line(host, line) for line in blocks(doc)[name])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def assert_web_unit_installed_not_enabled(host: Host, said: str) -> None:
    """The staff page's unit is in place as shipped (with the newer-systemd drop-in where the service has it), in the
    manifest, with the docs it names, and not enabled: the install says how; the logins file is made empty, the
    service user's."""
    units = host.under("/etc/systemd/system")
    assert (units / WEB_UNIT).read_text() == (REPO / "systemd" / WEB_UNIT).read_text()
    assert (units / f"{WEB_UNIT}.d" / "newer-systemd.conf").exists() == (
        units / "caiasoft-gateway.service.d" / "newer-systemd.conf"
    ).exists()
    assert not list(units.glob(f"*.wants/{WEB_UNIT}")), "the staff page is off until the admin turns it on"
    assert "the staff page (read-only, for the circulation desk) is installed but off" in said
    assert "then   systemctl enable --now caiasoft-gateway-web" in said
    assert f"/etc/systemd/system/{WEB_UNIT}" in host.under("/opt/caiasoft-gateway/installed-files").read_text()
    pages, files = unit_documentation(host, WEB_UNIT)
    assert [page.name for page in pages] == ["caiasoft-gateway.8", "gateway.toml.5"]
    assert host.under("/usr/local/share/doc/caiasoft-gateway/docs/web.md") in files
    assert all(path.is_file() for path in [*pages, *files])
    users = host.under("/etc/caiasoft-gateway/web-users").stat()
    assert (users.st_uid, users.st_mode & 0o777, users.st_size) == (host.ids("caiasoft-gateway")[0], 0o600, 0)
    assert "made an empty /etc/caiasoft-gateway/web-users (0600, the service user's)" in said


def turn_the_staff_page_on_as_the_docs_say(host: Host) -> None:
    """docs/web.md's [web] table (on a free port, its users file under the root), then its block: a login, the check,
    the unit started. The page answers, with the login only, from the running service's ledger."""
    host.web_port = free_port()
    users = host.under("/etc/caiasoft-gateway/web-users")
    table = web_config_block().replace("127.0.0.1:9465", f"127.0.0.1:{host.web_port}")
    with host.config.open("a") as config:
        config.write("\n" + table.replace('"/etc/caiasoft-gateway/web-users"', f'"{users}"'))
    said = run_block(host, "web", WEB_DOCS)
    assert f"{WEB_USER}: added in {users}" in said
    assert users.stat().st_uid == host.ids("caiasoft-gateway")[0], "web-user as root kept the file the page's"
    assert "all checks passed" in said and "WARN" not in said, said
    assert f"ok    web.users_file {users}\n        1 user(s)" in said
    assert f"ok    the staff page's sandbox ({host.under(f'/etc/systemd/system/{WEB_UNIT}')})" in said
    code, today = ask_web(host, "/")
    assert code == 200 and '<dd id="count-sent">1</dd>' in today, today
    code, found = ask_web(host, f"/find?barcode={BARCODE}")
    assert code == 200 and found.count('<tr class="hit">') == 1, found
    assert ask_web(host, "/", login=None)[0] == 401 and ask_web(host, "/", (WEB_USER, "not-the-password"))[0] == 401
    stop_web(host)


def snapshot(root: Path) -> set[str]:
    """Every path under root (folders too), relative, but the backups and lock the account tools leave."""
    return {
        str(path.relative_to(root))
        for path in root.rglob("*")
        if not str(path.relative_to(root)).startswith((*(f"{name}-" for name in ACCOUNT_FILES), "etc/.pwd.lock"))
    }


def unit_documentation(host: Host, name: str = "caiasoft-gateway.service") -> tuple[list[Path], list[Path]]:
    """What the installed unit's Documentation= names, under the root: the man pages (man:NAME(SECTION), where the
    install puts them and man finds them: /usr/local/share/man/manSECTION/NAME.SECTION) and the file:// paths."""
    unit = host.under(f"/etc/systemd/system/{name}")
    pages: list[Path] = []
    files: list[Path] = []
    for line in unit.read_text().splitlines():
        if line.startswith("Documentation="):
            for uri in line.removeprefix("Documentation=").split():
                page = re.fullmatch(r"man:([\w.-]+)\((\d)\)", uri)
                if page:
                    pages.append(host.under(f"/usr/local/share/man/man{page[2]}/{page[1]}.{page[2]}"))
                else:
                    assert uri.startswith("file:///"), uri
                    files.append(host.under(uri.removeprefix("file://")))
    return pages, files


def assert_man_pages_read_clean(pages: list[Path]) -> None:
    """Each page is there and groff reads it as man does, with every warning on, and says nothing."""
    for page in pages:
        result = subprocess.run(
            ["groff", "-man", "-ww", "-z", "-Tutf8", str(page)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and result.stderr == "", (page, result.stderr)
        assert "\n.SH SEE ALSO\n" in page.read_text(), page


@pytest.fixture
def host(installer_tarball, simulator):
    root = Path(tempfile.mkdtemp(prefix="caiasoft-host-"))
    os.chmod(root, 0o755)  # the service user walks into it, as into /
    for folder in HOST_FOLDERS:
        (root / folder).mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/login.defs", root / "etc" / "login.defs")
    for name in ("passwd", "group"):  # the host's accounts, but none of the names and ids this test makes
        (root / "etc" / name).write_text(
            "".join(
                line
                for line in Path(f"/etc/{name}").read_text().splitlines(keepends=True)
                if line.split(":")[0] not in (ALEPH_GROUP, "caiasoft-gateway")
                and line.split(":")[2] not in (str(ALEPH_GID), str(ALEPH_UID))
            )
        )
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).write_text("")
        (root / "etc" / name).chmod(0o600)
    with open(root / "etc" / "group", "a") as groups:
        groups.write(f"{ALEPH_GROUP}:x:{ALEPH_GID}:\n")
    print_folder = root / PRINT_FOLDER.lstrip("/")
    print_folder.mkdir()
    os.chown(print_folder, ALEPH_UID, ALEPH_GID)
    os.chmod(print_folder, 0o2775)  # ALEPH's folder, group-writable for its group
    downloads = Path(tempfile.mkdtemp(prefix="caiasoft-admin-"))  # root's own folder, outside the host's tree
    shutil.copy(installer_tarball, downloads)
    made = Host(root, simulator.url, downloads)
    yield made
    stop_web(made)
    stop_service(made)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(downloads, ignore_errors=True)


def write_as_aleph(host: Host, name: str, text: str) -> None:
    """A request file written by ALEPH's user (not the gateway's, not root), as its print daemon does."""
    target = host.under(PRINT_FOLDER) / name
    subprocess.run(
        [
            SETPRIV,
            f"--reuid={ALEPH_UID}",
            f"--regid={ALEPH_GID}",
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            'umask 002; printf "%s" "$1" > "$2"',
            "sh",
            text,
            str(target),
        ],
        check=True,
        timeout=30,
    )
    assert target.stat().st_uid == ALEPH_UID


def archived(host: Host) -> list[Path]:
    archive = host.under("/var/lib/caiasoft-gateway/archive")
    return sorted(
        path
        for path in archive.rglob("*")
        if path.is_file() and not path.name.endswith(".json") and not path.name.startswith(".")
    )


def test_the_docs_blocks_are_the_ones_this_test_runs():
    assert set(blocks()) == {"wheelhouse", "install", "configure", "upgrade", "uninstall", "purge"}
    assert set(blocks(WEB_DOCS)) == {"web"} and web_config_block().startswith("[web]\n")
    install = blocks()["install"]
    assert len(install) <= 3, "at most three commands to install"
    assert f"--python {SYSTEM_PYTHON}" in install[-1] and f"--print-folder {PRINT_FOLDER}" in install[-1]


def test_install_configure_run_upgrade_uninstall_as_the_docs_say(host):
    assert SYSTEM_PYTHON.exists(), "Debian 12's python3.11 (apt-get install python3 python3-venv)"
    before = snapshot(host.root)
    accounts = {name: (host.root / name).read_text() for name in ACCOUNT_FILES}

    said = run_block(host, "install")
    assert "wrote the sample config /etc/caiasoft-gateway/gateway.toml" in said
    uid, gid = host.ids("caiasoft-gateway")
    assert uid != 0 and host.member_gids("caiasoft-gateway") == [ALEPH_GID]
    for folder in ("/var/lib/caiasoft-gateway", "/var/log/caiasoft-gateway", "/run/caiasoft-gateway"):
        info = host.under(folder).stat()
        assert (info.st_uid, info.st_gid) == (uid, gid), folder
    site = host.under("/etc/systemd/system/caiasoft-gateway.service.d/site.conf").read_text()
    assert f"SupplementaryGroups={ALEPH_GROUP}" in site and f"ReadWritePaths={PRINT_FOLDER}" in site
    assert f'path = "{PRINT_FOLDER}"' in host.config.read_text()  # the sample, with the folder given
    assert host.under("/usr/local/share/doc/caiasoft-gateway/docs/install.md").read_text() == DOCS.read_text()
    assert (
        "caiasoft-gateway(8)" not in said
        and ".SS check" in host.under("/usr/local/share/man/man8/caiasoft-gateway.8").read_text()
        and '.SH "[paths]"' in host.under("/usr/local/share/man/man5/gateway.toml.5").read_text()
    )  # the unit's Documentation=man:caiasoft-gateway(8) man:gateway.toml(5)
    pages, _ = unit_documentation(host)
    assert [page.name for page in pages] == ["caiasoft-gateway.8", "gateway.toml.5"]
    assert_man_pages_read_clean(pages)
    assert_web_unit_installed_not_enabled(host, said)
    key = host.under("/etc/caiasoft-gateway/api-key").stat()
    assert (key.st_uid, key.st_mode & 0o777, key.st_size) == (uid, 0o600, 0)

    said = run_block(host, "configure")
    assert host.editor_runs == 1
    assert "checking as the service runs: user caiasoft-gateway" in said and "CAP_LEASE held" in said
    assert "all checks passed" in said and "WARN" not in said, said
    assert "every folder the gateway writes is writable under it" in said  # the unit's sandbox, compared
    write_as_aleph(host, "anx.cir.12.paging20261206_am_barcode", f"{BARCODE}\n")
    [sent] = wait_for(lambda: archived(host), timeout=30, message="the sample file archived")
    assert sent.read_text() == f"{BARCODE}\n" and sent.stat().st_uid == uid
    assert not list(host.under(PRINT_FOLDER).iterdir())
    turn_the_staff_page_on_as_the_docs_say(host)

    edited = host.config.read_text()
    site_conf = host.under("/etc/systemd/system/caiasoft-gateway.service.d/site.conf").read_text()
    older = host.downloads / "caiasoft-gateway-0.0.1"  # an older version's tarball and folder, still there
    current = host.downloads / f"caiasoft-gateway-{version_of(host)}.tar.gz"
    older.mkdir()
    shutil.copy(current, host.downloads / f"{older.name}.tar.gz")
    said = run_block(host, "upgrade")
    assert host.config.read_text() == edited and "kept your /etc/caiasoft-gateway/gateway.toml" in said
    assert f"reused: --group {ALEPH_GROUP} --print-folder {PRINT_FOLDER}" in said
    assert host.under("/etc/systemd/system/caiasoft-gateway.service.d/site.conf").read_text() == site_conf
    assert host.under("/etc/caiasoft-gateway/api-key").read_text() == f"{KEY}\n"
    assert "+# edited by the admin" not in said and "-# edited by the admin" in said  # the diff, theirs first
    assert "all checks passed" in said and "anx.cir.12.paging20261206_am_barcode" in said  # find, as the user
    write_as_aleph(host, "after_upgrade_barcode", "31234001234568\n")
    wait_for(lambda: len(archived(host)) == 2, timeout=30, message="a file archived after the upgrade")

    stop_service(host)  # what the uninstall's systemctl disable --now does on a real host
    said = run_block(host, "uninstall")
    for left in ("/var/lib/caiasoft-gateway", "/var/log/caiasoft-gateway", "/etc/caiasoft-gateway", "userdel"):
        assert left in said, left
    after = snapshot(host.root)
    assert {path for path in after - before if not path.startswith(LEFT_BY_UNINSTALL)} == set(), (
        "the uninstall left more than it names"
    )
    assert before - after == set()
    assert uid == host.ids("caiasoft-gateway")[0]  # the user stays until the purge, as said

    run_block(host, "purge")
    assert snapshot(host.root) == before
    assert {name: (host.root / name).read_text() for name in ACCOUNT_FILES if name.endswith(("passwd", "group"))} == {
        name: text for name, text in accounts.items() if name.endswith(("passwd", "group"))
    }


def test_the_install_refuses_what_it_cannot_use(host, tmp_path):
    """An interpreter under a home folder (pyenv) or older than 3.11 (RHEL's python3), a group that does not exist
    or is no group name, a prefix in a home folder: each refused by name, before anything changes."""
    run_shell(host, "tar -xzf caiasoft-gateway-*.tar.gz && cd caiasoft-gateway-*/")
    common = f"--group {ALEPH_GROUP} --print-folder {PRINT_FOLDER} --root {host.root}"
    home = Path("/root/.pyenv-like-python")
    home.mkdir(exist_ok=True)
    try:
        (home / "python3").symlink_to(SYSTEM_PYTHON)
        said = run_shell(host, f"./install --python {home / 'python3'} {common}", codes=(2,))
        assert "under a home folder" in said
    finally:
        shutil.rmtree(home)
    old = tmp_path / "python3.9"
    old.write_text('#!/bin/sh\nexec /usr/bin/python3.11 -c "import sys; sys.exit(1)" "$@"\n')
    old.chmod(0o755)
    said = run_shell(host, f"./install --python {old} {common}", codes=(2,))
    assert "needs 3.11 or later" in said
    said = run_shell(
        host, f"./install --python {SYSTEM_PYTHON} --group no-such-group {common.split(' ', 2)[2]}", codes=(2,)
    )
    assert "--group no-such-group: there is no such group" in said
    said = run_shell(host, f"./install --python {SYSTEM_PYTHON} {common} --prefix /home/gateway", codes=(2,))
    assert "--prefix /home/gateway is under a home folder" in said
    said = run_shell(host, f"./install --python {SYSTEM_PYTHON} --group 'a:b' {common.split(' ', 2)[2]}", codes=(2,))
    assert "--group a:b is not a group name" in said
    assert not host.under("/opt/caiasoft-gateway").exists()  # refused before anything changed


def test_make_install_honours_destdir_prefix_python_and_wheelhouse_and_make_uninstall_undoes_it(host):
    """make install from the source tree, offline from a wheelhouse's wheels, with the init script; then uninstall.
    The host lacks some folders the install puts files in: the uninstall removes those it made, and leaves (and
    names) a drop-in of the admin's."""
    run_shell(host, "tar -xzf caiasoft-gateway-*.tar.gz && cd caiasoft-gateway-*/")
    wheels = host.cwd / "wheels"
    for folder in (
        "etc/sysusers.d",
        "usr/local/share/man/man8",
        "usr/local/share/man",
        "usr/local/share/doc",
        "etc/init.d",
    ):
        host.under(folder).rmdir()
    before = snapshot(host.root)
    make = ["make", "--no-print-directory", "-C", str(REPO)]
    result = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            *make,
            "install",
            f"DESTDIR={host.root}",
            "PREFIX=/opt/gw",
            f"PYTHON={SYSTEM_PYTHON}",
            f"GROUP={ALEPH_GROUP}",
            f"PRINT_FOLDER={PRINT_FOLDER}",
            f"WHEELHOUSE={wheels}",
            "SYSV=yes",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.readlink(host.under("/usr/local/bin/caiasoft-gateway")) == "/opt/gw/bin/caiasoft-gateway"
    version = subprocess.run(
        [str(host.under("/opt/gw/bin/caiasoft-gateway")), "--version"], capture_output=True, text=True, timeout=60
    )
    assert version.stdout.startswith("caiasoft-gateway ")
    assert f"home = {SYSTEM_PYTHON.parent}\n" in host.under("/opt/gw/pyvenv.cfg").read_text()  # PYTHON's venv
    init = host.under("/etc/init.d/caiasoft-gateway")
    assert init.stat().st_mode & 0o777 == 0o755
    assert init.read_text() == (REPO / "conf" / "caiasoft-gateway.init").read_text()
    assert not host.under("/opt/caiasoft-gateway").exists()
    pages, files = unit_documentation(host)  # every page and file the unit names, installed from this tree
    assert_man_pages_read_clean(pages)
    docs = host.under("/usr/local/share/doc/caiasoft-gateway")
    assert {str(path.relative_to(docs)) for path in files} >= {
        "README.md",
        "docs/install.md",
        "docs/operations.md",
        "docs/troubleshooting.md",
    }
    for path in files:
        source = REPO / path.relative_to(docs)
        assert path.is_file() and path.read_text() == source.read_text(), path
    installed = sorted(str(path.relative_to(docs)) for path in docs.rglob("*") if path.is_file())
    assert installed == sorted(
        [
            "README.md",
            *(f"docs/{path.name}" for path in (REPO / "docs").glob("*.md")),
            *(f"docs/images/{path.name}" for path in (REPO / "docs" / "images").glob("*.png")),
        ]
    )  # README.md, every docs/*.md and their pictures, laid out as in the source tree, so that their links work
    manifest = host.under("/opt/gw/installed-files").read_text().splitlines()
    web_unit = host.under(f"/etc/systemd/system/{WEB_UNIT}")
    for path in [*pages, *(path for path in docs.rglob("*") if path.is_file()), web_unit]:
        assert "/" + str(path.relative_to(host.root)) in manifest, path  # so that the uninstall removes it
    old_doc = host.under("/usr/local/share/doc/caiasoft-gateway/install.md")  # where an install before docs/ put it
    old_doc.write_text("install.md of an older version\n")
    with host.under("/opt/gw/installed-files").open("a") as listed:
        listed.write("/usr/local/share/doc/caiasoft-gateway/install.md\n")
    again = subprocess.run(
        [
            "unshare",
            "--net",
            "--",
            *make,
            "install",
            f"DESTDIR={host.root}",
            "PREFIX=/opt/gw",
            f"PYTHON={SYSTEM_PYTHON}",
            f"GROUP={ALEPH_GROUP}",
            f"PRINT_FOLDER={PRINT_FOLDER}",
            f"WHEELHOUSE={wheels}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stdout + again.stderr  # without SYSV: what the first one installed stays known
    assert "reused: --sysv" in again.stdout and init.exists()
    assert not old_doc.exists() and all(path.is_file() for path in files)  # a doc this version does not install goes
    override = host.under("/etc/systemd/system/caiasoft-gateway.service.d/override.conf")
    override.write_text("[Service]\nSystemCallErrorNumber=ENOSYS\n")  # the admin's, as the RHEL 8 section says

    result = subprocess.run(
        [*make, "uninstall", f"DESTDIR={host.root}", "PREFIX=/opt/gw"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    after = snapshot(host.root)
    assert {path for path in after - before if not path.startswith(LEFT_BY_UNINSTALL)} == {
        "etc/systemd/system/caiasoft-gateway.service.d",
        "etc/systemd/system/caiasoft-gateway.service.d/override.conf",
    }
    assert before - after == set()
    assert not any(path.exists() for path in [*pages, *files, web_unit])
    assert "not written by the install" in result.stdout
    assert "/etc/systemd/system/caiasoft-gateway.service.d/override.conf" in result.stdout


def test_install_on_a_host_without_systemd_makes_the_same_user_and_folders(host, tmp_path):
    """No systemd-sysusers, systemd-tmpfiles or systemctl on PATH (a host run by the init script): the shadow
    tools make the user and its membership, the tmpfiles file's folders are made by hand, and the drop-in for
    newer systemd is left out."""
    hidden = {"systemd-sysusers", "systemd-tmpfiles", "systemctl"}
    tools = tmp_path / "bin"
    tools.mkdir()
    for folder in (Path("/usr/sbin"), Path("/usr/bin")):
        for program in folder.iterdir():
            if program.name not in hidden and not (tools / program.name).exists():
                (tools / program.name).symlink_to(program)
    run_shell(host, "tar -xzf caiasoft-gateway-*.tar.gz && cd caiasoft-gateway-*/")
    line = blocks()["install"][-1]
    said = run_shell(host, f"PATH={tools} {line} --root {host.root} --sysv", network=False)
    assert "systemd not found" in said
    uid, gid = host.ids("caiasoft-gateway")
    assert host.member_gids("caiasoft-gateway") == [ALEPH_GID] and 0 < uid < 1000
    expected = {
        "/var/lib/caiasoft-gateway": 0o750,
        "/var/lib/caiasoft-gateway/archive": 0o2750,
        "/var/lib/caiasoft-gateway/error": 0o2750,
        "/var/log/caiasoft-gateway": 0o750,
        "/run/caiasoft-gateway": 0o755,
    }
    for folder, mode in expected.items():
        info = host.under(folder).stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o7777) == (uid, gid, mode), folder
    dropins = host.under("/etc/systemd/system/caiasoft-gateway.service.d")
    assert sorted(path.name for path in dropins.iterdir()) == ["site.conf"]
    assert host.under("/etc/init.d/caiasoft-gateway").exists()
    run_shell(
        host,
        f"PATH={tools} /usr/bin/bash {host.under('/opt/caiasoft-gateway/share/install')} --uninstall "
        f"--root {host.root}",
    )
    assert not host.under("/etc/init.d/caiasoft-gateway").exists() and not host.under("/opt/caiasoft-gateway").exists()


def test_an_upgrade_without_options_keeps_those_of_the_install_and_sets_a_hand_edit_aside(host):
    """Two print folders, a --writable-path and --sysv given once; the upgrade gives only --python: all are reused.
    A hand edit of site.conf is not lost silently: set aside, warned about, with a diff."""
    run_shell(host, "tar -xzf caiasoft-gateway-*.tar.gz && cd caiasoft-gateway-*/")
    second, state = "/exlibris/aleph/u23_1/usm50/print/caiasoft-hold", "/exlibris/caiasoft-state"
    run_shell(
        host,
        f"./install --python {SYSTEM_PYTHON} --group {ALEPH_GROUP} --print-folder {PRINT_FOLDER} "
        f"--print-folder {second} --writable-path {state} --sysv --root {host.root}",
        network=False,
    )
    dropins = host.under("/etc/systemd/system/caiasoft-gateway.service.d")
    site = (dropins / "site.conf").read_text()
    for folder in (PRINT_FOLDER, second, state):
        assert f"ReadWritePaths={folder}\n" in site
    options = host.under("/opt/caiasoft-gateway/install-options").read_text()

    said = run_shell(host, f"./install --python {SYSTEM_PYTHON} --root {host.root}", network=False)
    assert (
        f"reused: --group {ALEPH_GROUP} --print-folder {PRINT_FOLDER} --print-folder {second} "
        f"--writable-path {state} --sysv" in said
    )
    assert (dropins / "site.conf").read_text() == site and "edited by hand" not in said
    assert host.under("/opt/caiasoft-gateway/install-options").read_text() == options
    assert host.under("/etc/init.d/caiasoft-gateway").exists()

    (dropins / "site.conf").write_text(site + "ReadWritePaths=/srv/by-hand\n")
    said = run_shell(host, f"./install --python {SYSTEM_PYTHON} --root {host.root}", network=False)
    [kept] = dropins.glob("site.conf.edited-*")
    assert kept.read_text() == site + "ReadWritePaths=/srv/by-hand\n" and (dropins / "site.conf").read_text() == site
    assert (
        "was edited by hand" in said
        and f"kept as /etc/systemd/system/caiasoft-gateway.service.d/{kept.name}" in said
        and "install:   -ReadWritePaths=/srv/by-hand" in said
    )

    said = run_shell(
        host, f"./install --python {SYSTEM_PYTHON} --print-folder {PRINT_FOLDER} --root {host.root}", network=False
    )  # an option given replaces the recorded one
    assert f"ReadWritePaths={second}" not in (dropins / "site.conf").read_text() and "edited by hand" not in said
    host.under("/opt/caiasoft-gateway/install-options").unlink()  # an install from before it was written
    said = run_shell(host, f"./install --python {SYSTEM_PYTHON} --root {host.root}", network=False)
    assert (
        "(/etc/systemd/system/caiasoft-gateway.service.d/site.conf) reused: "
        f"--group {ALEPH_GROUP} --print-folder {PRINT_FOLDER} --print-folder {state} --sysv" in said
    ), said
    assert "edited by hand" not in said and f"ReadWritePaths={state}" in (dropins / "site.conf").read_text()
    said = run_shell(host, f"{host.under('/opt/caiasoft-gateway/share/install')} --uninstall --root {host.root}")
    assert f"/etc/systemd/system/caiasoft-gateway.service.d/{kept.name}" in said  # named as left


def test_a_prefix_that_is_not_the_installs_own_is_refused_and_the_uninstall_removes_only_its_list(host):
    """A system folder, a folder holding the command link's folder, a folder with files of others: refused before
    anything changes. The uninstall removes what installed-files lists, never the prefix wholesale."""
    run_shell(host, "tar -xzf caiasoft-gateway-*.tar.gz && cd caiasoft-gateway-*/")
    common = f"--python {SYSTEM_PYTHON} --group {ALEPH_GROUP} --print-folder {PRINT_FOLDER} --root {host.root}"
    keep = host.under("/opt/vendor/data")
    keep.parent.mkdir(parents=True)
    keep.write_text("not the gateway's\n")
    before = snapshot(host.root)
    for prefix, reason in (
        ("/opt", "is a system folder"),
        ("/usr/local/", "is a system folder"),
        ("/usr/local/bin", "holds /usr/local/bin, where the command link goes"),
        ("/opt/vendor", "exists, is not empty and was not made by this install"),
    ):
        said = run_shell(host, f"./install {common} --prefix {prefix}", codes=(2,), network=False)
        assert f"--prefix {prefix.rstrip('/')} {reason}" in said, said
        said = run_shell(host, f"./install --uninstall --root {host.root} --prefix {prefix}", codes=(2,))
        assert reason in said or "nothing to uninstall" in said
    assert snapshot(host.root) == before and keep.read_text() == "not the gateway's\n"

    run_shell(host, f"./install {common} --prefix /opt/gw", network=False)
    (host.under("/opt/gw") / "notes.txt").write_text("the admin's\n")
    said = run_shell(host, f"./install --uninstall --root {host.root} --prefix /opt/gw")
    assert sorted(path.name for path in host.under("/opt/gw").iterdir()) == ["notes.txt"]
    assert "left in place: /opt/gw" in said


def test_make_install_names_the_variable_that_is_missing():
    for given, missing in ((["PRINT_FOLDER=/x"], "GROUP is missing"), (["GROUP=aleph"], "PRINT_FOLDER is missing")):
        result = subprocess.run(
            ["make", "--no-print-directory", "-n", "-C", str(REPO), "install", *given],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode != 0 and missing in result.stderr, result.stderr
