"""What each benchmark section measures, with which sizes in quick and full mode.

Parent side only (no Keras import): a section turns a mode into a list of
`Case`s, each run in its own child process per backend by `benchmarks.run`.
Sizes are chosen so that the full run fits in about 25 minutes on a 2-core CPU
and `--quick` in a few minutes; the report prints them next to the numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import DATA_DIR, WEIGHTS

SEED = 42
BACKENDS = ("tensorflow", "jax", "torch")
# torch's OpenMP threads spin-wait; when other work shares a small machine, a descheduled thread stalls every
# parallel region and throughput collapses (~10× here). OMP_WAIT_POLICY=PASSIVE (read when torch loads) shows it.
TORCH_PASSIVE = "torch+OMP_WAIT_POLICY=PASSIVE"


def parse_backend(spec: str) -> tuple[str, dict[str, str]]:
    """`"torch+OMP_WAIT_POLICY=PASSIVE"` → `("torch", {"OMP_WAIT_POLICY": "PASSIVE"})`: a backend plus env vars.

    Raises:
        ValueError: for an unknown backend or a malformed `+NAME=value`.
    """
    name, *assignments = spec.split("+")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    env = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals or not key:
            raise ValueError(f"{spec!r}: write extra environment variables as backend+NAME=value")
        env[key] = value
    return name, env


@dataclasses.dataclass(frozen=True)
class Case:
    """One child process: `function` from `benchmarks.cases` with `params`, shown as `label`."""

    label: str
    function: str
    params: dict
    timeout: int


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    title: str
    default_backends: tuple[str, ...]
    settings: dict[str, dict]  # mode ("quick"/"full") → sizes
    plan: Callable[[dict, Path], list[Case]]


# ---- 1. pipeline ---------------------------------------------------------------------

PIPELINE_SETTINGS = {
    "quick": {"speed": {"image_size": 64, "images": 256, "epochs": 2, "batch_size": 32},
              "memory": {"image_size": 224, "images": 500, "epochs": 1, "batch_size": 32, "steps_per_epoch": 2}},
    "full": {"speed": {"image_size": 96, "images": 1024, "epochs": 3, "batch_size": 64},
             # ~2.2 MB of seed-style RSS per image at 224 px: 3,000 images stay under ~8 GB on a 24 GB machine.
             "memory": {"image_size": 224, "images": 3000, "epochs": 1, "batch_size": 32, "steps_per_epoch": 3}},
}
# The seed's head (Dense 256 + L2 1e-4 + dropout 0.5) on both sides.
SEED_HEAD = {"head_units": 256, "dropout": 0.5, "l2": 1e-4}


def plan_pipeline(settings: dict, workdir: Path) -> list[Case]:
    speed = {**settings["speed"], "seed": SEED, "head": SEED_HEAD}
    memory = {**settings["memory"], "seed": SEED, "head": SEED_HEAD}
    return [
        Case("seed-style: speed", "pipeline_seed_style", speed, 1800),
        Case("tlkit: speed", "pipeline_tlkit", speed, 1800),
        Case("seed-style: memory", "pipeline_seed_style", memory, 1200),
        Case("tlkit: memory", "pipeline_tlkit", memory, 1200),
    ]


# ---- 2. feature cache (head stage) -------------------------------------------------------

FEATURE_CACHE_SETTINGS = {
    "quick": {"train_limit": 400, "test_limit": 200, "head_epochs": 3, "image_size": 64},
    "full": {"train_limit": 1500, "test_limit": 1000, "head_epochs": 10, "image_size": 64},
}


def run_overrides(settings: dict, workdir: Path, name: str, **fields) -> dict:
    """Config overrides on top of the `cpu` preset shared by every tlkit.train case."""
    overrides = {
        "name": name, "precision": "float32", "seed": SEED,
        "runs_dir": str(workdir / "runs"),
        "data": {"data_dir": str(DATA_DIR), "train_limit": settings["train_limit"],
                 "test_limit": settings["test_limit"]},
        "model": {"weights": str(WEIGHTS), "image_size": settings["image_size"]},
        "augment": {"flip": False, "rotation": 0.0, "zoom": 0.0, "translation": 0.0, "contrast": 0.0},
    }
    for key, value in fields.items():
        if isinstance(value, dict):
            overrides.setdefault(key, {}).update(value)
        else:
            overrides[key] = value
    return overrides


def plan_feature_cache(settings: dict, workdir: Path) -> list[Case]:
    # A fresh cache directory, so the first cached run pays for the feature extraction.
    cache_dir = str(workdir / "cache" / "feature-cache")
    stages = {"head": {"epochs": settings["head_epochs"]}, "finetune": {"epochs": 0}}

    def case(label, name, feature_cache):
        overrides = run_overrides(settings, workdir, name, feature_cache=feature_cache, cache_dir=cache_dir, **stages)
        return Case(label, "tlkit_train", {"preset": "cpu", "overrides": overrides}, 1800)

    return [
        case("feature cache off", "bench-feature-off", False),
        case("feature cache on, cold (extracts)", "bench-feature-cold", True),
        case("feature cache on, warm (cache hit)", "bench-feature-warm", True),
    ]


# ---- 3. boundary cache (finetune stage) --------------------------------------------------

BOUNDARY_CACHE_SETTINGS = {
    "quick": {"train_limit": 400, "test_limit": 200, "head_epochs": 1, "finetune_epochs": 2, "image_size": 64,
              "unfreeze": "conv5"},
    "full": {"train_limit": 1500, "test_limit": 1000, "head_epochs": 2, "finetune_epochs": 3, "image_size": 64,
             "unfreeze": "conv5"},
}


def plan_boundary_cache(settings: dict, workdir: Path) -> list[Case]:
    # Both runs share one feature cache: the head stage is the same and cheap, the finetune stage is compared.
    cache_dir = str(workdir / "cache" / "boundary-cache")
    stages = {"head": {"epochs": settings["head_epochs"]},
              "finetune": {"epochs": settings["finetune_epochs"], "unfreeze": settings["unfreeze"]}}

    def case(label, name, boundary_cache):
        overrides = run_overrides(settings, workdir, name, feature_cache=True, boundary_cache=boundary_cache,
                                  cache_dir=cache_dir, **stages)
        return Case(label, "tlkit_train", {"preset": "cpu", "overrides": overrides}, 2400)

    return [case("boundary cache off", "bench-boundary-off", False),
            case("boundary cache on", "bench-boundary-on", True)]


# ---- 4. per-backend throughput -----------------------------------------------------------

# Per image size: batch size and timed batches (after one warm-up batch). A 224 px image costs ~12× a 64 px
# one, so 224 gets a few small batches; medians need at least three. mixed_float16 runs at one size only,
# to show that float16 is slow on a CPU without float16 arithmetic.
THROUGHPUT_GRID = {
    "quick": [(32, 16, 3, ("float32", "mixed_bfloat16", "mixed_float16"))],
    "full": [(32, 32, 4, ("float32", "mixed_bfloat16")),
             (64, 16, 4, ("float32", "mixed_bfloat16", "mixed_float16")),
             (96, 16, 3, ("float32", "mixed_bfloat16")),
             (224, 4, 3, ("float32", "mixed_bfloat16"))],
}


def throughput_settings(mode: str) -> dict:
    grid = [{"image_size": size, "batch_size": batch, "batches": batches, "precisions": list(precisions)}
            for size, batch, batches, precisions in THROUGHPUT_GRID[mode]]
    return {"grid": grid, "unfreeze": "conv5", "seed": SEED}


def plan_backends(settings: dict, workdir: Path) -> list[Case]:
    # A timed-out child keeps the sizes it finished (it saves results after each size).
    return [Case("throughput grid", "backend_throughput", settings, 900)]


# ---- 5. feeding float16 cached activations to fit / predict ---------------------------------

# A float16 array shaped like the boundary activations of `--unfreeze conv5` at 72 px (ResNet50's conv4 output,
# 5×5×1024), 51,200 bytes a sample: 10,000 samples are 512 MB (a float32 copy 1 GB), 1,200 are 61 MB.
FEEDING_ARRAY = {"shape": [5, 5, 1024], "batch_size": 64, "predict_batch_size": 256}
CACHE_FEEDING_SETTINGS = {
    "quick": {**FEEDING_ARRAY, "samples": 1200, "epochs": 2},
    "full": {**FEEDING_ARRAY, "samples": 10000, "epochs": 3},
}


def plan_cache_feeding(settings: dict, workdir: Path) -> list[Case]:
    # One child per feeding, so the peak of one never shows up in the other.
    params = {**settings, "seed": SEED}
    return [Case("Keras arrays", "cache_feeding", {**params, "feeding": "keras"}, 1800),
            Case("ArrayBatches", "cache_feeding", {**params, "feeding": "array_batches"}, 1800)]


SECTIONS = {
    "pipeline": Section("pipeline", "Pipeline: seed-style host preprocessing vs tlkit's in-graph pipeline",
                        ("tensorflow",), PIPELINE_SETTINGS, plan_pipeline),
    "feature_cache": Section("feature_cache", "Head stage with and without the feature cache",
                             ("tensorflow",), FEATURE_CACHE_SETTINGS, plan_feature_cache),
    "boundary_cache": Section("boundary_cache", "Finetune stage with and without the boundary cache",
                              ("tensorflow",), BOUNDARY_CACHE_SETTINGS, plan_boundary_cache),
    "backends": Section("backends", "Per-backend throughput, float32 vs mixed precision",
                        (*BACKENDS, TORCH_PASSIVE), {mode: throughput_settings(mode) for mode in ("quick", "full")},
                        plan_backends),
    "cache_feeding": Section("cache_feeding", "Feeding float16 cached activations: Keras' array adapter vs "
                             "ArrayBatches", BACKENDS, CACHE_FEEDING_SETTINGS, plan_cache_feeding),
}
