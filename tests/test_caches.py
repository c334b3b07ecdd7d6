"""Feature cache (head stage) and boundary cache (finetune stage) train the same model, faster."""

import tracemalloc

import keras
import numpy as np
import pytest

import tlkit
from tlkit import runs
from tlkit.caches import CacheStore, PredictProgress, all_finite, predict_in_chunks
from tlkit.data import load_splits
from tlkit.model import build_classifier

from .helpers import smoke_config


def predictions(run):
    config = tlkit.Config.from_dict(run.config())
    splits = load_splits(config.data, config.seed)
    return run.load_model().predict(splits.test.images, verbose=0)


def test_feature_cache_gives_the_same_model_and_is_reused(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"),
                          model={"dropout": 0.0}, head={"epochs": 3, "learning_rate": 3e-2}, finetune={"epochs": 0})
    cached = tlkit.fit(config, verbose=0)
    full = tlkit.fit(config.replace(feature_cache=False), verbose=0)
    again = tlkit.fit(config, verbose=0)
    record = cached.metrics()["feature_cache"]
    assert record["used"] and not record["head"]["train"]["hit"] and record["head"]["train"]["stored"]
    assert again.metrics()["feature_cache"]["head"]["train"]["hit"]
    assert not full.metrics()["feature_cache"]["used"]
    np.testing.assert_allclose(predictions(cached), predictions(full), atol=2e-4)
    np.testing.assert_allclose(predictions(again), predictions(cached), atol=1e-6)
    assert cached.metrics()["test_accuracy"] == full.metrics()["test_accuracy"]


def test_caches_are_off_with_augmentation_beyond_a_flip(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"),
                          augment={"flip": True, "rotation": 0.05})
    metrics = tlkit.fit(config, verbose=0).metrics()
    assert not metrics["feature_cache"]["used"] and not metrics["boundary_cache"]["used"]
    assert metrics["boundary_cache"]["reason"] == "augmentation beyond a flip is on"


def test_a_random_flip_keeps_both_caches_which_then_hold_the_mirror_images_too(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"), augment={"flip": True},
                          head={"epochs": 2}, finetune={"epochs": 1, "unfreeze": "conv4"})
    run = tlkit.fit(config, verbose=0)
    again = tlkit.fit(config.replace(finetune={"learning_rate": 2e-3}), verbose=0)

    head, boundary = run.metrics()["feature_cache"]["head"], run.metrics()["boundary_cache"]
    assert run.status()["state"] == "completed" and boundary["used"]
    assert not head["train_mirrored"]["hit"] and not boundary["train_mirrored"]["hit"]
    assert boundary["train_mirrored"]["stored"]
    splits = load_splits(config.data, config.seed)
    per_image = 2 * int(np.prod(boundary["shapes"][0]))  # float16
    assert boundary["bytes"] == per_image * (2 * len(splits.train) + len(splits.val))  # the budget counts them
    assert again.metrics()["feature_cache"]["head"]["train_mirrored"]["hit"]
    assert again.metrics()["boundary_cache"]["train_mirrored"]["hit"]
    # What was cached for the mirror images is what the frozen backbone makes of them.
    keras.utils.set_random_seed(config.seed)  # as the run did: the seed draws the random backbone
    classifier = build_classifier(config.model, seed=config.seed, num_classes=len(splits.class_names),
                                  input_shape=splits.input_shape)
    expected = classifier.feature_model().predict(splits.train.images[:, :, ::-1], verbose=0)
    cached = CacheStore(config.cache_dir).load(head["train_mirrored"]["key"], len(splits.train))
    plain = CacheStore(config.cache_dir).load(head["train"]["key"], len(splits.train))
    np.testing.assert_allclose(cached, expected, atol=2e-2)  # via float16 boundary activations
    # Pooled features are nearly mirror-symmetric; still, they match the mirror images', not the images'.
    assert 5 * np.abs(cached - expected).mean() < np.abs(cached - plain).mean()


def test_corrupt_cache_file_is_recomputed(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"), finetune={"epochs": 0})
    tlkit.fit(config, verbose=0)
    for path in (tmp_path / "cache" / "features").glob("*.npy"):
        path.write_bytes(b"broken")
    run = tlkit.fit(config, verbose=0)
    assert run.status()["state"] == "completed"
    assert not run.metrics()["feature_cache"]["head"]["train"]["hit"]


@pytest.mark.parametrize("unfreeze, boundary_tensors", [("conv4", 1), ("6", 2)])
def test_boundary_cache_trains_the_same_model(synthetic_data_dir, tmp_path, unfreeze, boundary_tensors):
    config = smoke_config(synthetic_data_dir, tmp_path, feature_cache=False, model={"dropout": 0.0},
                          head={"epochs": 1}, finetune={"epochs": 2, "learning_rate": 1e-3, "unfreeze": unfreeze})
    cached = tlkit.fit(config, verbose=0)
    full = tlkit.fit(config.replace(boundary_cache=False), verbose=0)
    record = cached.metrics()["boundary_cache"]
    assert record["used"] and len(record["shapes"]) == boundary_tensors
    assert not full.metrics()["boundary_cache"]["used"]
    # float16 storage of the boundary activations: close, not bit-identical.
    np.testing.assert_allclose(predictions(cached), predictions(full), atol=2e-2)
    assert [r["stage"] for r in cached.history()] == ["head", "finetune", "finetune"]


def test_boundary_cache_over_budget_falls_back_with_a_reason(synthetic_data_dir, tmp_path):
    # conv2 at 32 px: 32*32*16 float16 values = 32 KB per image, 9.6 MB for 300 images > 1 MB.
    config = smoke_config(synthetic_data_dir, tmp_path, cache_memory_gb=0.001, head={"epochs": 0},
                          finetune={"unfreeze": "conv2"})
    run = tlkit.fit(config, verbose=0)
    record = run.metrics()["boundary_cache"]
    assert run.status()["state"] == "completed"
    assert not record["used"] and record["bytes"] == 300 * 32 * 32 * 16 * 2
    assert "needs 0.00983 GB for 300 images, over the 0.001 GB budget" in record["reason"]
    assert "--cache-memory-gb" in record["reason"]


def test_both_stages_share_one_prefix_pass_and_later_runs_reuse_it(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"), model={"dropout": 0.0},
                          head={"epochs": 2, "learning_rate": 3e-2},
                          finetune={"epochs": 2, "learning_rate": 1e-3, "unfreeze": "conv4"})
    shared = tlkit.fit(config, verbose=0)
    full = tlkit.fit(config.replace(feature_cache=False, boundary_cache=False), verbose=0)
    again = tlkit.fit(config.replace(finetune={"learning_rate": 2e-3}), verbose=0)

    head = shared.metrics()["feature_cache"]["head"]
    boundary = shared.metrics()["boundary_cache"]
    assert head["train"]["via_boundary"] == boundary["boundary"] == "conv4_block1_1_conv"
    # The head stage computed the activations; the finetune stage reused them in memory.
    assert not boundary["train"]["hit"] and boundary["train"]["stored"] and boundary["used"]
    # Same model as the full graph, up to float16 storage of the activations.
    np.testing.assert_allclose(predictions(shared), predictions(full), atol=2e-2)
    # A run that differs after the boundary reads features and activations back from disk.
    assert again.metrics()["feature_cache"]["head"]["train"]["hit"]
    assert again.metrics()["boundary_cache"]["train"]["hit"]
    assert again.status()["state"] == "completed"


def test_random_backbones_of_different_seeds_never_share_cached_features(synthetic_data_dir, tmp_path):
    # Without a validation split or a limit, every seed trains on the same images: only the
    # seed that drew the random backbone tells the features apart.
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"),
                          data={"validation_split": 0.0}, finetune={"epochs": 0})
    first = tlkit.fit(config.replace(seed=1), verbose=0).metrics()["feature_cache"]
    other = tlkit.fit(config.replace(seed=2), verbose=0).metrics()["feature_cache"]
    again = tlkit.fit(config.replace(seed=1), verbose=0).metrics()["feature_cache"]
    assert not first["head"]["train"]["hit"] and not first["test"]["hit"]
    assert not other["head"]["train"]["hit"] and not other["test"]["hit"]
    assert other["head"]["train"]["key"] != first["head"]["train"]["key"]
    assert again["head"]["train"]["hit"] and again["test"]["hit"]


def test_finite_check_of_a_cache_never_allocates_a_mask_over_the_whole_array():
    activations = np.zeros((2048, 64, 128), "float16")  # 32 MiB; a whole-array mask would take 16 MiB
    tracemalloc.start()
    try:
        assert all_finite(activations)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < activations.nbytes / 8, f"the finite check allocated {peak / 2**20:.1f} MiB"
    activations[-1, -1, -1] = np.inf
    assert not all_finite(activations)


def test_a_head_stage_cancelled_mid_way_resumes_to_the_uninterrupted_model(synthetic_data_dir, tmp_path,
                                                                              monkeypatch):
    import tlkit.training as training
    from tlkit import runs

    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"),
                          head={"epochs": 4, "learning_rate": 3e-2}, finetune={"epochs": 1})
    straight = tlkit.fit(config, verbose=0)
    append = runs.Run.append_history

    def cancel_after_second_head_epoch(self, row):  # as a SIGTERM would, between epochs 2 and 3
        append(self, row)
        if row["stage"] == "head" and row["epoch"] == 2:
            training._cancel_requested.set()

    monkeypatch.setattr(runs.Run, "append_history", cancel_after_second_head_epoch)
    with pytest.raises(tlkit.training.RunCancelled):
        tlkit.fit(config, verbose=0)
    monkeypatch.setattr(runs.Run, "append_history", append)
    (run,) = [r for r in runs.list_runs(config.runs_dir) if r != straight]
    assert run.status()["state"] == "cancelled" and run.status()["completed_stages"] == []
    before = run.history()
    assert [(r["stage"], r["epoch"]) for r in before] == [("head", 1), ("head", 2)]
    tlkit.fit(config, run=run, resume=True, verbose=0)
    assert [(r["stage"], r["epoch"]) for r in run.history()] == [("head", e) for e in (1, 2, 3, 4)] + [("finetune", 1)]
    assert run.history()[:2] == before  # the finished epochs' rows stay exactly as they were
    np.testing.assert_allclose(predictions(run), predictions(straight), atol=1e-6)


def test_predictions_report_progress_batch_by_batch(monkeypatch):
    monkeypatch.setattr(PredictProgress, "INTERVAL", 0.0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    images = np.random.default_rng(0).normal(size=(100, 4)).astype("float32")
    reported = []
    (outputs,) = predict_in_chunks(model, images, 8, [np.empty((100, 2), "float32")], reported.append, chunk=48)
    assert reported == sorted(reported) and reported[-1] == 1.0 and len(reported) >= 13  # 13 batches, 3 chunks
    np.testing.assert_allclose(outputs, model.predict(images, verbose=0), atol=1e-6)


class BatchSizes(keras.layers.Layer):
    """Passes its input through and records its batch size at each trace (jax, tensorflow) or call (torch)."""

    def __init__(self, record, **kwargs):
        super().__init__(**kwargs)
        self.record = record  # a callable: Keras would track (copy) a list attribute

    def call(self, inputs):
        self.record(inputs.shape[0])
        return inputs


@pytest.mark.parametrize("count, padded", [(300, True), (70, False)])
def test_under_jax_a_short_last_batch_pads_to_a_whole_one_when_that_costs_little(count, padded):
    # 300 = 4 x 64 + 44: 20 padding rows are under an eighth of the work, so jax compiles one shape;
    # 70 = 64 + 6 would need 58 (more than the 70 images' eighth), so it compiles a second shape instead.
    seen = []
    model = keras.Sequential([keras.Input((4,)), BatchSizes(seen.append), keras.layers.Dense(2)])
    images = np.random.default_rng(0).normal(size=(count, 4)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(images))
    seen.clear()
    (outputs,) = predict_in_chunks(model, images, 64, [np.empty((count, 2), "float32")])
    np.testing.assert_allclose(outputs, expected, atol=1e-6)
    if keras.backend.backend() == "jax":
        assert set(seen) == ({64} if padded else {64, count % 64})


def test_every_phase_reports_progress_and_eta_in_status(synthetic_data_dir, tmp_path, monkeypatch):
    # Cache extraction, fitting and evaluation each report while they run (here after every batch).
    monkeypatch.setattr(PredictProgress, "INTERVAL", 0.0)
    updates = []
    record = runs.Run.update_status

    def recording(self, **fields):
        updates.append(fields)
        return record(self, **fields)

    monkeypatch.setattr(runs.Run, "update_status", recording)
    config = smoke_config(synthetic_data_dir, tmp_path, cache_dir=str(tmp_path / "cache"), batch_size=16,
                          head={"epochs": 2}, finetune={"epochs": 1})
    tlkit.fit(config, verbose=0)
    activities = [u["activity"] for u in updates if u.get("activity")]
    assert any(a.startswith("features (train)") for a in activities), activities
    assert any(a.startswith("evaluating") for a in activities), activities
    assert updates[-2]["activity"] is None  # the last evaluation report clears it
    fitting = [u for u in updates if "epoch" in u and "progress" in u and u["progress"] > 0]
    assert fitting and all(u["elapsed_s"] >= 0 for u in fitting)
    assert any(u["eta_s"] is not None and u["eta_s"] > 0 for u in fitting)
