"""The collab-engine server: the ASGI edge (WebSocket sync and HTTP) served by hypercorn."""
