"""Accuracy regression check: the `cpu` recipe, reduced to a minute, must keep its accuracy.

The run is the `cpu` preset (so recipe changes are checked too) on a 3,000-image training
subset (10% held out for validation) and 1,000 test images at 32 px, with fewer epochs,
both caches on, float32 (`studies.regression.regression_config`). `python -m studies.regression`
runs it over seeds and backends and writes the spread to `docs/regression.md`; the threshold sits
below the lowest calibrated accuracy by a margin of several standard deviations. Accuracy only,
never time.
"""

import pytest

from studies.regression import regression_config
from tlkit import fit

pytestmark = pytest.mark.real_data

# Calibrated in docs/regression.md (lowest calibrated accuracy minus the margin given there).
THRESHOLD = 0.74


def test_reduced_cpu_recipe_keeps_its_accuracy(real_data_dir, real_weights, tmp_path):
    run = fit(regression_config(real_data_dir, real_weights, tmp_path / "runs", tmp_path / "cache"), verbose=0)
    metrics = run.metrics()
    print(f"regression check: test accuracy {metrics['test_accuracy']:.4f} (threshold {THRESHOLD})")
    assert metrics["boundary_cache"]["used"] and metrics["feature_cache"]["used"]
    assert metrics["test_accuracy"] >= THRESHOLD, (
        f"test accuracy {metrics['test_accuracy']:.4f} fell below the calibrated {THRESHOLD} "
        "(docs/regression.md); a change made the recipe worse")
