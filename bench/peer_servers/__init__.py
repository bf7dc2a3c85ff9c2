"""The peers bench/peers.py runs beside this service, on the project's own decode and engine."""
