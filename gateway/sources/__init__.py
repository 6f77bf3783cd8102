"""Sources: where request files come from. One small protocol (base.Source); local and SFTP implement it."""
