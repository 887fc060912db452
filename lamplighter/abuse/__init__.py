"""Abuse detection and response: violation scores and the temporary bans they lead to."""
