"""The ledger: one SQLite database and its tables (files, items, alerts, retention), and the service snapshot."""
