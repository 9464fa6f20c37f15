"""Test helpers: protocol doubles, fixtures and the reliability suite's support."""
