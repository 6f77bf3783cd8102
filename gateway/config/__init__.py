"""The configuration: its schema, rules, credentials and the loader that validates it once."""
