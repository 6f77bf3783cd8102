"""What each NCIP server's relay and feed share: their worker names and how they name the server to listeners.

A gateway may have several NCIP servers ([ncip], named "default", and each [ncip.NAME]), each with its own
relay and feed. Their workers are named after the server, because the service tells an old worker from its
successor by name on a reload (two relays must never tail one journal at once): ncip-relay and ncip-feed for
[ncip], as ever, ncip-relay-NAME and ncip-feed-NAME for [ncip.NAME]. Every log line they write carries
connection=NAME (logs.Log.bound; the default's too: a field more is harmless, and a log reader can filter on
it always).
"""

from __future__ import annotations

from typing import Any

from gateway.config.settings import DEFAULT_CONNECTION


def worker_name(kind: str, connection: str) -> str:
    """kind (ncip-relay, ncip-feed) for the default server, kind-NAME for [ncip.NAME]."""
    return kind if connection == DEFAULT_CONNECTION else f"{kind}-{connection}"


def told(connection: str) -> dict[str, Any]:
    """The connection keyword for an Events call: none for the default server (a listener written before there
    were several servers hears exactly what it heard), connection=NAME for [ncip.NAME]."""
    return {} if connection == DEFAULT_CONNECTION else {"connection": connection}
