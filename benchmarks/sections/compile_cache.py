"""Section 7, `compile_cache`: the same `tlkit.fit` run under jax with its compilation cache off, on and
empty (cold), and on with the programs the cold run kept (warm).

Each run has its own empty feature/boundary cache directory, so every run extracts its activations and only
the compiled programs differ. The cold and warm runs share one `TLKIT_CACHE_DIR` (its `jax/` holds the
programs); every other case of `benchmarks.run` has the cache off.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.formatting import by_backend, failure, find, num, ok, ratio, table, times
from benchmarks.sections.base import Case, Section, SummaryRow
from benchmarks.tlkit_runs import run_overrides, stage_seconds, tlkit_train

SETTINGS = {
    "quick": {"train_limit": 400, "test_limit": 200, "head_epochs": 1, "finetune_epochs": 1, "image_size": 72},
    "full": {"train_limit": 1500, "test_limit": 1000, "head_epochs": 3, "finetune_epochs": 1, "image_size": 72},
}


def plan(settings: dict, workdir: Path) -> list[Case]:
    stages = {"head": {"epochs": settings["head_epochs"]},
              "finetune": {"epochs": settings["finetune_epochs"], "unfreeze": "conv5"}}

    def case(label, name, env):
        overrides = run_overrides(settings, workdir, name, cache_dir=str(workdir / "cache" / name), **stages)
        return Case(label, "tlkit_train", {"preset": "cpu", "overrides": overrides, "env": env}, 1800)

    kept = {"TLKIT_JAX_COMPILATION_CACHE": "1", "TLKIT_CACHE_DIR": str(workdir / "cache" / "compile-cache")}
    return [
        case("compilation cache off", "bench-compile-off", {"TLKIT_JAX_COMPILATION_CACHE": "0"}),
        case("compilation cache on, cold (compiles, keeps)", "bench-compile-cold", kept),
        case("compilation cache on, warm (reads back)", "bench-compile-warm", kept),
    ]


# ---- rendering (parent side) ------------------------------------------------------------------------


def row(report: dict) -> tuple:
    if failure(report):
        return (report["label"], failure(report), *["–"] * 5)
    result = report["result"]
    return (report["label"], num(result["memory"]["seconds"], 1), num(stage_seconds(report, "total"), 1),
            num(stage_seconds(report, "head"), 1), num(stage_seconds(report, "finetune"), 1),
            num(stage_seconds(report, "evaluate"), 1), num(result.get("test_accuracy"), 4))


def render(reports: list[dict], settings: dict, cores: int) -> str:
    parts = [
        f"`tlkit.fit(config)` on the `cpu` preset under jax: {settings['image_size']} px, `train_limit` "
        f"{settings['train_limit']:,} (10% validation), `test_limit` {settings['test_limit']:,}, head "
        f"{settings['head_epochs']} epochs, then conv5 fine-tuned {settings['finetune_epochs']}, both caches on "
        "(each run with its own empty cache directory, so each extracts), float32; only jax's persistent "
        "compilation cache (`tlkit.environment.keep_jax_compilations`) differs. *fit call* is the whole "
        "`tlkit.fit` call in the child; *run total* is metrics.json `seconds.total`; the stage columns time "
        "each stage's `fit` only."
    ]
    for backend, group in by_backend(reports).items():
        cases = [find(group, "tlkit_train", part) for part in ("off", "cold", "warm")]
        rows = [row(report) for report in cases if report]
        parts.append(f"**{backend}**\n\n" + table(
            ("run", "fit call (s)", "run total (s)", "head fit (s)", "finetune fit (s)", "evaluate (s)",
             "test acc."), rows))
        off, cold, warm = cases
        if ok(off) and ok(cold) and ok(warm):
            parts.append(
                f"- Whole `tlkit.fit` call, cache off / warm: **{times(ratio(call(off), call(warm)))}**; "
                f"off / cold: {times(ratio(call(off), call(cold)))} (what keeping the programs costs the first "
                "run).")
    return "\n\n".join(parts)


def call(report: dict) -> float:
    return report["result"]["memory"]["seconds"]


def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    off, cold, warm = (find(reports, "tlkit_train", part) for part in ("off", "cold", "warm"))
    if not (ok(off) and ok(cold) and ok(warm)):
        return []
    return [SummaryRow("Whole run, jax compilation cache off / warm (off / cold)",
                       f"{times(ratio(call(off), call(warm)))} ({times(ratio(call(off), call(cold)))})",
                       "", [off, cold, warm])]


SECTION = Section(
    name="compile_cache", title="jax: a run with its compiled programs kept from an earlier run",
    default_backends=("jax",), settings=SETTINGS, plan=plan, cases={"tlkit_train": tlkit_train},
    render=render, summarise=summarise,
)
