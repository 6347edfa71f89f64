"""Benchmarks run by ``catenary bench``."""
