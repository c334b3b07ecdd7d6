"""tlkit's benchmark suite: `python -m benchmarks.run [--quick]` (see benchmarks/README.md).

The parent (`benchmarks.run`) never imports Keras: every measurement runs in a
fresh child process (`benchmarks.child`) with `KERAS_BACKEND` set in its
environment, because the backend cannot change inside a process and a fresh
process gives a clean peak-memory figure.
"""
