"""Does test-time flip averaging help? Judged on a finished run's validation split only.

    python -m studies.tta_val RUN_DIR [RUN_DIR ...]

For each run: rebuilds its validation split from `config.json` (the same seeded split the run
trained against), classifies those images with the saved model as they are and mirrored, and
writes `tta_val.json` into the run directory: validation accuracy without and with averaging the
two. The test set is never touched, so the result can choose `tta_flip` for a recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from tlkit import runs
from tlkit.caches import mirror
from tlkit.config import Config
from tlkit.data import load_splits
from tlkit.predict import classify

RESULT_FILE = "tta_val.json"


def flip_gain_on_validation(run: runs.Run, batch_size: int = 256) -> dict:
    """Validation accuracy of `run`'s saved model without and with flip averaging."""
    config = Config.from_dict(run.config())
    val = load_splits(config.data).val
    if not len(val):
        raise SystemExit(f"{run.path}: the run has no validation split (data.validation_split is 0)")
    # One classify call, so the model is loaded once: the images, then their mirror images.
    both = classify(run, np.concatenate([val.images, mirror(val.images)]), batch_size=batch_size).probabilities
    plain, mirrored = both[:len(val)], both[len(val):]
    accuracy = {name: float(np.mean(np.argmax(p, axis=1) == val.labels))
                for name, p in (("plain", plain), ("flip_averaged", (plain + mirrored) / 2))}
    return {"val_images": len(val), "val_accuracy": accuracy["plain"],
            "val_accuracy_flip_averaged": accuracy["flip_averaged"],
            "gain_points": round(100 * (accuracy["flip_averaged"] - accuracy["plain"]), 2)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories with a saved model.keras")
    args = parser.parse_args(argv)
    for path in args.runs:
        run = runs.Run(path)
        result = flip_gain_on_validation(run)
        runs.write_json(run.file(RESULT_FILE), result)
        print(f"{run.run_id}: {json.dumps(result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
