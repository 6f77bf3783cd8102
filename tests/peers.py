"""Real peers for alert delivery on loopback: an SMTP server (aiosmtpd) and a webhook receiver."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from conftest import wait_for


def free_port() -> int:
    """A loopback port nothing listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MailBox:
    """aiosmtpd on 127.0.0.1: every message it accepts, parsed, with its envelope."""

    def __init__(self, port: int | None = None, password: str | None = None, tls: ssl.SSLContext | None = None):
        """With password, the server requires a login (AUTH PLAIN/LOGIN, any user) with that password;
        with tls, it requires STARTTLS with that server context first."""
        self.port = port or free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._lock = threading.Lock()
        self.logins: list[str] = []
        options: dict = (
            {}
            if password is None
            else {"authenticator": self._authenticator(password), "auth_required": True, "auth_require_tls": False}
        )
        if tls is not None:
            options.update(tls_context=tls, require_starttls=True)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port, **options)

    def _authenticator(self, password: str):
        def check(server, session, envelope, mechanism, auth_data) -> AuthResult:
            if isinstance(auth_data, LoginPassword) and auth_data.password.decode() == password:
                self.logins.append(auth_data.login.decode())
                return AuthResult(success=True)
            return AuthResult(success=False, handled=False)

        return check

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's hook name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"

    def start(self) -> MailBox:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def subjects(self) -> list[str]:
        with self._lock:
            return [str(message["Subject"]) for message in self.messages]

    def wait(self, count: int, timeout: float = 20.0) -> list[EmailMessage]:
        wait_for(
            lambda: len(self.messages) >= count, timeout=timeout, message=f"{count} mail(s); got {self.subjects()}"
        )
        with self._lock:
            return list(self.messages)

    def find(self, words: str, timeout: float = 20.0) -> EmailMessage:
        """The first mail whose subject holds words (waiting for it)."""

        def found() -> EmailMessage | None:
            with self._lock:
                return next((m for m in self.messages if words in str(m["Subject"])), None)

        message = wait_for(found, timeout=timeout, message=f"a mail about {words!r}; got {self.subjects()}")
        assert isinstance(message, EmailMessage)
        return message


def body(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content()


class SilentServer:
    """Accepts connections and never says a word: a mail server that hangs."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.port = int(self.socket.getsockname()[1])

    def close(self) -> None:
        self.socket.close()


class WebhookReceiver:
    """A real HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 204):
        self.posts: list[dict] = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's hook name
                length = int(self.headers.get("Content-Length", 0))
                receiver.posts.append(
                    {
                        "path": self.path,
                        "content_type": self.headers.get("Content-Type"),
                        "json": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/T0KEN"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def alerts_table(port: int, interval: float = 3600, after: float = 900, extra: str = "") -> str:
    """An [alerts] table sending to 127.0.0.1:port."""
    return f"""
[alerts]
smtp_host = "127.0.0.1"
smtp_port = {port}
from = "caiasoft-gateway@aleph.example.edu"
to = ["ils-team@example.edu", "circ@example.edu"]
min_interval_seconds = {interval}
unreachable_after_seconds = {after}
{extra}
"""
