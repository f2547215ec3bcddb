"""Simulated devices for the demo, the tests and vendors without hardware."""
