"""What the gateway adds in front of an upstream, beside the LiteLLM proxy.

The benchmark ships inside the package (``lamplighter/overhead/``) so that the installed
``lamplighter bench overhead`` command has it; this module runs the same thing from a checkout:

    .venv/bin/python -m bench.overhead --concurrency 1,8,64 --duration 5
    .venv/bin/python -m bench.overhead --json --skip-litellm
    .venv/bin/python -m bench.overhead --skip-litellm --floor --concurrency 1
    .venv/bin/python -m bench.overhead --soak 600 --soak-streams 500
"""

from __future__ import annotations

from lamplighter.overhead.run import main

if __name__ == "__main__":
    main()
