"""A mail catcher on loopback: a minimal SMTP server that keeps every message it is given.

For `demo` (and dry runs): point [alerts] at it and read what the gateway would mail.
It speaks just enough SMTP for smtplib (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT),
no AUTH and no STARTTLS. The tests use aiosmtpd, an independent implementation.
"""

from __future__ import annotations

import email
import email.policy
import socketserver
import threading
from email.message import EmailMessage
from typing import Self

MAX_MESSAGE_BYTES = 1024 * 1024


class MailCatcher:
    """SMTP on 127.0.0.1 (a free port by default); messages holds what it accepted, parsed."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        catcher = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def reply(self, line: str) -> None:
                self.wfile.write(line.encode("ascii") + b"\r\n")

            def handle(self) -> None:
                self.reply("220 caiasoft-gateway mail catcher")
                while True:
                    line = self.rfile.readline(4096)
                    if not line:
                        return
                    verb = line[:4].decode("ascii", "replace").upper()
                    if verb == "QUIT":
                        self.reply("221 bye")
                        return
                    if verb == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        catcher.keep(self._data())
                        self.reply("250 kept")
                    elif verb == "EHLO":
                        self.reply("250-caiasoft-gateway mail catcher\r\n250 8BITMIME")
                    else:  # HELO, MAIL, RCPT, RSET, NOOP: taken as they come
                        self.reply("250 ok")

            def _data(self) -> bytes:
                lines: list[bytes] = []
                size = 0
                while True:
                    line = self.rfile.readline(MAX_MESSAGE_BYTES)
                    if not line or line in (b".\r\n", b".\n"):
                        return b"".join(lines)
                    size += len(line)
                    if size <= MAX_MESSAGE_BYTES:
                        lines.append(line[1:] if line.startswith(b"..") else line)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server((host, port), Handler)
        self.port = int(self._server.server_address[1])

    def keep(self, raw: bytes) -> None:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)

    def start(self) -> Self:
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="mail-catcher", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
