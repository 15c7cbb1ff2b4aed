"""Peer libraries measured by scenario 7, each in a program run with bench/.peers-venv's Python.

These modules import only the standard library, redis-py and the peer itself (never streamproc or the rest of
bench/), so that they run in the peers' own virtualenv. Each is `python -m bench.peerlibs.NAME MODE ...` and prints
one JSON object (see common.py).
"""
