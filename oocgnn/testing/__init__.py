"""Helpers for tests and benchmarks: in-memory sources, OGB-layout fixtures."""
