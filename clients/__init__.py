"""Clients: batch prediction against the serving API over HTTP."""
