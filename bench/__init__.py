"""Benchmarks. Not tests: they measure, print figures and leave judging them to a person."""
