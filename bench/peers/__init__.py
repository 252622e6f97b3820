"""Peer apps for ``python -m bench``: the same three routes as the task server, written
with other stacks, measured in the same rounds (see bench/README.md)."""
