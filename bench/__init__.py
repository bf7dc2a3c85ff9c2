"""Benchmarks that print their numbers and append them to BENCHMARKS.md: CPU inference per engine
and batch (`python -m bench.inference`) and the HTTP service under load (`python -m bench.http`).
They need the `make test` environment (torch for the eager row and the matmul peak); the service
itself needs none of this package."""
