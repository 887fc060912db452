"""``python -m lamplighter`` is the ``lamplighter`` command."""

from lamplighter.cli import main

main()
