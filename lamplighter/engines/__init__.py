"""Backends that generate text, behind one seam, and the router that picks one per request."""
