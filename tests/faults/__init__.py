"""Fault injection against a real daemon: crashes, a dead target, an unwritable state DB."""
