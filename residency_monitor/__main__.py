"""``python -m residency_monitor``: the same command line as ``residency-monitor``."""

from .cli import main

main()
