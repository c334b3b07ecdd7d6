"""ArrayBatches: seeded shuffling, per-batch float32, and a fit that learns from float16 arrays fed
through keras_input (a tf.data pipeline without autotuning under TensorFlow)."""

import warnings

import keras
import numpy as np
import pytest

from tlkit.batches import ArrayBatches, aligned_empty, fit_input, keras_input


def epoch_indices(batches):
    batches.on_epoch_begin()
    return np.concatenate([batches[i][1] for i in range(len(batches))]).astype(int)


def test_each_epoch_visits_every_sample_once_in_a_seeded_order():
    x = np.arange(103, dtype="float16")[:, None]
    labels = np.arange(103)
    first, twin, other = (ArrayBatches(x, labels, 10, shuffle=True, seed=s) for s in (7, 7, 8))
    orders = [epoch_indices(first) for _ in range(2)]
    assert len(first) == 11 and len(first[10][1]) == 3
    assert sorted(orders[0]) == list(range(103)) and sorted(orders[1]) == list(range(103))
    assert list(orders[0]) != list(orders[1])  # a new order every epoch
    assert [list(epoch_indices(twin)) for _ in range(2)] == [list(o) for o in orders]
    assert list(epoch_indices(other)) != list(orders[0])
    assert list(epoch_indices(ArrayBatches(x, labels, 10))) == list(range(103))  # unshuffled


def test_floats_become_float32_per_batch_and_the_source_stays_float16():
    x = [np.ones((20, 3), "float16"), np.ones((20, 2), "float16")]
    images = np.ones((20, 4, 4), "uint8")
    labels = np.arange(20, dtype="int32")
    inputs, targets = ArrayBatches(x, labels, 8)[0]
    assert isinstance(inputs, tuple) and [a.dtype for a in inputs] == ["float32", "float32"]
    assert targets.dtype == "int32" and x[0].dtype == "float16"
    assert ArrayBatches(images, labels, 8)[2][0].dtype == "uint8"  # integers keep their dtype
    with pytest.raises(ValueError, match="samples"):
        ArrayBatches(x, labels[:5], 8)


def test_a_model_fits_float16_arrays_through_it():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 256)
    x = (rng.normal(size=(256, 4)) + labels[:, None] * 2).astype("float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    batches = ArrayBatches(x, labels, 32, shuffle=True, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Keras' "your input ran out of data"
        history = model.fit(**fit_input(batches, epochs=5), epochs=5, shuffle=False,
                            validation_data=keras_input(ArrayBatches(x, labels, 64)), verbose=0)
    assert len(history.history["loss"]) == 5 and history.history["val_accuracy"][-1] > 0.9


def test_predict_takes_unlabelled_batches_in_order():
    x = np.random.default_rng(1).normal(size=(70, 4)).astype("float16")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    expected = model.predict(x.astype("float32"), batch_size=16, verbose=0)
    batches = ArrayBatches(x, batch_size=16)
    assert len(batches[0]) == 1 and batches[4][0].shape == (6, 4)
    # Float noise only (oneDNN may sum in another order); a wrong order would be far off.
    np.testing.assert_allclose(model.predict(keras_input(batches), verbose=0), expected, rtol=1e-4)


def as_numpy(batch):
    return keras.tree.map_structure(lambda value: np.asarray(value), batch)


FEEDS = {  # (x, y, ArrayBatches options): each way the stages, caches and predict build batches
    "shuffled, mirror choice, padded": (np.arange(50, dtype="float16")[:, None], np.arange(50),
                                        {"shuffle": True, "seed": 3, "multiple_of": 4, "x_alternative": "negated"}),
    "evaluation, padding weighted": (np.arange(50, dtype="float32")[:, None], np.arange(50), {"multiple_of": 4}),
    "one host's share": (np.arange(48, dtype="float16")[:, None], np.arange(48),
                         {"shuffle": True, "seed": 1, "multiple_of": 4, "process": (1, 2)}),
    "two inputs, dense targets": ([np.ones((30, 3, 2), "float16"), np.arange(30, dtype="uint8")[:, None]],
                                  np.eye(30, dtype="float32"), {"shuffle": True, "seed": 2}),
    "predict": (np.arange(21, dtype="float16")[:, None], None, {}),
}


@pytest.mark.parametrize("feed", FEEDS)
def test_the_keras_input_yields_the_batches_of_each_epoch_in_turn(feed):
    x, y, options = FEEDS[feed]
    if options.get("x_alternative") == "negated":
        options = {**options, "x_alternative": -x}
    batches, twin = ArrayBatches(x, y, 8, **options), ArrayBatches(x, y, 8, **options)
    data = keras_input(batches, epochs=3)
    if keras.backend.backend() != "tensorflow":
        assert data is batches  # Keras drives the PyDataset's epochs itself
        return
    epochs = 3 if options.get("shuffle") else 1  # unshuffled, every pass is the same
    expected = []
    for _ in range(epochs):
        twin.on_epoch_begin()
        expected += [twin[index] for index in range(len(twin))]
    fed = [as_numpy(batch) for batch in data]
    assert len(fed) == int(data.cardinality()) == len(expected)
    for got, want in zip(fed, expected):
        assert keras.tree.map_structure(lambda a: (a.dtype, a.shape), got) == \
            keras.tree.map_structure(lambda a: (a.dtype, a.shape), want)
        keras.tree.map_structure(np.testing.assert_array_equal, got, want)
    assert data.options().autotune.enabled is False


def test_tensorflow_reads_aligned_arrays_in_place():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the in-place reading is TensorFlow's feeding path; JAX and torch get the PyDataset")
    aligned, unaligned = aligned_empty((40, 3), "float16"), np.zeros((41, 3), "float16")[1:]
    assert aligned.ctypes.data % 64 == 0 and unaligned.ctypes.data % 64 != 0
    aligned[...], unaligned[...] = 1, 1
    fed_aligned, fed_unaligned = (keras_input(ArrayBatches(array, batch_size=40)) for array in (aligned, unaligned))
    aligned[...], unaligned[...] = 2, 2  # after keras_input: seen only where it shares the memory
    assert float(next(iter(fed_aligned))[0][0, 0]) == 2 and float(next(iter(fed_unaligned))[0][0, 0]) == 1


def test_an_alternative_version_replaces_about_half_the_samples_each_epoch_in_a_seeded_draw():
    x = np.arange(1, 1001, dtype="float32")[:, None]

    def taken_from_alternative(batches):  # per sample, this epoch
        batches.on_epoch_begin()
        inputs, labels = (np.concatenate(part) for part in zip(*(batches[i] for i in range(len(batches)))))
        assert sorted(labels) == list(range(1000))  # every sample once, as itself or as its alternative
        assert (np.abs(inputs[:, 0]) == x[labels, 0]).all()
        taken = np.zeros(1000, bool)
        taken[labels] = inputs[:, 0] < 0
        return taken

    batches = ArrayBatches(x, np.arange(1000), 64, shuffle=True, seed=3, x_alternative=-x)
    first, second = taken_from_alternative(batches), taken_from_alternative(batches)
    assert 400 < first.sum() < 600 and (first != second).any()  # a new draw every epoch
    resumed = ArrayBatches(x, np.arange(1000), 64, shuffle=True, seed=3, x_alternative=-x)
    resumed.skip_epochs(1)
    np.testing.assert_array_equal(taken_from_alternative(resumed), second)  # a resumed fit draws the same
    with pytest.raises(ValueError, match="x_alternative"):
        ArrayBatches(x, np.arange(1000), 64, shuffle=True, x_alternative=x[:10])
