"""Shared by every part: errors, file states, names, safe file operations, logging, backoff, HTTP, worker threads."""
