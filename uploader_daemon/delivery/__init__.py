"""Delivering one file: an ordered list of HTTP steps, resumable after a crash."""
