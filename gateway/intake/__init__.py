"""Durable intake: where an accepted webhook waits until its media is processed."""
