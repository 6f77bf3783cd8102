"""The staff page's users: [web] users_file, one `NAME:HASH` line each, the hash salted scrypt.

    NAME:scrypt$N$R$P$SALT_B64$HASH_B64

`caiasoft-gateway web-user NAME` adds a user or replaces its password (add_user); the page reads the file
(load_users) and checks a name and password against it (verify), in constant time for a known or unknown
name alike.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import os
import secrets
import unicodedata
from pathlib import Path

SCHEME = "scrypt"
N, R, P = 2**14, 8, 1  # 16 MiB and some 50 ms per check: dear for a guesser, cheap for a person
SALT_BYTES = 16
HASH_BYTES = 32
MAX_MEMORY = 64 * 1024 * 1024  # a hand-edited line cannot make a check take more than this
MAX_NAME = 64
MAX_PASSWORD = 1024


def hash_password(password: str) -> str:
    """The stored form of a password: scrypt with a random 16-byte salt, its parameters and salt kept with it."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=N, r=R, p=P, dklen=HASH_BYTES, maxmem=MAX_MEMORY)
    return "$".join((SCHEME, str(N), str(R), str(P), _b64(salt), _b64(digest)))


def name_problem(name: str) -> str | None:
    """Why name cannot be a user's name (None: it can): it is the part before ':' on a line of its own."""
    if not name:
        return "a user name cannot be empty"
    if len(name) > MAX_NAME:
        return f"a user name is at most {MAX_NAME} characters"
    if ":" in name:
        return "a user name cannot hold ':'"
    if name.startswith("#"):
        return "a user name cannot start with '#' (a line starting so is a comment in the users file)"
    if any(char.isspace() or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") for char in name):
        return "a user name cannot hold spaces, line breaks or control characters"
    return None


def add_user(path: Path, name: str, password: str) -> None:
    """Add the user, or give it this password: the file is written whole beside itself, then renamed over
    (mode 0600; an existing file's owner and group are kept when this runs as root). Raise ValueError for
    a name name_problem refuses or an empty password, OSError if the file cannot be written."""
    problem = name_problem(name)
    if problem:
        raise ValueError(problem)
    if not password:
        raise ValueError("the password cannot be empty")
    if len(password) > MAX_PASSWORD:
        raise ValueError(f"a password is at most {MAX_PASSWORD} characters")
    try:
        old = path.read_text(encoding="utf-8").splitlines()
        owner = path.stat()
    except FileNotFoundError:
        old, owner = [], None
    kept = [line for line in old if line.partition(":")[0] != name]
    _replace(path, "".join(f"{line}\n" for line in [*kept, f"{name}:{hash_password(password)}"]), owner)


def _replace(path: Path, text: str, owner: os.stat_result | None) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)  # whatever the umask
            if owner is not None and os.geteuid() == 0:
                os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename is durable too (not every file system lets a folder be synced)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def load_users(path: Path) -> dict[str, str]:
    """NAME -> stored hash, from the users file (blank lines and lines starting with '#' skipped; a line
    without ':' is not a user). Raise OSError if the file cannot be read."""
    users: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name, colon, stored = line.strip().partition(":")
        if colon and name and not name.startswith("#"):
            users[name] = stored
    return users


@functools.cache
def _unknown() -> str:
    """What a name that is not a user is checked against, so that it takes the same time as one that is."""
    return hash_password(secrets.token_hex(16))


def verify(users: dict[str, str], name: str, password: str) -> bool:
    """Whether name is a user and password its password. The work is the same for an unknown name, and the
    comparison constant-time; a stored hash that cannot be read matches nothing."""
    stored = users.get(name)
    matches = _check(stored if stored is not None else _unknown(), password)
    return stored is not None and matches


def _check(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != SCHEME or len(password) > MAX_PASSWORD:
            return False
        digest = hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(base64.b64decode(expected, validate=True)),
            maxmem=MAX_MEMORY,
        )
        return hmac.compare_digest(digest, base64.b64decode(expected, validate=True))
    except (ValueError, MemoryError):  # not our form, or parameters scrypt refuses
        return False


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
