"""The WebSocket transport: frames and the connection manager; the endpoint is routes/ws.py."""
