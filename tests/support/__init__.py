"""Helpers shared by the test packages: real servers, receivers and processes
(no fixtures: those stay in the conftest.py files and build on these)."""
