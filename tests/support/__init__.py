"""Helpers shared by the integration tests (real processes, real ports)."""
