"""tlkit: transfer learning on small image datasets with Keras 3.

Example:

```python
import tlkit

config = tlkit.Config.from_preset("cpu", overrides={"data": {"data_dir": "fashion-mnist/"}})
run = tlkit.fit(config)            # same as `python -m tlkit.train --preset cpu --data-dir …`
print(run.metrics()["test_accuracy"], run.path)
```
"""

import os

# TensorFlow's C++ start-up chatter drowns the progress bars; users can still override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tlkit import environment  # noqa: E402

environment.tune_xla_cpu()  # before jax starts: XLA reads its flags once
environment.use_onednn()  # before TensorFlow loads its kernels (it warns if too late)
environment.tune_torch_allocator()  # before torch allocates its working set
environment.keep_jax_compilations()  # before jax reads its configuration

from tlkit import runs  # noqa: E402
from tlkit.config import PRESETS, Config, ConfigError  # noqa: E402
from tlkit.runs import load_model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "PRESETS", "classify", "export_model", "fit", "load_model", "runs", "__version__"]


def fit(config, run=None, resume=False, verbose="auto"):
    """Trains and evaluates one model as `python -m tlkit.train` does; see `tlkit.training.fit`."""
    from tlkit.training import fit as _fit  # imports Keras lazily: the CLI validates first

    return _fit(config, run=run, resume=resume, verbose=verbose)


def classify(run_or_path, images_or_paths, top_k=3, batch_size=64):
    """Top-k classes of new images with a run's model, as `python -m tlkit.predict`; see `tlkit.predict.classify`."""
    from tlkit.predict import classify as _classify

    return _classify(run_or_path, images_or_paths, top_k=top_k, batch_size=batch_size)


def export_model(run_or_path, format="keras", out=None):
    """Exports a run's model and checks the artefact, as `python -m tlkit.export`; see `tlkit.export`."""
    from tlkit.export import export_model as _export_model

    return _export_model(run_or_path, format, out)
