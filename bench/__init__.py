"""The benchmark suite: ``python -m bench`` (see bench/README.md). Not collected by pytest."""
