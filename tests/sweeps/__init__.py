"""Tests of `python -m tlkit.sweep`: spec validation, the local (queue) engine, the Ray engine with ASHA, the
explorer's sweep view. They train real smoke runs and start a real Ray cluster, so they run once (under jax),
not per backend: `make test-sweeps`."""
