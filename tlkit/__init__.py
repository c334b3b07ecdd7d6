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

from tlkit import runs  # noqa: E402
from tlkit.config import PRESETS, Config, ConfigError  # noqa: E402
from tlkit.runs import load_model  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "PRESETS", "fit", "load_model", "runs", "__version__"]


def fit(config, run=None, resume=False, verbose="auto"):
    """Trains and evaluates one model as `python -m tlkit.train` does; see `tlkit.training.fit`."""
    from tlkit.training import fit as _fit  # imports Keras lazily: the CLI validates first

    return _fit(config, run=run, resume=resume, verbose=verbose)
