"""Data-parallel training through keras.distribution, on real simulated devices.

JAX splits the host CPU into several devices with `--xla_force_host_platform_device_count`, set
before JAX starts, so the multi-device checks run in a fresh process. Keras runs its distribution
API on JAX only: under the other backends the tests check the error that says so.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from tests.helpers import REPO, SMOKE, only_run, run_cli
from tlkit.batches import ArrayBatches

ON_JAX = keras.backend.backend() == "jax"
JAX_ONLY = pytest.mark.skipif(not ON_JAX, reason="keras.distribution runs on the JAX backend only; "
                                                 "the other backends are checked for the error that says so")


def devices_env(count: int) -> dict:
    return {"XLA_FLAGS": f"--xla_force_host_platform_device_count={count}", "KERAS_BACKEND": "jax"}


def run_script(source: str, devices: int, timeout: float = 300) -> dict:
    """Runs `source` in a fresh Python with `devices` CPU devices; returns the JSON it prints last."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(source)], cwd=REPO, capture_output=True,
                            text=True, timeout=timeout, env={**os.environ, **devices_env(devices)})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- batches that split evenly ----------------------------------------------------------------


def test_training_batches_pad_with_the_same_epochs_images_so_none_is_lost():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    batches = ArrayBatches(x, y, batch_size=4, shuffle=True, seed=3, multiple_of=4)
    for _ in range(2):
        batches.on_epoch_begin()
        seen = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])
        assert [len(batches[i][1]) % 4 for i in range(len(batches))] == [0, 0, 0]
        assert set(seen.astype(int)) == set(range(10)) and len(seen) == 12  # 2 images repeated


def test_evaluation_batches_weight_the_padding_zero_so_each_image_counts_once():
    x, y = np.arange(10.0)[:, None], np.arange(10)
    batches = ArrayBatches(x, y, batch_size=4, multiple_of=4)
    weights = np.concatenate([batches[i][2] for i in range(len(batches))])
    images = np.concatenate([batches[i][0][:, 0] for i in range(len(batches))])
    assert np.allclose(weights[:10], 12 / 10) and not weights[10:].any()  # 12 rows, 10 real ones
    assert list(images[weights > 0].astype(int)) == list(range(10))
    # Without padding the batches keep their plain (x, y) form.
    assert len(ArrayBatches(x[:8], y[:8], batch_size=4, multiple_of=4)[0]) == 2


def test_each_process_of_a_multi_host_run_gets_its_share_of_every_batch():
    x, y = np.arange(8.0)[:, None], np.arange(8)
    shares = [ArrayBatches(x, y, batch_size=4, multiple_of=4, process=(index, 2)) for index in (0, 1)]
    assert [shares[0][i][0][:, 0].tolist() for i in range(2)] == [[0, 1], [4, 5]]
    assert [shares[1][i][0][:, 0].tolist() for i in range(2)] == [[2, 3], [6, 7]]


# ---- clear errors -------------------------------------------------------------------------------


def test_data_parallel_on_a_backend_without_keras_distribution_says_to_use_jax(tmp_path, synthetic_data_dir):
    if ON_JAX:
        # JAX with 2 devices: a global batch that does not split evenly is refused before any compute.
        result = run_cli(*SMOKE, "--data-dir", synthetic_data_dir, "--runs-dir", tmp_path / "runs",
                         "--distribution", "data_parallel", "--batch-size", "33", env=devices_env(2))
        assert result.returncode == 2, result.stderr
        assert "batch_size: 33 does not split evenly across 2 devices; use a multiple of 2 (e.g. 34)" in result.stderr
    else:
        result = run_cli(*SMOKE, "--data-dir", synthetic_data_dir, "--runs-dir", tmp_path / "runs",
                         "--distribution", "data_parallel")
        assert result.returncode == 2, result.stderr
        assert "distribution.mode: 'data_parallel' needs KERAS_BACKEND=jax" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# ---- real sharding on simulated devices (JAX) ---------------------------------------------------


@JAX_ONLY
def test_two_devices_replicate_every_variable_and_shard_each_batch():
    """tlkit's stage runner under the data-parallel scope: what the devices really hold."""
    report = run_script("""
        import json
        import jax, keras, numpy as np
        from tlkit.config import Config, HeadStageConfig
        from tlkit.distribution import Placement
        from tlkit.stages import run_stage

        seen = []

        class InspectSharding(keras.layers.Layer):
            def call(self, x):
                jax.debug.inspect_array_sharding(x, callback=lambda s: seen.append((s.spec[0], len(s.device_set))))
                return x

        config = Config.from_preset("smoke", {"distribution": {"mode": "data_parallel"}, "batch_size": 8})
        placement = Placement.plan(config)
        with placement.scope():
            inputs = keras.Input((6,))
            model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(InspectSharding()(inputs)))
            x, y = np.random.default_rng(0).normal(size=(21, 6)).astype("float32"), np.arange(21) % 3
            run_stage(model, HeadStageConfig(epochs=1), (x, y), (x[:11], y[:11]), stage="head", batch_size=8,
                      verbose=0)
            variables = [v.value for v in model.weights + model.optimizer.variables]
        print(json.dumps({
            "devices": placement.devices, "batch_axes": sorted(set(seen)),
            "replicated": all(v.sharding.is_fully_replicated and len(v.sharding.device_set) == 2
                              for v in variables),
            "variables": len(variables)}))
    """, devices=2)
    assert report["devices"] == ["cpu:0", "cpu:1"]
    assert report["replicated"] and report["variables"] > 2
    # The batch axis is split across the mesh's "batch" axis (each device holds half of every batch).
    assert report["batch_axes"] == [["batch", 2]]


@JAX_ONLY
def test_a_four_device_run_matches_the_one_device_run_and_counts_every_test_image_once(
        tmp_path, synthetic_data_dir):
    """The whole recipe (feature + boundary caches, both stages) on 1 and on 4 devices with the same
    global batch: 232 training images (whole multiples of 4, so both runs see the same batches),
    30 validation and 99 test images (padded to multiples of 4, the padding weighted 0 / dropped)."""
    report = run_script(f"""
        import json
        from tlkit import fit
        from tlkit.config import Config

        accuracies, metrics = {{}}, {{}}
        for mode in ("none", "data_parallel"):
            config = Config.from_preset("smoke", {{
                "name": mode, "runs_dir": "{tmp_path / 'runs'}", "cache_dir": "{tmp_path}/" + mode,
                "batch_size": 32, "distribution": {{"mode": mode}},
                "data": {{"data_dir": "{synthetic_data_dir}", "train_limit": 262, "test_limit": 99}},
                "head": {{"epochs": 1}}, "finetune": {{"epochs": 1}}}})
            run = fit(config, verbose=0)
            metrics[mode] = run.metrics()
            history = run.history()
            accuracies[mode] = [[row[key] for key in ("loss", "val_loss", "val_accuracy")] for row in history]
        print(json.dumps({{"metrics": metrics, "epochs": accuracies}}))
    """, devices=4)
    one, four = report["metrics"]["none"], report["metrics"]["data_parallel"]
    assert four["distribution"]["devices"] == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert four["distribution"]["per_device_batch_size"] == 8 and one["distribution"]["mode"] == "none"
    assert four["feature_cache"]["used"] and four["boundary_cache"]["used"]
    # Every test image exactly once: the confusion matrix holds 99 predictions, as on one device.
    assert np.sum(four["confusion_matrix"]) == np.sum(one["confusion_matrix"]) == 99
    assert one["data_sizes"] == four["data_sizes"] == {"train": 232, "val": 30, "test": 99}
    # The same model up to the order of floating-point sums across devices. Measured here: every loss
    # identical (relative difference 0.0); the tolerance leaves room for other CPUs' summation order.
    one_epochs, four_epochs = np.array(report["epochs"]["none"]), np.array(report["epochs"]["data_parallel"])
    assert one_epochs.shape == four_epochs.shape == (2, 3)
    assert np.allclose(one_epochs[:, :2], four_epochs[:, :2], rtol=1e-4)
    assert np.array_equal(one_epochs[:, 2], four_epochs[:, 2])  # validation accuracy: exactly the same counts
    assert four["test_accuracy"] == one["test_accuracy"]


@JAX_ONLY
def test_two_hosts_train_one_model_through_the_cli(tmp_path, synthetic_data_dir):
    """Two trainer processes joined by keras.distribution.initialize (one CPU device each, a real
    coordinator on localhost): each feeds its half of every batch, both end with the same model."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    hosts = [subprocess.Popen(
        [sys.executable, "-m", "tlkit.train", *SMOKE, "--data-dir", synthetic_data_dir, "--train-limit", "262",
         "--test-limit", "99", "--runs-dir", tmp_path / f"host{index}", "--cache-dir", tmp_path / f"cache{index}",
         "--distribution", "data_parallel", "--coordinator-address", f"127.0.0.1:{port}",
         "--num-processes", "2", "--process-id", str(index), "--finetune-epochs", "0"],
        cwd=REPO, env={**os.environ, **devices_env(1)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for index in (0, 1)]
    logs = [host.communicate(timeout=300)[0] for host in hosts]
    assert [host.returncode for host in hosts] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    metrics = [only_run(tmp_path / f"host{index}").metrics() for index in (0, 1)]
    histories = [only_run(tmp_path / f"host{index}").history() for index in (0, 1)]
    assert [m["distribution"]["process_id"] for m in metrics] == [0, 1]
    assert all(m["distribution"]["processes"] == 2 and len(m["distribution"]["devices"]) == 2 for m in metrics)
    assert metrics[0]["confusion_matrix"] == metrics[1]["confusion_matrix"]
    assert np.sum(metrics[0]["confusion_matrix"]) == 99
    assert [row["loss"] for row in histories[0]] == [row["loss"] for row in histories[1]]
