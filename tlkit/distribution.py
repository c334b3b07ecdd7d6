"""One run on several devices or hosts, through `keras.distribution`.

`--distribution data_parallel` replicates every variable on each device and splits each batch
along its first axis across them (`keras.distribution.DataParallel`); with several hosts,
`keras.distribution.initialize()` first joins the processes into one JAX cluster. Keras runs
its distribution API on JAX only (its TensorFlow code is marked a prototype, torch has none),
so other backends get a clear error instead of a silent single-device run.

`batch_size` stays the *global* batch: each of D devices gets `batch_size / D` images. Every
batch has to split evenly, the last one too, so the batches pad their last batch to a multiple
of D (`tlkit.batches.ArrayBatches`): training repeats a few images of the same epoch, evaluation
weights the padding 0 and predictions drop it, so each image counts exactly once.

Example:

```python
from tlkit.config import Config
from tlkit.distribution import Placement

config = Config.from_preset("smoke", overrides={"distribution": {"mode": "data_parallel"}})
placement = Placement.plan(config)        # KERAS_BACKEND=jax; devices from jax.devices()
with placement.scope():                   # build and train the model in here
    ...
placement.describe()                      # what metrics.json records
```
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys

import keras
import numpy as np

from tlkit.config import Config, ConfigError, DistributionConfig
from tlkit.environment import list_devices

SUPPORTED_BACKENDS = ("jax",)
ACCELERATORS = ("gpu", "tpu", "cuda")
# keras.distribution.initialize() reads these when its arguments are None.
ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"
_joined: list[str] = []  # a process joins its cluster once (a second fit() in it reuses the cluster)


@dataclasses.dataclass
class Placement:
    """Where one run's computation goes: one device, or data parallel over `devices`.

    Args:
        mode: `"none"` (one device, Keras' default placement) or `"data_parallel"`.
        devices: the devices a batch is split across (all processes'), e.g. `["cpu:0", "cpu:1"]`.
        processes: how many processes (hosts) take part.
        process_id: this process's index among them.
        requested: the `distribution.mode` the config asked for (`auto` resolves to one of the two).
    """

    mode: str = "none"
    devices: list[str] = dataclasses.field(default_factory=list)
    processes: int = 1
    process_id: int = 0
    requested: str = "none"

    @classmethod
    def plan(cls, config: Config) -> Placement:
        """Resolves `config.distribution` on the devices at hand.

        Raises:
            ConfigError: data parallel on a backend without Keras' distribution API, or a
                `batch_size` that does not split evenly across the devices.
        """
        settings = config.distribution
        backend = keras.backend.backend()
        devices = list_devices()
        mode = settings.mode
        if mode == "auto":
            accelerators = [d for d in devices if d.lower().startswith(ACCELERATORS)]
            if len(accelerators) > 1 and backend not in SUPPORTED_BACKENDS:
                print(f"tlkit: {len(accelerators)} accelerators visible, but Keras' distribution API runs only on "
                      "JAX; training on one (set KERAS_BACKEND=jax to use them all)", file=sys.stderr)
            mode = "data_parallel" if len(accelerators) > 1 and backend in SUPPORTED_BACKENDS else "none"
        if mode == "none":
            return cls("none", devices[:1], 1, 0, settings.mode)
        if backend not in SUPPORTED_BACKENDS:
            raise ConfigError(
                f"distribution.mode: {mode!r} needs KERAS_BACKEND=jax; Keras {keras.__version__} runs its "
                f"distribution API only on JAX (not on {backend}); rerun with KERAS_BACKEND=jax, or drop "
                "--distribution to train on one device"
            )
        processes, process_id = process_layout(settings)
        if config.batch_size % len(devices):
            raise ConfigError(
                f"batch_size: {config.batch_size} does not split evenly across {len(devices)} devices; use a "
                f"multiple of {len(devices)} (e.g. {round_up(config.batch_size, len(devices))})"
            )
        return cls("data_parallel", devices, processes, process_id, settings.mode)

    @property
    def batch_multiple(self) -> int:
        """Every batch's size must be a multiple of this (1 on one device)."""
        return len(self.devices) if self.mode == "data_parallel" else 1

    @contextlib.contextmanager
    def scope(self):
        """Makes the distribution current; variables created inside are replicated on every device."""
        if self.mode == "none":
            yield
            return
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        distribution.auto_shard_dataset = False  # each host's ArrayBatches already yield its share
        with distribution.scope():
            yield

    def learning_rate(self, config: Config, learning_rate: float) -> float:
        """A stage's learning rate under `distribution.lr_scaling`."""
        settings = config.distribution
        if settings.lr_scaling == "linear":
            return learning_rate * config.batch_size / settings.lr_reference_batch
        return learning_rate

    def describe(self, config: Config) -> dict:
        """metrics.json's `distribution` entry."""
        return {"mode": self.mode, "requested": self.requested, "devices": list(self.devices),
                "processes": self.processes, "process_id": self.process_id,
                "global_batch_size": config.batch_size,
                "per_device_batch_size": config.batch_size // max(len(self.devices), 1),
                "lr_scaling": config.distribution.lr_scaling,
                "lr_reference_batch": config.distribution.lr_reference_batch}


def batch_multiple() -> int:
    """What every batch's size must be a multiple of under the current Keras distribution (1 without one)."""
    distribution = keras.distribution.distribution()
    return int(distribution.device_mesh.devices.size) if distribution is not None else 1


# Under jax every new batch shape compiles the model again: ResNet50 features at 72 px took 1.4-1.5 s more
# for a 70- or 22-image batch than for the same batch once compiled, the time of ~150 images (2 CPU cores,
# AVX2). A whole batch for the last one costs at most an eighth more work under this bound.
MAX_PADDING_SHARE = 1 / 8


def evaluation_multiple(num_samples: int, batch_size: int) -> int:
    """What the batches of `num_samples` evaluated or predicted in batches of `batch_size` pad to a multiple of.

    `batch_multiple()`, and under jax the whole batch when a last partial batch would add a batch shape
    to compile and padding it adds at most `MAX_PADDING_SHARE` to the work (`ArrayBatches(multiple_of=...)`
    weights the padding 0, and predictions drop it).
    """
    multiple = batch_multiple()
    batch_size = round_up(batch_size, multiple)
    padding = -num_samples % batch_size
    if keras.backend.backend() == "jax" and num_samples > batch_size and padding <= MAX_PADDING_SHARE * num_samples:
        return batch_size
    return multiple


def process_share() -> tuple[int, int]:
    """(this process's index, process count) of the current multi-host run; (0, 1) on one host."""
    if keras.distribution.distribution() is None or keras.backend.backend() != "jax":
        return 0, 1
    import jax  # backend-specific: the process index of a multi-host JAX cluster

    return jax.process_index(), jax.process_count()


def predict_across_hosts(model: keras.Model, images, batch_size: int) -> list:
    """`model`'s outputs on `images` (the same array, or list of arrays, on every host) when a run
    spans several hosts.

    Keras' JAX `predict` cannot return outputs that live on other hosts' devices, so each host
    feeds its share of every batch, the devices compute the whole batch, and every host gathers
    all of the outputs. `batch_size` and len(images) must be multiples of the device count.
    Backend-specific: JAX only (the only backend with multi-host Keras distribution).
    """
    import jax
    from jax.experimental import multihost_utils

    distribution = keras.distribution.distribution()
    index, count = jax.process_index(), jax.process_count()
    forward = jax.jit(lambda x: model(x, training=False))

    def local_share(array, start):
        batch = array[start:start + batch_size]
        share = len(batch) // count
        mine = batch[index * share:(index + 1) * share]
        mine = mine.astype("float32") if np.issubdtype(mine.dtype, np.floating) else mine
        layout = distribution.get_data_layout(batch.shape).backend_layout
        return jax.make_array_from_process_local_data(layout, mine)

    outputs = []
    for start in range(0, len(keras.tree.flatten(images)[0]), batch_size):
        values = forward(keras.tree.map_structure(lambda array, start=start: local_share(array, start), images))
        values = values if isinstance(values, (list, tuple)) else [values]
        outputs.append([multihost_utils.process_allgather(value, tiled=True) for value in values])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def round_up(value: int, factor: int) -> int:
    """The smallest multiple of `factor` that is at least `value`."""
    return -(-value // factor) * factor


def process_layout(settings: DistributionConfig) -> tuple[int, int]:
    """(process count, this process's id) from the config, else Keras' environment variables, else (1, 0)."""
    processes = settings.num_processes or int(os.environ.get(ENV_PROCESSES) or 1)
    process_id = settings.process_id if settings.process_id >= 0 else int(os.environ.get(ENV_PROCESS_ID) or 0)
    if not 0 <= process_id < processes:
        raise ConfigError(f"distribution.process_id: {process_id} is not in 0..{processes - 1} "
                          f"(num_processes {processes})")
    return processes, process_id


def initialize(config: Config) -> None:
    """Joins this process to a multi-host JAX cluster when the config or environment asks for
    several processes; must run before any computation (the CLI calls it first)."""
    settings = config.distribution
    if settings.mode == "none":
        return
    processes, process_id = process_layout(settings)
    if processes <= 1:
        return
    if keras.backend.backend() not in SUPPORTED_BACKENDS:
        raise ConfigError(f"distribution.num_processes: several processes need KERAS_BACKEND=jax "
                          f"(not {keras.backend.backend()})")
    if _joined:
        return
    address = settings.coordinator_address or os.environ.get(ENV_ADDRESSES, "")
    if not address:
        raise ConfigError(f"distribution.coordinator_address: {processes} processes need the coordinator's "
                          f"host:port (--coordinator-address or ${ENV_ADDRESSES})")
    keras.distribution.initialize(address, processes, process_id)
    _joined.append(address)
