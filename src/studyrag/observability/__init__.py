"""Metrics, structured logs, memory watch and backend health: how the server is observed."""
