"""Taking files from the sources: readiness, collectors and validation."""
