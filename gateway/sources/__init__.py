"""Sources: where request files come from. One small protocol (base.Source); local and SFTP implement it."""

from __future__ import annotations

from gateway.settings import SftpSourceSettings, SourceSettings
from gateway.sources.base import Source


def build(settings: SourceSettings) -> Source:
    """The source a [[sources]] entry describes: an SFTP folder (url) or a local one (path)."""
    if isinstance(settings, SftpSourceSettings):
        from gateway.sources.sftp import SftpSource
        return SftpSource(settings)
    from gateway.sources.local import LocalSource
    return LocalSource(settings)
