"""The running service: its parts, built once per config, and daemon start-up."""
