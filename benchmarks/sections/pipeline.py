"""Section 1, `pipeline`: the seed's host preprocessing (`benchmarks/seed_style.py`) vs tlkit's in-graph pipeline.

Speed at a small resolution and memory at 224 px, the same frozen-backbone classifier on both sides. The case
functions run in the child and import Keras and tlkit's training code when called.

Speed runs in alternating rounds (seed-style, tlkit, seed-style, tlkit, ...) and pools each side's steady-state
epochs: on a shared 2-core machine whole runs move by ±20 % from one minute to the next, which one round of two
steady epochs per side cannot tell from a 5 % difference. Memory is measured twice per side: on the whole
training set, and on only the images the same few steps use (the *working set*: framework, compiled step and
activations, paid alike by both sides); the difference is what the data path itself holds.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import MB, WEIGHTS, describe_array, phase, train_subset, trainable_count
from benchmarks.formatting import by_backend, failure, find, num, ok, ratio, table, times
from benchmarks.sections.base import SEED, Case, Section, SummaryRow

SETTINGS = {
    "quick": {"speed": {"image_size": 64, "images": 256, "epochs": 2, "batch_size": 32, "rounds": 2},
              "memory": {"image_size": 224, "images": 500, "epochs": 1, "batch_size": 32, "steps_per_epoch": 2}},
    "full": {"speed": {"image_size": 96, "images": 1024, "epochs": 3, "batch_size": 64, "rounds": 2},
             # ~2.2 MB of seed-style RSS per image at 224 px: 3,000 images stay under ~8 GB on a 24 GB machine.
             "memory": {"image_size": 224, "images": 3000, "epochs": 1, "batch_size": 32, "steps_per_epoch": 3}},
}
# The seed's head (Dense 256 + L2 1e-4 + dropout 0.5) on both sides.
SEED_HEAD = {"head_units": 256, "dropout": 0.5, "l2": 1e-4}
FULL_TRAIN_IMAGES = 60_000


def plan(settings: dict, workdir: Path) -> list[Case]:
    speed = {key: value for key, value in settings["speed"].items() if key != "rounds"}
    speed = {**speed, "seed": SEED, "head": SEED_HEAD}
    memory = {**settings["memory"], "seed": SEED, "head": SEED_HEAD}
    working_set = {**memory, "images": memory["steps_per_epoch"] * memory["batch_size"]}
    cases = []
    for round_ in range(1, settings["speed"].get("rounds", 1) + 1):
        cases += [Case(f"seed-style: speed, round {round_}", "pipeline_seed_style", speed, 1800),
                  Case(f"tlkit: speed, round {round_}", "pipeline_tlkit", speed, 1800)]
    return cases + [
        Case("seed-style: memory", "pipeline_seed_style", memory, 1200),
        Case("tlkit: memory", "pipeline_tlkit", memory, 1200),
        Case("seed-style: working set", "pipeline_seed_style", working_set, 1200),
        Case("tlkit: working set", "pipeline_tlkit", working_set, 1200),
    ]


# ---- cases (child side) -----------------------------------------------------------------------------
#
# Both cases take the same params: image_size, images, epochs, batch_size, seed, head, and an optional
# steps_per_epoch. With steps_per_epoch (the memory comparison at full resolution) only a few steps
# train, but the whole array is still prepared and handed to `fit`, which is what costs the memory.


def epoch_monitor(epochs: int, seconds: list[float]):
    """tlkit's own stage callback, used on both sides of a comparison so the per-batch work is identical."""
    from tlkit.stages import StageMonitor

    return StageMonitor("head", epochs, on_epoch=lambda report: seconds.append(report.seconds))


def throughput_summary(images: int, epoch_seconds: list[float], setup_seconds: float = 0.0) -> dict:
    """Steady-state images/s (epochs after the first, which also traces/compiles) and end to end."""
    steady = epoch_seconds[1:] or epoch_seconds
    return {
        "epoch_seconds": [round(s, 3) for s in epoch_seconds],
        "train_images_per_second": round(images * len(steady) / sum(steady), 2),
        "end_to_end_images_per_second": round(images * len(epoch_seconds) / (setup_seconds + sum(epoch_seconds)), 2),
    }


def images_per_epoch(params: dict, count: int) -> int:
    steps = params.get("steps_per_epoch")
    return min(count, steps * params["batch_size"]) if steps else count


def pipeline_seed_style(params: dict, emit) -> dict:
    """Host resize → float32 array → fit on the frozen-backbone classifier (the seed's way)."""
    import keras

    from benchmarks import seed_style

    keras.utils.set_random_seed(params["seed"])
    images, labels = train_subset(params["images"], params["seed"])
    model = seed_style.build_model(params["image_size"], str(WEIGHTS), **params["head"])
    record, seconds = {}, []
    # The sampler starts after the model is built, so its increase is the pipeline + training working set.
    with phase(record, "pipeline"):
        start = time.perf_counter()
        prepared = seed_style.prepare_images(images, params["image_size"])
        prepare_seconds = time.perf_counter() - start
        seed_style.train(model, prepared, labels, params["epochs"], params["batch_size"],
                         steps_per_epoch=params.get("steps_per_epoch"),
                         callbacks=[epoch_monitor(params["epochs"], seconds)])
    return {"host_array": describe_array(prepared), "prepare_seconds": round(prepare_seconds, 3),
            "params": model.count_params(), "trainable_params": trainable_count(model), "memory": record["pipeline"],
            **throughput_summary(images_per_epoch(params, len(labels)), seconds, prepare_seconds)}


def pipeline_tlkit(params: dict, emit) -> dict:
    """uint8 (N, 28, 28, 1) → tlkit's classifier (resize, RGB, normalise in-graph), head stage, no feature cache."""
    import keras

    from tlkit.config import HeadStageConfig, ModelConfig
    from tlkit.data import CLASS_NAMES
    from tlkit.model import build_classifier
    from tlkit.stages import compile_for_stage, run_stage

    keras.utils.set_random_seed(params["seed"])
    images, labels = train_subset(params["images"], params["seed"])
    model_config = ModelConfig(backbone="resnet50", weights=str(WEIGHTS), image_size=params["image_size"],
                               **params["head"])
    model = build_classifier(model_config, seed=params["seed"], num_classes=len(CLASS_NAMES),
                             input_shape=images.shape[1:]).model
    stage = HeadStageConfig(epochs=params["epochs"], learning_rate=1e-3)
    record, seconds = {}, []
    monitor = epoch_monitor(params["epochs"], seconds)
    with phase(record, "pipeline"):
        if params.get("steps_per_epoch"):
            # run_stage has no step limit; this is its head-stage path (frozen backbone, same compile) cut short.
            compile_for_stage(model, stage, params["steps_per_epoch"])
            model.fit(images, labels, batch_size=params["batch_size"], epochs=params["epochs"],
                      steps_per_epoch=params["steps_per_epoch"], callbacks=[monitor], verbose=0, shuffle=True)
        else:
            run_stage(model, stage, (images, labels), stage="head", batch_size=params["batch_size"],
                      monitor=monitor, verbose=0)
    return {"host_array": describe_array(images), "prepare_seconds": 0.0, "params": model.count_params(),
            "trainable_params": trainable_count(model), "memory": record["pipeline"],
            **throughput_summary(images_per_epoch(params, len(labels)), seconds)}


# ---- rendering (parent side) ------------------------------------------------------------------------


def render(reports: list[dict], settings: dict, cores: int) -> str:
    speed, memory = settings["speed"], settings["memory"]
    parts = [
        "Frozen ResNet50 (ImageNet weights) + the seed's head (Dense 256, L2 1e-4, dropout 0.5), Adam 1e-3, no "
        "feature cache (every step runs the backbone); the same model on both sides. *Seed-style* "
        "(`benchmarks/seed_style.py`): resize every image on the host, duplicate gray to RGB, "
        "`resnet50.preprocess_input`, then `fit` on the materialised float32 array. *tlkit*: `build_classifier` fed "
        "uint8 (N, 28, 28, 1); resize, RGB and normalisation run inside the graph. *RSS increase* is sampled every "
        "5 ms from just after the model was built to the end of training (data pipeline + training working set); "
        "*process peak* is the child's `ru_maxrss` (framework, weights and model included, ~1–1.5 GB on both sides). "
        "Both children import tlkit, so its process-wide settings apply to both (XLA's CPU flag under jax, glibc's "
        "allocator under torch); under torch only tlkit's model frees each activation after its last reader "
        "(`tlkit.model.release_intermediates`). *torch+TLKIT_TORCH_MEMORY_TUNING=0* turns both torch settings off.",
        f"**Speed**: {speed['images']:,} training images at {speed['image_size']} px, {speed['epochs']} epochs, batch "
        f"{speed['batch_size']}; tlkit trains through `tlkit.stages.run_stage` (head stage). *Train img/s* is "
        "steady state (the epochs after the first, which also traces/compiles); *end to end* adds the host "
        f"preprocessing and the first epoch. The sides alternate over {speed.get('rounds', 1)} round(s), each "
        "case in a fresh process, and the ratios pool each side's epochs over all rounds.",
    ]
    for backend, group in by_backend(reports).items():
        seeds, ours = speed_reports(group, "pipeline_seed_style"), speed_reports(group, "pipeline_tlkit")
        rows = [pipeline_row(round_label(report, "seed-style"), report) for report in seeds]
        rows += [pipeline_row(round_label(report, "tlkit"), report) for report in ours]
        parts.append(f"*{backend}*\n\n" + table(
            ("pipeline", "host array fed to fit", "host prep (s)", "epoch times (s)", "train img/s",
             "end-to-end img/s", "RSS increase (MB)", "process peak RSS (MB)", "CPU util."), rows))
        parts.append(pipeline_ratios(seeds, ours))
    parts.append(
        f"**Memory at full resolution**: {memory['images']:,} training images at {memory['image_size']} px; the "
        f"whole set is prepared and handed to `fit`, which then runs {memory['steps_per_epoch']} steps of batch "
        f"{memory['batch_size']} (enough to reach steady memory; the speed is measured above). Each side runs "
        f"again on only the {memory['steps_per_epoch'] * memory['batch_size']} images those steps use (*working "
        "set*: framework, compiled step and activations, which both sides pay); the *data path* is the RSS "
        "increase beyond it, what holding the training set costs. The working set itself moves between runs "
        "(most under torch, whose retained heap varies by a few hundred MB), so a data path within that spread "
        "of zero is zero.")
    for backend, group in by_backend(reports).items():
        seed, ours = find(group, "pipeline_seed_style", "memory"), find(group, "pipeline_tlkit", "memory")
        seed_working, our_working = (find(group, "pipeline_seed_style", "working set"),
                                     find(group, "pipeline_tlkit", "working set"))
        rows = [memory_row("seed-style", seed), memory_row("tlkit", ours)]
        rows += [memory_row(f"{name}, working set", report)
                 for name, report in (("seed-style", seed_working), ("tlkit", our_working)) if report]
        parts.append(f"*{backend}*\n\n" + table(
            ("pipeline", "host array fed to fit", "host prep (s)", "RSS increase (MB)", "process peak RSS (MB)"),
            rows))
        parts.append(memory_ratios(seed, ours, seed_working, our_working))
    parts.append(render_projection(speed["image_size"]))
    return "\n\n".join(part for part in parts if part)


def array_cell(result: dict) -> str:
    array = result["host_array"]
    return f"{array['dtype']} {tuple(array['shape'])}, {num(array['mb'])} MB"


def pipeline_row(name: str, report: dict | None) -> tuple:
    if not ok(report):
        return (name, failure(report) if report else "not run", *["–"] * 7)
    result, process = report["result"], report["process"]
    return (name, array_cell(result), num(result["prepare_seconds"], 2),
            " / ".join(num(s, 1) for s in result["epoch_seconds"]), num(result["train_images_per_second"]),
            num(result["end_to_end_images_per_second"]), num(result["memory"]["rss_increase_mb"], 0),
            num(process["peak_rss_mb"], 0), num(result["memory"]["cpu_utilisation"], 2))


def memory_row(name: str, report: dict | None) -> tuple:
    if not ok(report):
        return (name, failure(report) if report else "not run", *["–"] * 3)
    result = report["result"]
    return (name, array_cell(result), num(result["prepare_seconds"], 2), num(result["memory"]["rss_increase_mb"], 0),
            num(report["process"]["peak_rss_mb"], 0))


def speed_reports(group: list[dict], function: str) -> list[dict]:
    """The successful speed runs of one side, in round order."""
    return [report for report in group if report["function"] == function and "speed" in report["label"]
            and ok(report)]


def round_label(report: dict, name: str) -> str:
    _, _, round_ = report["label"].partition(", ")
    return f"{name}, {round_}" if round_ else name


def pooled_speed(reports: list[dict]) -> tuple[float | None, float | None]:
    """Steady-state and end-to-end images/s over all of one side's runs (total images / total seconds)."""
    steady_images = steady_seconds = all_images = all_seconds = 0.0
    for report in reports:
        result, images = report["result"], images_per_epoch(report["params"], report["params"]["images"])
        epochs = result["epoch_seconds"]
        steady = epochs[1:] or epochs
        steady_images += images * len(steady)
        steady_seconds += sum(steady)
        all_images += images * len(epochs)
        all_seconds += result["prepare_seconds"] + sum(epochs)
    if not steady_seconds:
        return None, None
    return steady_images / steady_seconds, all_images / all_seconds


def pipeline_ratios(seeds: list[dict], ours: list[dict]) -> str:
    if not seeds or not ours:
        return ""
    a, b = seeds[0]["result"], ours[0]["result"]
    same_model = a["params"] == b["params"] and a["trainable_params"] == b["trainable_params"]
    (seed_steady, seed_end), (our_steady, our_end) = pooled_speed(seeds), pooled_speed(ours)
    per_round = [ratio(ours_["result"]["train_images_per_second"], seed_["result"]["train_images_per_second"])
                 for seed_, ours_ in zip(seeds, ours)]
    increase = ratio(b["memory"]["rss_increase_mb"], a["memory"]["rss_increase_mb"])
    rounds = f" (per round: {', '.join(times(value) for value in per_round)})" if len(per_round) > 1 else ""
    return "\n".join([
        f"- Training speed, tlkit / seed-style: **{times(ratio(our_steady, seed_steady))}** steady state{rounds}, "
        f"**{times(ratio(our_end, seed_end))}** end to end.",
        f"- RSS increase, tlkit / seed-style: {num(increase, 2)}.",
        f"- Same model on both sides: {'yes' if same_model else '**no**'} ({a['params']:,} parameters, "
        f"{a['trainable_params']:,} trainable vs {b['params']:,} / {b['trainable_params']:,}).",
    ])


def rss_increase_mb(report: dict) -> float:
    return report["result"]["memory"]["rss_increase_mb"]


def data_path_share(seed: dict, ours: dict, seed_working: dict | None, our_working: dict | None):
    """(seed-style MB, tlkit MB, tlkit / seed-style) held by the data path, or None without working-set runs."""
    if not ok(seed_working) or not ok(our_working):
        return None
    seed_data = rss_increase_mb(seed) - rss_increase_mb(seed_working)
    our_data = rss_increase_mb(ours) - rss_increase_mb(our_working)
    # Below zero is the working set's own run-to-run spread (torch's retained heap moves by ~±200 MB).
    return seed_data, our_data, round(max(our_data, 0.0) / seed_data, 3) if seed_data > 0 else None


def memory_ratios(seed: dict | None, ours: dict | None, seed_working: dict | None = None,
                  our_working: dict | None = None) -> str:
    if not ok(seed) or not ok(ours):
        return ""
    data_path = data_path_share(seed, ours, seed_working, our_working)
    data_line = ""
    if data_path:
        seed_data, our_data, share = data_path
        below = " (below its working-set run: the working set's own run-to-run spread)" if our_data <= 0 else ""
        data_line = (f"\n- Data path (RSS increase beyond the working set): seed-style {num(seed_data, 0)} MB, tlkit "
                     f"{num(our_data, 0)} MB{below}; tlkit / seed-style **{num(share, 3)}**.")
    a, b = seed["result"], ours["result"]
    increase = ratio(b["memory"]["rss_increase_mb"], a["memory"]["rss_increase_mb"], 3)
    peak = ratio(ours["process"]["peak_rss_mb"], seed["process"]["peak_rss_mb"], 3)
    images = seed["params"]["images"]
    per_image = a["memory"]["rss_increase_mb"] / images
    return "\n".join([
        f"- Host array fed to `fit`: tlkit holds 1/{a['host_array']['mb'] / b['host_array']['mb']:,.0f} of the "
        "seed-style bytes.",
        f"- RSS increase (data pipeline + training), tlkit / seed-style: **{num(increase, 3)}** "
        f"(1/{1 / increase:,.0f})." if increase else "- RSS increase: –",
        f"- Whole-process peak, tlkit / seed-style: **{num(peak, 2)}** (both carry the same ~1–1.5 GB of framework "
        "and model).",
        f"- Seed-style RSS increase per image: {per_image:.2f} MB; linear extrapolation to {FULL_TRAIN_IMAGES:,} "
        f"images: ~{per_image * FULL_TRAIN_IMAGES / 1000:,.0f} GB (extrapolated, not measured).",
    ]) + data_line


def render_projection(image_size: int) -> str:
    """Host bytes of the whole Fashion-MNIST training set per pipeline (computed, not measured)."""
    rows = []
    for size in sorted({image_size, 224}):
        floats = FULL_TRAIN_IMAGES * size * size * 3 * 4
        rows.append((f"seed-style float32, {size}×{size}×3", f"{floats / 1e9:,.2f} GB ({floats / 2**30:,.2f} GiB)",
                     f"{floats / (FULL_TRAIN_IMAGES * 28 * 28):,.0f}×"))
    uint8 = FULL_TRAIN_IMAGES * 28 * 28
    rows.append(("tlkit uint8, 28×28×1", f"{uint8 / MB:,.2f} MB", "1×"))
    return (f"Computed (not measured): host memory for the full {FULL_TRAIN_IMAGES:,}-image training set.\n\n"
            + table(("pipeline", "bytes", "vs uint8"), rows))


def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    rows = []
    seeds, ours = speed_reports(reports, "pipeline_seed_style"), speed_reports(reports, "pipeline_tlkit")
    if seeds and ours:
        speed = ratio(pooled_speed(ours)[0], pooled_speed(seeds)[0])
        rows.append(SummaryRow("Pipeline: training speed, tlkit / seed-style (steady state)", times(speed), "≥ 1×",
                               seeds + ours))
    seed, ours = find(reports, "pipeline_seed_style", "memory"), find(reports, "pipeline_tlkit", "memory")
    if ok(seed) and ok(ours):
        share = ratio(ours["result"]["memory"]["rss_increase_mb"], seed["result"]["memory"]["rss_increase_mb"], 3)
        process = ratio(ours["process"]["peak_rss_mb"], seed["process"]["peak_rss_mb"])
        data_path = data_path_share(seed, ours, find(reports, "pipeline_seed_style", "working set"),
                                    find(reports, "pipeline_tlkit", "working set"))
        data_note = f"; data path alone: {num(data_path[2], 3)}" if data_path else ""
        rows.append(SummaryRow(f"Pipeline: host memory added (RSS increase) at {settings['memory']['image_size']} "
                               "px, tlkit / seed-style", f"{num(share, 3)} (whole process: {num(process, 2)}"
                               f"{data_note})", "≤ 0.1", [seed, ours]))
    return rows


SECTION = Section(
    name="pipeline", title="Pipeline: seed-style host preprocessing vs tlkit's in-graph pipeline",
    default_backends=("tensorflow",), settings=SETTINGS, plan=plan,
    cases={"pipeline_seed_style": pipeline_seed_style, "pipeline_tlkit": pipeline_tlkit},
    render=render, summarise=summarise,
)
