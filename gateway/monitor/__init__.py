"""Alerts and metrics: the events the parts report and the conditions the service watches."""
