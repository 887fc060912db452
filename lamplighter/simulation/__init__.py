"""Simulation: a GPU serving engine in virtual time, the sim-backend server around it, and the
surge benchmark that replays a real trace through the real admission code."""
