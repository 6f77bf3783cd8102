"""Sources: where request files come from. One small protocol (base.Source); local and SFTP implement it."""

from __future__ import annotations

from gateway.config.settings import Settings, SftpSourceSettings, SourceSettings
from gateway.sources.base import Source


def build(settings: SourceSettings, config: Settings | None = None) -> Source:
    """The source a [[sources]] entry describes: an SFTP folder (url) or a local one (path). With the whole
    config, a source also knows max_file_bytes (and a local folder the gateway's own folders, never read)."""
    if isinstance(settings, SftpSourceSettings):
        from gateway.sources.sftp import SftpSource

        if config is None:
            return SftpSource(settings)
        return SftpSource(settings, max_file_bytes=config.intake.max_file_bytes)
    from gateway.sources.folder import own_folders
    from gateway.sources.local import LocalSource

    if config is None:
        return LocalSource(settings)
    trees, holders = own_folders(config)
    return LocalSource(settings, config.intake.max_file_bytes, trees, holders)
