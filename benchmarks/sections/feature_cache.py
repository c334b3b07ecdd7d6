"""Section 2, `feature_cache`: `tlkit.fit` head stage with the feature cache off / on (cold) / on (warm)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.formatting import by_backend, failure, find, num, ok, ratio, table, times
from benchmarks.sections.base import Case, Section, SummaryRow
from benchmarks.tlkit_runs import CACHE_COLUMNS, cache_row, run_overrides, stage_cost, stage_seconds, tlkit_train

SETTINGS = {
    "quick": {"train_limit": 400, "test_limit": 200, "head_epochs": 3, "image_size": 72},
    "full": {"train_limit": 1500, "test_limit": 1000, "head_epochs": 10, "image_size": 72},
}


def plan(settings: dict, workdir: Path) -> list[Case]:
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


# ---- rendering (parent side) ------------------------------------------------------------------------


def feature_cache_note(result: dict) -> str:
    cache = result.get("feature_cache") or {}
    if not cache.get("used"):
        return "off"
    train = (cache.get("head") or {}).get("train") or {}
    return "hit" if train.get("hit") else "miss (extracted)"


def render(reports: list[dict], settings: dict, cores: int) -> str:
    parts = [
        f"`tlkit.fit(config)` on the `cpu` preset: {settings['image_size']} px, `train_limit` "
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


def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    off, cold, warm = (find(reports, "tlkit_train", part) for part in ("off", "cold", "warm"))
    if not (ok(off) and ok(cold) and ok(warm)):
        return []
    return [SummaryRow("Head stage (fit + extraction), feature cache off / on, cold · warm",
                       f"{times(ratio(stage_cost(off, 'head'), stage_cost(cold, 'head')))} · "
                       f"{times(ratio(stage_cost(off, 'head'), stage_cost(warm, 'head')))}", "≥ 5×",
                       [off, cold, warm])]


SECTION = Section(
    name="feature_cache", title="Head stage with and without the feature cache",
    default_backends=("tensorflow",), settings=SETTINGS, plan=plan, cases={"tlkit_train": tlkit_train},
    render=render, summarise=summarise,
)
