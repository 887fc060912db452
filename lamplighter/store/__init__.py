"""Persistence: models, repositories (every query lives in one), and Alembic migrations."""
