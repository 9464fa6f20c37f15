"""Reliability and security suite: break things on purpose, check nothing is lost or leaked."""
