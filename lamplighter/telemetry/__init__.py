"""What operators see: Prometheus metrics (logs live in ``lamplighter/logs.py``)."""
