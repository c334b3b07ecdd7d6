"""Turns the children's JSON reports into the markdown of docs/performance.md.

Parent side only (no Keras import). Each section has a renderer taking the
reports of that section; a failed or timed-out case shows up as a row saying
so rather than disappearing.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
from pathlib import Path

from benchmarks.common import MB, REPO_ROOT
from benchmarks.sections import SECTIONS

# CPU flags that decide how float32 / bfloat16 / float16 run on x86.
INTERESTING_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_fp16")
PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "keras-hub")
FULL_TRAIN_IMAGES = 60_000


# ---- machine ----------------------------------------------------------------------------


def cpu_info() -> dict:
    """Model name, family/model numbers and flags from /proc/cpuinfo (first processor)."""
    info = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    info.update(model=fields.get("model name", info["model"]), family=fields.get("cpu family"),
                model_number=fields.get("model"), flags=fields.get("flags", "").split())
    return info


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


def git_state() -> str:
    """Commit of the code measured, and whether tlkit/ or benchmarks/ had uncommitted changes."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "tlkit", "benchmarks")
    except OSError:
        return "unknown"
    return f"{commit} (+ uncommitted changes in tlkit/ or benchmarks/)" if dirty else commit


def machine_info(command: str, mode: str) -> dict:
    cpu = cpu_info()
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "mode": mode, "cpu": cpu,
        "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": memory_gb(), "platform": platform.platform(), "versions": versions, "code": git_state(),
        "load_start": round(os.getloadavg()[0], 2),
    }


def render_machine(info: dict, total_seconds: float) -> str:
    cpu = info["cpu"]
    flags = [flag for flag in INTERESTING_FLAGS if flag in cpu["flags"]]
    absent = [flag for flag in INTERESTING_FLAGS if flag not in cpu["flags"]]
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    rows = [
        ("CPU", f"{cpu['model']} (family {cpu.get('family')}, model {cpu.get('model_number')})"),
        ("Cores", f"{info['cores']} ({info['usable_cores']} usable by this process)"),
        ("SIMD flags present", " ".join(flags) or "none of the listed"),
        ("SIMD flags absent", " ".join(absent) or "none"),
        ("RAM", f"{info['memory_gb']} GB"),
        ("OS", info["platform"]),
        ("Versions", versions),
        ("Code", f"tlkit at {info['code']}"),
        ("Date", info["date"]),
        ("Command", f"`{info['command']}`"),
        ("Mode", info["mode"]),
        ("Wall time of the whole run", f"{total_seconds / 60:.1f} min"),
        ("Load average (1 min) at start / end", f"{info['load_start']} / {info.get('load_end')}"),
    ]
    return table(("", ""), rows)


# ---- formatting helpers -------------------------------------------------------------------


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def num(value, digits=1) -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def ratio(numerator, denominator, digits=2) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, digits)


def times(value) -> str:
    return "–" if value is None else f"{value:.2f}×"


def failure(report: dict) -> str | None:
    if report.get("error"):
        return f"**failed**: {report['error']} (log: `{report.get('log', '?')}`)"
    if report.get("result") is None:
        return "**no result**"
    return None


def by_backend(reports: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for report in reports:
        grouped.setdefault(report["backend"], []).append(report)
    return grouped


def find(reports: list[dict], function: str, label_part: str = "") -> dict | None:
    for report in reports:
        if report["function"] == function and label_part in report["label"]:
            return report
    return None


def load_range(reports: list[dict]) -> str:
    loads = [report["process"][key] for report in reports if report.get("process")
             for key in ("load_start", "load_end")]
    return f"load {min(loads):.1f}–{max(loads):.1f}" if loads else "load unknown"


def load_note(reports: list[dict]) -> str:
    if not any(report.get("process") for report in reports):
        return ""
    return f"Load average (1 min) seen by these runs: {load_range(reports)[5:]} on {os.cpu_count()} cores."


# ---- 1. pipeline ---------------------------------------------------------------------------


def render_pipeline(reports: list[dict], settings: dict) -> str:
    speed, memory = settings["speed"], settings["memory"]
    parts = [
        "Frozen ResNet50 (ImageNet weights) + the seed's head (Dense 256, L2 1e-4, dropout 0.5), Adam 1e-3, no "
        "feature cache (every step runs the backbone); the same model on both sides. *Seed-style* "
        "(`benchmarks/seed_style.py`): resize every image on the host, duplicate gray to RGB, "
        "`resnet50.preprocess_input`, then `fit` on the materialised float32 array. *tlkit*: `build_classifier` fed "
        "uint8 (N, 28, 28, 1); resize, RGB and normalisation run inside the graph. *RSS increase* is sampled every "
        "5 ms from just after the model was built to the end of training (data pipeline + training working set); "
        "*process peak* is the child's `ru_maxrss` (framework, weights and model included, ~1–1.5 GB on both sides).",
        f"**Speed**: {speed['images']:,} training images at {speed['image_size']} px, {speed['epochs']} epochs, batch "
        f"{speed['batch_size']}; tlkit trains through `tlkit.stages.run_stage` (head stage). *Train img/s* is "
        "steady state (the epochs after the first, which also traces/compiles); *end to end* adds the host "
        "preprocessing and the first epoch.",
    ]
    for backend, group in by_backend(reports).items():
        seed, ours = find(group, "pipeline_seed_style", "speed"), find(group, "pipeline_tlkit", "speed")
        rows = [pipeline_row("seed-style", seed), pipeline_row("tlkit", ours)]
        parts.append(f"*{backend}*\n\n" + table(
            ("pipeline", "host array fed to fit", "host prep (s)", "epoch times (s)", "train img/s",
             "end-to-end img/s", "RSS increase (MB)", "process peak RSS (MB)", "CPU util."), rows))
        parts.append(pipeline_ratios(seed, ours))
    parts.append(
        f"**Memory at full resolution**: {memory['images']:,} training images at {memory['image_size']} px; the "
        f"whole set is prepared and handed to `fit`, which then runs {memory['steps_per_epoch']} steps of batch "
        f"{memory['batch_size']} (enough to reach steady memory; the speed is measured above).")
    for backend, group in by_backend(reports).items():
        seed, ours = find(group, "pipeline_seed_style", "memory"), find(group, "pipeline_tlkit", "memory")
        rows = [memory_row("seed-style", seed), memory_row("tlkit", ours)]
        parts.append(f"*{backend}*\n\n" + table(
            ("pipeline", "host array fed to fit", "host prep (s)", "RSS increase (MB)", "process peak RSS (MB)"),
            rows))
        parts.append(memory_ratios(seed, ours))
    parts.append(render_projection(speed["image_size"]))
    return "\n\n".join(part for part in parts if part)


def ok(report: dict | None) -> bool:
    return bool(report) and not failure(report)


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


def pipeline_ratios(seed: dict | None, ours: dict | None) -> str:
    if not ok(seed) or not ok(ours):
        return ""
    a, b = seed["result"], ours["result"]
    same_model = a["params"] == b["params"] and a["trainable_params"] == b["trainable_params"]
    steady = ratio(b["train_images_per_second"], a["train_images_per_second"])
    increase = ratio(b["memory"]["rss_increase_mb"], a["memory"]["rss_increase_mb"])
    end_to_end = ratio(b["end_to_end_images_per_second"], a["end_to_end_images_per_second"])
    return "\n".join([
        f"- Training speed, tlkit / seed-style: **{times(steady)}** steady state, **{times(end_to_end)}** end to end.",
        f"- RSS increase, tlkit / seed-style: {num(increase, 2)}.",
        f"- Same model on both sides: {'yes' if same_model else '**no**'} ({a['params']:,} parameters, "
        f"{a['trainable_params']:,} trainable vs {b['params']:,} / {b['trainable_params']:,}).",
    ])


def memory_ratios(seed: dict | None, ours: dict | None) -> str:
    if not ok(seed) or not ok(ours):
        return ""
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
    ])


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


# ---- 2./3. cache comparisons ---------------------------------------------------------------------
#
# metrics.json `seconds.head` / `seconds.finetune` time only the `fit` call; building a cache (extracting
# features, computing boundary activations) happens before it and is recorded in the cache entry. The
# stage cost compared here is fit + cache building, so a cold cache is charged for its extraction.


def stage_seconds(report: dict, stage: str):
    return (report["result"].get("seconds") or {}).get(stage)


def feature_cache_seconds(result: dict) -> float:
    """Seconds the head stage spent getting train/val features (extraction on a miss, a read on a hit)."""
    head = ((result.get("feature_cache") or {}).get("head")) or {}
    return sum((record or {}).get("seconds") or 0.0 for record in head.values())


def boundary_cache_seconds(result: dict) -> float:
    entry = result.get("boundary_cache") or {}
    return (entry.get("seconds") or 0.0) if entry.get("used") else 0.0


def stage_cost(report: dict, stage: str) -> float | None:
    fit = stage_seconds(report, stage)
    if fit is None:
        return None
    build = feature_cache_seconds if stage == "head" else boundary_cache_seconds
    return fit + build(report["result"])


def training_cost(report: dict) -> float | None:
    """Both stages with every extraction and cache build (the prefix may be computed in either stage)."""
    head, finetune = stage_cost(report, "head"), stage_cost(report, "finetune")
    return None if head is None or finetune is None else head + finetune


def cache_row(report: dict, stage: str, note) -> tuple:
    if failure(report):
        return (report["label"], failure(report), *["–"] * 8)
    result = report["result"]
    build = feature_cache_seconds(result) if stage == "head" else boundary_cache_seconds(result)
    val = (result.get("val_accuracy") or {}).get(stage)
    return (report["label"], num(stage_seconds(report, stage), 1), num(build, 1), num(stage_cost(report, stage), 1),
            num(stage_seconds(report, "evaluate"), 1), num(stage_seconds(report, "total"), 1), num(val, 4),
            num(result.get("test_accuracy"), 4), note(result), num(report["process"]["peak_rss_mb"], 0))


CACHE_COLUMNS = ("fit (s)", "cache build (s)", "stage = fit + build (s)", "evaluate (s)", "run total (s)",
                 "val acc.", "test acc.")


def load_control(first: dict, second: dict) -> str:
    """Evaluation of the test set is the same work in both runs (full model, no cache): a built-in load check."""
    a, b = stage_seconds(first, "evaluate"), stage_seconds(second, "evaluate")
    control = ratio(a, b)
    if control is None:
        return ""
    verdict = ("similar load while evaluating" if 0.8 <= control <= 1.25 else
               "**the load changed between the runs; this speedup is unreliable**")
    return f"- Load control: test evaluation (identical work) took {num(a, 1)} s vs {num(b, 1)} s ({verdict})."


def render_feature_cache(reports: list[dict], settings: dict) -> str:
    parts = [
        f"`tlkit.train(config)` on the `cpu` preset: {settings['image_size']} px, `train_limit` "
        f"{settings['train_limit']:,} (10% of it held out for validation), `test_limit` {settings['test_limit']:,}, "
        f"head {settings['head_epochs']} epochs, no fine-tuning, no augmentation, float32; only `feature_cache` "
        "differs. The cold cached run starts from an empty cache directory, so it extracts the features; the "
        "warm run reads them back. *fit* is metrics.json `seconds.head` (the `fit` call only); *cache build* is "
        "the train + val feature extraction (or read) from metrics.json `feature_cache.head`, which happens "
        "before `fit` and is not in `seconds.head`; the speedup compares whole stages (fit + build)."
    ]
    for backend, group in by_backend(reports).items():
        off = find(group, "tlkit_train", "off")
        cold, warm = find(group, "tlkit_train", "cold"), find(group, "tlkit_train", "warm")
        rows = [cache_row(report, "head", feature_cache_note) for report in (off, cold, warm) if report]
        parts.append(f"**{backend}**\n\n" + table(("run", *CACHE_COLUMNS, "cache", "process peak RSS (MB)"), rows))
        if off and cold and not failure(off) and not failure(cold):
            warm_ok = warm and not failure(warm)
            head_cold = ratio(stage_cost(off, "head"), stage_cost(cold, "head"))
            head_warm = ratio(stage_cost(off, "head"), stage_cost(warm, "head")) if warm_ok else None
            total_cold = ratio(stage_seconds(off, "total"), stage_seconds(cold, "total"))
            total_warm = ratio(stage_seconds(off, "total"), stage_seconds(warm, "total")) if warm_ok else None
            difference = abs(off["result"]["test_accuracy"] - cold["result"]["test_accuracy"]) * 100
            lines = [f"- Head-stage speedup (fit + build), cache off / on: **{times(head_cold)}** cold, "
                     f"**{times(head_warm)}** warm (fit alone: "
                     f"{times(ratio(stage_seconds(off, 'head'), stage_seconds(cold, 'head')))}).",
                     f"- Whole run (data, model, head, evaluation): {times(total_cold)} cold, {times(total_warm)} "
                     "warm.",
                     f"- Test accuracy, off vs on (cold): {num(off['result']['test_accuracy'], 4)} vs "
                     f"{num(cold['result']['test_accuracy'], 4)} (difference {difference:.2f} points)."]
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def feature_cache_note(result: dict) -> str:
    cache = result.get("feature_cache") or {}
    if not cache.get("used"):
        return "off"
    train = (cache.get("head") or {}).get("train") or {}
    return "hit" if train.get("hit") else "miss (extracted)"


def boundary_cache_note(result: dict) -> str:
    entry = result.get("boundary_cache")
    if not entry:
        return "no `boundary_cache` entry"
    if not entry.get("used"):
        return "used: false" + (f" ({entry['reason']})" if entry.get("reason") else "")
    shapes = " + ".join("×".join(map(str, shape)) for shape in entry.get("shapes") or [])
    return (f"used: true, boundary `{entry.get('boundary')}` ({shapes}), "
            f"{num((entry.get('bytes') or 0) / MB, 1)} MB")


def render_boundary_cache(reports: list[dict], settings: dict) -> str:
    parts = [
        f"`tlkit.train(config)` on the `cpu` preset: {settings['image_size']} px, `train_limit` "
        f"{settings['train_limit']:,} (10% validation), `test_limit` {settings['test_limit']:,}, head "
        f"{settings['head_epochs']} epochs (feature cache on, shared), then fine-tuning "
        f"{settings['finetune_epochs']} epochs with `--unfreeze {settings['unfreeze']}`, no augmentation, float32; "
        "only `boundary_cache` differs. *fit* is metrics.json `seconds.finetune` (the `fit` call only); *cache "
        "build* is what the finetune stage spent getting the boundary activations for train + val (metrics.json "
        "`boundary_cache.seconds`). With the boundary cache on, the frozen prefix runs once for both stages: the "
        "head stage computes the boundary activations and derives its features from them, so the finetune "
        "stage's build is only a lookup and the prefix cost shows up in the head stage. The fair whole figure "
        "is therefore *both stages*: head fit + feature extraction + finetune fit + build, off vs on."
    ]
    for backend, group in by_backend(reports).items():
        off, on = find(group, "tlkit_train", "off"), find(group, "tlkit_train", "on")
        rows = [cache_row(report, "finetune", boundary_cache_note) for report in (off, on) if report]
        parts.append(f"**{backend}**\n\n" + table(
            ("run", *CACHE_COLUMNS, "boundary cache (metrics.json)", "process peak RSS (MB)"), rows))
        if off and on and not failure(off) and not failure(on):
            used = bool((on["result"].get("boundary_cache") or {}).get("used"))
            off_val = (off["result"].get("val_accuracy") or {}).get("finetune")
            on_val = (on["result"].get("val_accuracy") or {}).get("finetune")
            stage = ratio(stage_cost(off, "finetune"), stage_cost(on, "finetune"))
            fit = ratio(stage_seconds(off, "finetune"), stage_seconds(on, "finetune"))
            total = ratio(stage_seconds(off, "total"), stage_seconds(on, "total"))
            both = ratio(training_cost(off), training_cost(on))
            lines = [f"- Finetune-stage speedup (fit + build), off / on: **{times(stage)}** (fit alone "
                     f"{times(fit)}, i.e. what each further epoch gains); whole run {times(total)}.",
                     f"- Both stages with all extraction (head fit + features + finetune fit + build): "
                     f"{num(training_cost(off), 1)} s vs {num(training_cost(on), 1)} s, **{times(both)}**.",
                     f"- Accuracy off vs on: val {num(off_val, 4)} vs {num(on_val, 4)}, test "
                     f"{num(off['result']['test_accuracy'], 4)} vs {num(on['result']['test_accuracy'], 4)}.",
                     load_control(off, on)]
            if not used:
                lines.append("- **The boundary cache was not active in the `on` run** (metrics.json has no "
                             "`boundary_cache` entry with `used: true`), so both runs took the same path and the "
                             "ratio is noise.")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


# ---- 4. backends ---------------------------------------------------------------------------------


def measurements(reports: list[dict]) -> dict[str, list[dict]]:
    """Backend → list of grid measurements (partial when the child timed out)."""
    found = {}
    for report in reports:
        found[report["backend"]] = (report.get("result") or {}).get("measurements") or []
    return found


def lookup(items: list[dict], size: int, precision: str) -> dict | None:
    for item in items:
        if item["image_size"] == size and item["precision"] == precision and not item.get("error"):
            return item
    return None


def render_backends(reports: list[dict], settings: dict) -> str:
    sizes = sorted({group["image_size"] for group in settings["grid"]})
    parts = [
        "The full classifier (uint8 input → in-graph resize → ResNet50 with ImageNet weights → head). "
        "*Inference*: `model.predict_on_batch`. *Training*: `model.train_on_batch` with the backbone unfrozen from "
        f"`{settings['unfreeze']}` (conv5 and the head train; BatchNorm frozen), Adam. Each figure is batch size / "
        "median batch time over a few timed batches, after one untimed warm-up batch of the same shape (which "
        "compiles/traces); both calls return host values, so a timed batch includes finishing its work. The "
        "precisions of one image size are separate models in one process, timed batch by batch in rotating order, "
        "so they share whatever load the machine had and their ratio is robust to it. "
        "Precision is the Keras dtype policy (`mixed_*` = float32 variables, 16-bit compute). Sizes, batch sizes "
        "and the mean-based figures are in the per-backend details."
    ]
    found = measurements(reports)
    for report in reports:
        if failure(report):
            parts.append(f"{report['backend']}: {failure(report)}")
    parts.append(render_speed_tables(found, sizes))
    parts.append(size_anomalies(found, sizes))
    parts.append(render_precision_ratios(found, sizes))
    for backend, items in found.items():
        rows = []
        for item in items:
            shape = f"{item['batch_size']} × {item['batches']}"
            if item.get("error"):
                rows.append((item["image_size"], item["precision"], shape, f"**failed**: {item['error']}",
                             *["–"] * 4))
                continue
            rows.append((item["image_size"], item["precision"], shape,
                         f"{num(item['predict_images_per_second'])} / {num(item['train_images_per_second'])}",
                         f"{num(item['predict_mean_images_per_second'])} / {num(item['train_mean_images_per_second'])}",
                         f"{num(item['predict_warmup_seconds'])} / {num(item['train_warmup_seconds'])}",
                         f"{num(item['predict_cpu_utilisation'], 2)} / {num(item['train_cpu_utilisation'], 2)}",
                         num(item["build_seconds"])))
        parts.append(f"<details><summary>{backend}: every measurement</summary>\n\n" + table(
            ("px", "precision", "batch × timed batches", "median img/s (inference / training)",
             "mean img/s", "warm-up s", "CPU util.", "build s"), rows) + "\n\n</details>")
    return "\n\n".join(parts)


def render_speed_tables(found: dict[str, list[dict]], sizes: list[int]) -> str:
    backends = list(found)
    rows = []
    for size in sizes:
        for precision in ("float32", "mixed_bfloat16"):
            cells = []
            for backend in backends:
                item = lookup(found[backend], size, precision)
                cells.append(f"{num(item['predict_images_per_second'])} / {num(item['train_images_per_second'])}"
                             if item else "–")
            rows.append((size, precision, *cells))
    utilisation = []
    for backend in backends:
        values = [item[f"{kind}_cpu_utilisation"] for item in found[backend] if not item.get("error")
                  for kind in ("predict", "train")]
        if values:
            utilisation.append(f"{backend} {min(values):.2f}–{max(values):.2f}")
    return ("Images/s (median batch), inference / training:\n\n" + table(("px", "precision", *backends), rows)
            + f"\n\nCPU utilisation during the timed batches ({os.cpu_count()} = all cores): "
            + ", ".join(utilisation) + ".")


def size_anomalies(found: dict[str, list[dict]], sizes: list[int]) -> str:
    """Flags a larger image running faster than a smaller one: a slow kernel path for one shape, not noise."""
    lines = []
    for backend, items in found.items():
        for small, large in zip(sizes, sizes[1:]):
            for precision in ("float32", "mixed_bfloat16"):
                a, b = lookup(items, small, precision), lookup(items, large, precision)
                if a and b and b["predict_images_per_second"] > 1.2 * a["predict_images_per_second"]:
                    lines.append(f"- {backend}, {precision}: {large} px runs faster than {small} px "
                                 f"({num(b['predict_images_per_second'])} vs {num(a['predict_images_per_second'])} "
                                 f"img/s inference) although it has {(large / small) ** 2:.1f}× the pixels.")
    return ("**Anomalies** (a larger image faster than a smaller one):\n\n" + "\n".join(lines)) if lines else ""


def render_precision_ratios(found: dict[str, list[dict]], sizes: list[int]) -> str:
    backends = list(found)
    rows = []
    for backend in backends:
        cells = []
        for size in sizes:
            fp32, bf16 = lookup(found[backend], size, "float32"), lookup(found[backend], size, "mixed_bfloat16")
            if not fp32 or not bf16:
                cells.append("–")
                continue
            cells.append(f"{times(ratio(bf16['predict_images_per_second'], fp32['predict_images_per_second']))} / "
                         f"{times(ratio(bf16['train_images_per_second'], fp32['train_images_per_second']))}")
        rows.append((backend, *cells))
    text = ("**mixed_bfloat16 / float32 speed** (inference / training; > 1× means bfloat16 is faster):\n\n"
            + table(("backend", *[f"{size} px" for size in sizes]), rows) + "\n\n" + bfloat16_verdicts(found, sizes))
    fp16_sizes = sorted({item["image_size"] for items in found.values() for item in items
                         if item["precision"] == "mixed_float16"})
    fp16_rows = []
    for backend in backends:
        for size in fp16_sizes:
            fp32, fp16 = lookup(found[backend], size, "float32"), lookup(found[backend], size, "mixed_float16")
            if fp32 and fp16:
                predict = ratio(fp16["predict_images_per_second"], fp32["predict_images_per_second"])
                train = ratio(fp16["train_images_per_second"], fp32["train_images_per_second"])
                fp16_rows.append((backend, size, f"{num(fp16['predict_images_per_second'])} / "
                                  f"{num(fp16['train_images_per_second'])}", f"{times(predict)} / {times(train)}"))
    if fp16_rows:
        text += ("\n\n**mixed_float16** (this CPU has no native float16 arithmetic):\n\n"
                 + table(("backend", "px", "img/s inference / training", "vs float32"), fp16_rows))
    return text


def bfloat16_means(found: dict[str, list[dict]], sizes: list[int]) -> dict[str, tuple[float, float]]:
    """Backend → geometric means over sizes of bf16/fp32 images/s, (inference, training)."""
    means = {}
    for backend, items in found.items():
        ratios = {"predict": [], "train": []}
        for size in sizes:
            fp32, bf16 = lookup(items, size, "float32"), lookup(items, size, "mixed_bfloat16")
            if fp32 and bf16:
                for kind in ratios:
                    ratios[kind].append(bf16[f"{kind}_images_per_second"] / fp32[f"{kind}_images_per_second"])
        if ratios["predict"]:
            means[backend] = tuple(math.prod(values) ** (1 / len(values)) for values in ratios.values())
    return means


def bfloat16_verdicts(found: dict[str, list[dict]], sizes: list[int]) -> str:
    return "\n".join(f"- {backend}: bfloat16 / float32 geometric mean over the sizes: **{inference:.2f}×** "
                     f"inference, **{training:.2f}×** training."
                     for backend, (inference, training) in bfloat16_means(found, sizes).items())


# ---- 5. cache feeding ----------------------------------------------------------------------------
#
# Memory ratios divide by what ArrayBatches added; below MEMORY_FLOOR_MB that is allocator noise (predict can
# reuse memory fit freed), so the ratio is a lower bound against the floor, shown as "≥".

MEMORY_FLOOR_MB = 10.0


def memory_ratio(keras_mb: float, batches_mb: float) -> str:
    if batches_mb < MEMORY_FLOOR_MB:
        return f"≥ {keras_mb / MEMORY_FLOOR_MB:,.0f}×"
    return times(ratio(keras_mb, batches_mb))


def steady_epoch_seconds(fit: dict) -> float | None:
    """Mean seconds of the epochs after the first (which also traces/compiles); the only epoch if just one."""
    seconds = fit.get("epoch_seconds") or []
    steady = seconds[1:] or seconds
    return sum(steady) / len(steady) if steady else None


def rss_growth(fit: dict) -> float | None:
    """RSS at the last epoch end minus RSS at the first: what each further epoch kept."""
    ends = fit.get("epoch_end_rss_mb") or []
    return ends[-1] - ends[0] if len(ends) > 1 else None


def transient_mb(fit: dict) -> float:
    """The most an epoch's sampled peak rose above the RSS at its end: memory taken and given back per epoch."""
    return max((peak - end for peak, end in zip(fit["epoch_peak_rss_mb"], fit["epoch_end_rss_mb"])), default=0.0)


def feeding_pair(group: list[dict]) -> tuple[dict | None, dict | None]:
    return find(group, "cache_feeding", "Keras arrays"), find(group, "cache_feeding", "ArrayBatches")


def feeding_fit_row(report: dict | None, name: str, other: dict | None) -> tuple:
    if not ok(report):
        return (name, failure(report) if report else "not run", *["–"] * 8)
    result = report["result"]
    fit = result["fit"]
    share = ""
    if name == "Keras arrays" and ok(other):
        share = memory_ratio(fit["rss_increase_mb"], other["result"]["fit"]["rss_increase_mb"])
    ends = " / ".join(num(value, 0) for value in fit["epoch_end_rss_mb"])
    return (name, num(result["array"]["mb"], 0), num(fit["rss_increase_mb"], 0), share,
            f"{num(fit['rss_start_mb'], 0)} → {ends}", " / ".join(num(v, 0) for v in fit["epoch_peak_rss_mb"]),
            f"{' / '.join(num(v, 1) for v in fit['epoch_seconds'])} ({num(steady_epoch_seconds(fit), 1)})",
            num(fit["seconds"], 1), num(fit["loss"][-1], 3), num(fit["cpu_utilisation"], 2))


def feeding_predict_row(report: dict | None, name: str, other: dict | None) -> tuple:
    if not ok(report) or "predict" not in report["result"]:
        return (name, failure(report) if report and failure(report) else "not run", *["–"] * 5)
    result = report["result"]
    predict = result["predict"]
    share = ""
    if name == "Keras arrays" and ok(other) and "predict" in other["result"]:
        share = memory_ratio(predict["rss_increase_mb"], other["result"]["predict"]["rss_increase_mb"])
    return (name, num(result["array"]["mb"], 0), num(predict["rss_start_mb"], 0), num(predict["rss_increase_mb"], 0),
            share, num(predict["seconds"], 1), num(report["process"]["peak_rss_mb"], 0))


def growth_phrase(fit: dict, array_mb: float) -> str:
    growth = rss_growth(fit)
    if growth is None:
        return "one epoch only"
    epochs = len(fit["epoch_end_rss_mb"])
    # Within 5% of the array (or the floor): allocator noise, not a copy kept per epoch.
    if abs(growth) <= max(0.05 * array_mb, MEMORY_FLOOR_MB):
        return f"flat from epoch 1 to {epochs} ({growth:+,.0f} MB)"
    return f"{'up' if growth > 0 else 'down'} {abs(growth):,.0f} MB from epoch 1 to {epochs}"


def feeding_verdict(backend: str, keras_arrays: dict | None, batches: dict | None) -> str:
    if not ok(keras_arrays) or not ok(batches):
        return f"- {backend}: no comparison (a case failed)."
    a, b = keras_arrays["result"], batches["result"]
    array_mb = a["array"]["mb"]
    fit_a, fit_b = a["fit"], b["fit"]
    line = (f"- {backend}: `fit` with Keras arrays added {num(fit_a['rss_increase_mb'], 0)} MB "
            f"({fit_a['rss_increase_mb'] / array_mb:.1f}× the float16 array; a float32 copy of it is 2×), with "
            f"ArrayBatches {num(fit_b['rss_increase_mb'], 0)} MB ({fit_b['rss_increase_mb'] / array_mb:.1f}×): "
            f"**{memory_ratio(fit_a['rss_increase_mb'], fit_b['rss_increase_mb'])}** as much with Keras arrays. "
            f"Epoch-end RSS: Keras arrays {growth_phrase(fit_a, array_mb)}, ArrayBatches "
            f"{growth_phrase(fit_b, array_mb)}; an epoch's peak above its end RSS: up to "
            f"{num(transient_mb(fit_a), 0)} MB ({transient_mb(fit_a) / array_mb:.1f}× the array) vs "
            f"{num(transient_mb(fit_b), 0)} MB. Time, ArrayBatches / Keras arrays: whole "
            f"`fit` {times(ratio(fit_b['seconds'], fit_a['seconds']))}, steady epochs "
            f"{times(ratio(steady_epoch_seconds(fit_b), steady_epoch_seconds(fit_a)))}.")
    if "predict" in a and "predict" in b:
        line += (f" `predict` added {num(a['predict']['rss_increase_mb'], 0)} MB vs "
                 f"{num(b['predict']['rss_increase_mb'], 0)} MB "
                 f"({memory_ratio(a['predict']['rss_increase_mb'], b['predict']['rss_increase_mb'])}) and took "
                 f"{times(ratio(b['predict']['seconds'], a['predict']['seconds']))} the time with ArrayBatches.")
    return line


def render_cache_feeding(reports: list[dict], settings: dict) -> str:
    shape = "×".join(str(size) for size in settings["shape"])
    array_mb = settings["samples"] * math.prod(settings["shape"]) * 2 / MB
    parts = [
        f"A random float16 array of {settings['samples']:,} samples × {shape} ({array_mb:,.0f} MB; shaped like "
        "the boundary activations of `--unfreeze conv5` at 72 px) and int32 labels, filled before measuring. A "
        "small model consumes it (1×1 Conv2D to 64 channels → global average pooling → Dense 10; Adam, sparse "
        "cross-entropy), so compute is cheap and host memory is dominated by how the array is fed. *Keras "
        f"arrays*: `model.fit(x, y, batch_size={settings['batch_size']}, shuffle=True)` and `model.predict(x, "
        f"batch_size={settings['predict_batch_size']})`, i.e. Keras' array adapter. *ArrayBatches*: "
        f"`model.fit(ArrayBatches(x, y, {settings['batch_size']}, shuffle=True, seed=42), shuffle=False)` and "
        f"`model.predict(ArrayBatches(x, batch_size={settings['predict_batch_size']}))`, as tlkit's `run_stage` "
        "and `BoundaryActivations.features` feed float16 caches. Each feeding runs in its own child process per "
        f"backend: `fit` for {settings['epochs']} epochs, then `predict`. *Memory added* is the peak RSS sampled "
        "every 5 ms during the call minus the RSS just before it; `predict` starts from whatever `fit` left "
        "resident (its *RSS before* column) and may reuse memory `fit` freed. *Keras / ArrayBatches* divides the "
        f"two; when ArrayBatches added under {MEMORY_FLOOR_MB:.0f} MB it divides by {MEMORY_FLOOR_MB:.0f} MB "
        "instead (a lower bound, ≥). *RSS before → at each epoch end*: the RSS just before `fit`, then the RSS "
        "read by an `on_epoch_end` callback; *peak RSS per epoch* is sampled during each epoch. Memory kept from "
        "one epoch to the next shows up as growth of the epoch-end RSS, memory taken and given back within an "
        "epoch as a peak above it. *s per epoch* runs from `on_epoch_begin` to `on_epoch_end` (the first epoch "
        "also traces/compiles; the mean of the later ones is in parentheses); *fit (s)* is the whole call, "
        "including what the data adapter does before the first epoch begins.",
    ]
    groups = by_backend(reports)
    for backend, group in groups.items():
        keras_arrays, batches = feeding_pair(group)
        fit_rows = [feeding_fit_row(keras_arrays, "Keras arrays", batches),
                    feeding_fit_row(batches, "ArrayBatches", keras_arrays)]
        predict_rows = [feeding_predict_row(keras_arrays, "Keras arrays", batches),
                        feeding_predict_row(batches, "ArrayBatches", keras_arrays)]
        parts.append(f"**{backend}**\n\n`fit`, {settings['epochs']} epochs:\n\n" + table(
            ("feeding", "array (MB)", "memory added (MB)", "Keras / ArrayBatches", "RSS before → at each epoch "
             "end (MB)", "peak RSS per epoch (MB)", "s per epoch (steady)", "fit (s)", "final loss", "CPU util."),
            fit_rows)
            + "\n\n`predict`:\n\n" + table(
            ("feeding", "array (MB)", "RSS before (MB)", "memory added (MB)", "Keras / ArrayBatches", "seconds",
             "process peak RSS (MB)"), predict_rows))
    parts.append("\n".join(feeding_verdict(backend, *feeding_pair(group)) for backend, group in groups.items()))
    return "\n\n".join(parts)


RENDERERS = {
    "pipeline": render_pipeline,
    "feature_cache": render_feature_cache,
    "boundary_cache": render_boundary_cache,
    "backends": render_backends,
    "cache_feeding": render_cache_feeding,
}


def render(runs: list[dict]) -> str:
    """The whole markdown document from one or more saved runs (`results.json` contents).

    The first run is the main one. A later run (e.g. `--only backends` re-measuring one section) adds its
    sections after the main run's, marked with its own command, date and load, so every table keeps the
    invocation it was measured in.
    """
    main = runs[0]
    info = main["info"]
    parts = [
        "# Performance",
        f"Generated by `{info['command']}` ({main['mode']} mode){re_measured_note(runs)}; regenerate rather than "
        "edit. Every comparison below was measured side by side in one invocation, each case in a fresh child "
        "process with `KERAS_BACKEND` set in its environment. When other work shares the machine, absolute "
        "numbers move with the load; ratios of cases run back to back are the figures to read. Each section "
        "states the load average its cases saw, and *CPU util.* is a child's CPU seconds / wall seconds during the "
        "measured phase (≈ the core count when it had the machine to itself, ≈ 1 when it got one core's worth).",
        render_summary(runs),
        "## Machine",
        render_machine(info, main["total_seconds"] or 0.0),
    ]
    for name in SECTIONS:
        holders = [index for index, run in enumerate(runs) if name in run["sections"]]
        for index in holders:
            run = runs[index]
            section = SECTIONS[name]
            number = list(SECTIONS).index(name) + 1  # stable numbers, also in a partial run
            extra = run["info"]
            by = (f"By `{extra['command']}` ({run['mode']} mode) on {extra['date']}, "
                  f"{(run['total_seconds'] or 0) / 60:.1f} min, code at {extra['code']}.")
            if index == 0:
                parts.append(f"## {number}. {section.title}")
            elif index == holders[0]:  # a section the main run lacks: headed by the first run that has it
                parts.append(f"## {number}. {section.title}\n\n{by}")
            else:
                parts.append(f"### {number}. {section.title}: re-measured\n\n{by}")
            section_reports = [report for report in run["reports"] if report["section"] == name]
            parts.append(RENDERERS[name](section_reports, section.settings[run["mode"]]))
            note = load_note(section_reports)
            if note:
                parts.append(f"*{note}*")
    return "\n\n".join(parts) + "\n"


def render_summary(runs: list[dict]) -> str:
    """The headline ratios against the targets of issue 4 (first backend of each section), run by run."""
    rows = []
    for index, run in enumerate(runs):
        suffix = "" if index == 0 else f" — re-measured {run['info']['date']}"
        for name in run["sections"]:
            section_reports = [report for report in run["reports"] if report["section"] == name]
            rows += [(f"{label}{suffix}", value, target) for label, value, target in
                     SUMMARIES[name](section_reports, run["mode"])]
    if not rows:
        return ""
    return "## Summary\n\n" + table(("", "measured", "target"), rows)


def summary_pipeline(reports: list[dict], mode: str) -> list[tuple]:
    rows = []
    seed, ours = find(reports, "pipeline_seed_style", "speed"), find(reports, "pipeline_tlkit", "speed")
    if ok(seed) and ok(ours):
        speed = ratio(ours["result"]["train_images_per_second"], seed["result"]["train_images_per_second"])
        rows.append(("Pipeline: training speed, tlkit / seed-style (steady state)", times(speed), "≥ 1×"))
    seed, ours = find(reports, "pipeline_seed_style", "memory"), find(reports, "pipeline_tlkit", "memory")
    if ok(seed) and ok(ours):
        share = ratio(ours["result"]["memory"]["rss_increase_mb"], seed["result"]["memory"]["rss_increase_mb"], 3)
        process = ratio(ours["process"]["peak_rss_mb"], seed["process"]["peak_rss_mb"])
        rows.append(("Pipeline: host memory added (RSS increase) at 224 px, tlkit / seed-style",
                     f"{num(share, 3)} (whole process: {num(process, 2)})", "≤ 0.1"))
    return rows


def summary_feature_cache(reports: list[dict], mode: str) -> list[tuple]:
    off, cold, warm = (find(reports, "tlkit_train", part) for part in ("off", "cold", "warm"))
    if not (ok(off) and ok(cold) and ok(warm)):
        return []
    return [("Head stage (fit + extraction), feature cache off / on, cold · warm",
             f"{times(ratio(stage_cost(off, 'head'), stage_cost(cold, 'head')))} · "
             f"{times(ratio(stage_cost(off, 'head'), stage_cost(warm, 'head')))}", "≥ 5×")]


def summary_boundary_cache(reports: list[dict], mode: str) -> list[tuple]:
    off, on = find(reports, "tlkit_train", "off"), find(reports, "tlkit_train", "on")
    if not (ok(off) and ok(on)):
        return []
    return [("Finetune stage (fit + cache build), boundary cache off / on (fit alone)",
             f"{times(ratio(stage_cost(off, 'finetune'), stage_cost(on, 'finetune')))} "
             f"({times(ratio(stage_seconds(off, 'finetune'), stage_seconds(on, 'finetune')))})",
             "≥ 2× at equal accuracy"),
            ("Both stages incl. all extraction, boundary cache off / on",
             times(ratio(training_cost(off), training_cost(on))), "")]


def summary_backends(reports: list[dict], mode: str) -> list[tuple]:
    sizes = sorted({group["image_size"] for group in SECTIONS["backends"].settings[mode]["grid"]})
    load = load_range(reports)
    return [(f"mixed_bfloat16 / float32, {backend} (geometric mean over sizes; {load})",
             f"{inference:.2f}× inference, {training:.2f}× training", "> 1× to pick bf16")
            for backend, (inference, training) in bfloat16_means(measurements(reports), sizes).items()]


def summary_cache_feeding(reports: list[dict], mode: str) -> list[tuple]:
    return []  # no target of issue 4 is about feeding; the section states its own ratios


SUMMARIES = {
    "pipeline": summary_pipeline,
    "feature_cache": summary_feature_cache,
    "boundary_cache": summary_boundary_cache,
    "backends": summary_backends,
    "cache_feeding": summary_cache_feeding,
}


def re_measured_note(runs: list[dict]) -> str:
    if len(runs) == 1:
        return ""
    seen, re_measuring, adding = set(runs[0]["sections"]), [], []
    for run in runs[1:]:
        # A run whose sections are all new adds them; any other later run re-measures.
        (re_measuring if seen & set(run["sections"]) else adding).append(f"`{run['info']['command']}`")
        seen |= set(run["sections"])
    note = ""
    if re_measuring:
        note = f", with sections re-measured by {'; '.join(re_measuring)} (marked where they appear)"
    if adding:
        note += f"{' and' if re_measuring else ', with'} sections added by {'; '.join(adding)}"
    return note
