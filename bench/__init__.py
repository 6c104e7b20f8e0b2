"""Measurement: benchmarks, profilers and the documents they generate. The server never imports this package."""
