"""Section 3, `boundary_cache`: `tlkit.fit` finetune stage (`--unfreeze conv5`) with the boundary cache off / on."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import MB
from benchmarks.formatting import by_backend, failure, find, num, ok, ratio, table, times
from benchmarks.sections.base import Case, Section, SummaryRow
from benchmarks.tlkit_runs import (
    CACHE_COLUMNS,
    cache_row,
    load_control,
    run_overrides,
    stage_cost,
    stage_seconds,
    tlkit_train,
    training_cost,
)

SETTINGS = {
    "quick": {"train_limit": 400, "test_limit": 200, "head_epochs": 1, "finetune_epochs": 2, "image_size": 72,
              "unfreeze": "conv5"},
    "full": {"train_limit": 1500, "test_limit": 1000, "head_epochs": 2, "finetune_epochs": 3, "image_size": 72,
             "unfreeze": "conv5"},
}


def plan(settings: dict, workdir: Path) -> list[Case]:
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


# ---- rendering (parent side) ------------------------------------------------------------------------


def boundary_cache_note(result: dict) -> str:
    entry = result.get("boundary_cache")
    if not entry:
        return "no `boundary_cache` entry"
    if not entry.get("used"):
        return "used: false" + (f" ({entry['reason']})" if entry.get("reason") else "")
    shapes = " + ".join("×".join(map(str, shape)) for shape in entry.get("shapes") or [])
    return (f"used: true, boundary `{entry.get('boundary')}` ({shapes}), "
            f"{num((entry.get('bytes') or 0) / MB, 1)} MB")


def arithmetic_bound(report: dict) -> float | None:
    """The finetune stage's off / on ratio if time followed convolution arithmetic: per epoch, the train images'
    prefix forward + unfrozen forward and backward, and the validation images' forward passes, against the same
    without the prefix (`tlkit_runs.finetune_convolution_gflop`). None for results recorded without it."""
    work, sizes = report["result"].get("finetune_convolution_gflop"), report["result"].get("data_sizes")
    if not work or not sizes:
        return None
    train, val = sizes["train"], sizes.get("val") or 0
    cached = train * work["unfrozen_train"] + val * work["unfrozen_forward"]
    return ratio(cached + (train + val) * work["frozen"], cached)


def bound_line(report: dict, measured: float | None) -> str:
    bound = arithmetic_bound(report)
    if bound is None or measured is None:
        return ""
    work = report["result"]["finetune_convolution_gflop"]
    return (f"- Arithmetic bound: per image, the frozen prefix's convolutions are {num(work['frozen'], 3)} GFLOP "
            f"forward, the unfrozen part's {num(work['unfrozen_forward'], 3)} forward and "
            f"{num(work['unfrozen_train'], 3)} forward + backward; at equal speed per FLOP, skipping the prefix "
            f"makes the stage at most **{times(bound)}** faster. Measured (fit + build): "
            f"{num(100 * measured / bound, 0)}% of that bound.")


def render(reports: list[dict], settings: dict, cores: int) -> str:
    parts = [
        f"`tlkit.fit(config)` on the `cpu` preset: {settings['image_size']} px, `train_limit` "
        f"{settings['train_limit']:,} (10% validation), `test_limit` {settings['test_limit']:,}, head "
        f"{settings['head_epochs']} epochs (feature cache on, shared), then fine-tuning "
        f"{settings['finetune_epochs']} epochs with `--unfreeze {settings['unfreeze']}`, no augmentation, float32; "
        "only `boundary_cache` differs. *fit* is metrics.json `seconds.finetune` (the `fit` call only); *cache "
        "build* is what the finetune stage spent getting the boundary activations for train + val (metrics.json "
        "`boundary_cache.seconds`). With the boundary cache on, the frozen prefix runs once for both stages: the "
        "head stage computes the boundary activations and derives its features from them, so the finetune "
        "stage's build is only a lookup and the prefix cost shows up in the head stage. The fair whole figure "
        "is therefore *both stages*: head fit + feature extraction + finetune fit + build, off vs on. "
        "*tensorflow+TF_ENABLE_ONEDNN_OPTS=0* runs TensorFlow's Eigen kernels, TensorFlow's own default on CPUs "
        "without AVX-512 VNNI/BF16 or AMX; tlkit turns its oneDNN kernels on (`tlkit.environment.use_onednn`)."
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
                     bound_line(on, stage), load_control(off, on)]
            if not used:
                lines.append("- **The boundary cache was not active in the `on` run** (metrics.json has no "
                             "`boundary_cache` entry with `used: true`), so both runs took the same path and the "
                             "ratio is noise.")
            parts.append("\n".join(line for line in lines if line))
    return "\n\n".join(parts)


def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    off, on = find(reports, "tlkit_train", "off"), find(reports, "tlkit_train", "on")
    if not (ok(off) and ok(on)):
        return []
    bound = arithmetic_bound(on)
    return [SummaryRow("Finetune stage (fit + cache build), boundary cache off / on (fit alone)",
                       f"{times(ratio(stage_cost(off, 'finetune'), stage_cost(on, 'finetune')))} "
                       f"({times(ratio(stage_seconds(off, 'finetune'), stage_seconds(on, 'finetune')))})",
                       "≥ 2× at equal accuracy" + (f" (arithmetic bound {times(bound)})" if bound else ""), [off, on]),
            SummaryRow("Both stages incl. all extraction, boundary cache off / on",
                       times(ratio(training_cost(off), training_cost(on))), "", [off, on])]


SECTION = Section(
    name="boundary_cache", title="Finetune stage with and without the boundary cache",
    default_backends=("tensorflow",), settings=SETTINGS, plan=plan, cases={"tlkit_train": tlkit_train},
    render=render, summarise=summarise,
)
