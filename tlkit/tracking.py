"""TensorBoard event files for a run: both stages on one epoch axis, with the learning rate.

`--tensorboard` writes `RUN_DIR/tensorboard/` while the run trains; point TensorBoard at the runs
directory to see every run side by side (`tensorboard --logdir runs`).

Why not `keras.callbacks.TensorBoard`: it writes through `tf.summary` (TensorFlow under every
backend) and numbers epochs per `fit` call, so the fine-tune stage would start again at epoch 0
on top of the head stage. tlkit's stages report each epoch already (`StageMonitor`), so this
writes those reports with TensorBoard's own event writer, at the run's global epoch.

Example:

```python
from tlkit.tracking import TensorBoardLog

log = TensorBoardLog("runs/my-run/tensorboard")
log.scalars(step=1, values={"epoch_loss": 0.52, "epoch_val_accuracy": 0.81, "learning_rate": 1e-3})
log.close()
```
"""

from __future__ import annotations

import time
from pathlib import Path

EXTRA = "tensorboard"  # pip install 'tlkit[tensorboard]'


def tensorboard_missing() -> str | None:
    """Why `--tensorboard` cannot work here (the package to install), or None when it can."""
    try:
        import tensorboard.summary.writer.event_file_writer  # noqa: F401
    except ImportError:
        return f"--tensorboard needs the tensorboard package: pip install 'tlkit[{EXTRA}]' (or tensorboard)"
    return None


class TensorBoardLog:
    """Scalars into TensorBoard event files under `directory`.

    Args:
        directory: where the event files go (made if missing); a resumed run appends a new file.
    """

    def __init__(self, directory: str | Path):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._writer = EventFileWriter(str(self.directory))

    def scalars(self, step: int, values: dict[str, float | None]) -> None:
        """Writes each finite number of `values` under its tag at `step`; None values are skipped."""
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in values.items() if value is not None
        ])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
