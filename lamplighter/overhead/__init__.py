"""``lamplighter bench overhead``: what the gateway adds in front of an upstream, measured.

- ``mock.py``: a fast OpenAI-compatible upstream (raw asyncio, answers from prebuilt bytes);
- ``load.py``: the load generator every target shares, run in a process of its own;
- ``targets.py``: the servers under test as processes (the mock, ``lamplighter serve``, the
  LiteLLM proxy in its own virtual environment), with their CPU time and memory from ``/proc``;
- ``run.py``: the matrix of cells, the comparisons and checks, the soak, and the report.
"""
