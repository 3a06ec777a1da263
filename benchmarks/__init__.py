"""Benchmarks of jaxnn against plain JAX and its peers: scripts, one per question.

Each runs as ``python benchmarks/<name>.py`` or, from the repository root,
``python -m benchmarks.<name>``; the tests import ``benchmarks.bench_step`` with the
repository root on the path. Nothing in the ``jaxnn`` package imports them.
"""
