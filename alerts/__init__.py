"""Prometheus recording and alert rules as code."""
