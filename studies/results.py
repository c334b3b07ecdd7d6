"""The accuracy results report (`docs/results.md`), generated from run directories.

Every number, table and plot in the report comes from run directories named in
a spec file; the markdown around them comes from a template with
`{{placeholders}}`. Nothing in the output is edited by hand, so re-running the
command after a new run reproduces the whole report. The tables and plots are
built with the general helpers of `tlkit.report`; what is specific to this
study (the spec, the confusable Fashion-MNIST classes, the ablation groups, the
template) lives here.

The spec (TOML; paths are relative to the spec's directory or absolute):

```toml
template = "results.template.md"
output = "results.md"
images = "img/results"                      # PNG folder, linked relatively from the output
hardware = "2-core AMD EPYC CPU (no GPU)"   # optional; else derived from metrics.json

[[final]]                                   # one row per final recipe run
recipe = "cpu"
run = "/work/acc/20261129-101500-cpu-tf-1a2b"
# hardware = "..."                          # optional, per row

[[ablation]]
group = "dropout"
label = "dropout 0.3"
run = "/work/acc/20261129-120000-dropout-03-3c4d"
baseline = true                             # the group's reference row (else its first row)

best_cpu = "/work/acc/20261129-101500-cpu-tf-1a2b"   # plotted: curves and confusion matrix
# spread_recipe = "cpu"                     # the recipe `{{spread}}` summarises
# hard_pairs_groups = ["dropout"]           # ablation groups added to the hard-class recall table
```

Placeholders are listed in `PLACEHOLDERS`. An unknown placeholder, a missing
or unfinished run directory, a malformed spec or a missing matplotlib raises
`ReportError` before anything is written.

Example:

```python
from studies import results

output = results.build_report("docs/results.toml")   # same as `python -m studies.results docs/results.toml`
print(output.read_text()[:200])
```
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np
import tomllib

from tlkit.config import STAGES
from tlkit.report import (
    class_names_of,
    config_diff,
    confusion_matrix_png,
    describe_hardware,
    describe_versions,
    epochs_text,
    learning_curves_png,
    markdown_table,
    minutes,
    percent,
    recall_by_class,
    stage_rows,
    time_span,
    unfrozen_depth,
)
from tlkit.runs import Run, write_atomic

COMMAND = "python -m studies.results"
PLACEHOLDERS = {
    "results_table": "one row per final run: recipe, resolution, depth, epochs, backend, accuracy, macro-F1, time",
    "spread": "one line: the spread recipe's test accuracy and macro-F1 across backends",
    "learning_curves": "image link: best_cpu's train/val accuracy and loss over both stages",
    "confusion_matrix": "image link: best_cpu's test confusion matrix with counts",
    "hard_pairs": "tables: recall of the confusable classes per final run, their confusions, top-5 pairs",
    "ablation_table": "per ablation group: config change vs baseline, val accuracy per stage, delta, time",
    "provenance": "every run used: id, backend, versions, seed, start/finish, data sizes",
    "generated": "the command that generated the report and when (UTC)",
}
PLACEHOLDER_PATTERN = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")
# The Fashion-MNIST classes the study's models confuse with each other.
CONFUSABLE_CLASSES = ("T-shirt/top", "Pullover", "Coat", "Shirt")
LEARNING_CURVES_FILE = "learning_curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
SPEC_KEYS = ("template", "output", "images", "hardware", "final", "ablation", "best_cpu", "spread_recipe",
             "hard_pairs_groups")


class ReportError(Exception):
    """The spec, the template or a run directory cannot make a report; the message says which."""


# ---- the spec ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinalEntry:
    """One row of the results table: a final recipe run, its test set evaluated once."""

    recipe: str
    run: Run
    hardware: str | None = None


@dataclasses.dataclass(frozen=True)
class AblationEntry:
    """One ablation run; `baseline` marks the row its group is compared against."""

    group: str
    label: str
    run: Run
    baseline: bool = False


@dataclasses.dataclass(frozen=True)
class ReportSpec:
    """A parsed spec file with every path resolved and every run checked."""

    path: Path
    template: Path
    output: Path
    images: Path
    hardware: str | None = None
    final: tuple[FinalEntry, ...] = ()
    ablation: tuple[AblationEntry, ...] = ()
    best_cpu: Run | None = None
    spread_recipe: str = "cpu"
    hard_pairs_groups: tuple[str, ...] = ()  # ablation groups whose runs join the recall table

    def runs(self) -> dict[Run, list[str]]:
        """Each run used (in spec order) with the roles it plays in the report."""
        roles: dict[Run, list[str]] = {}
        for entry in self.final:
            roles.setdefault(entry.run, []).append(f"final {entry.recipe}")
        for entry in self.ablation:
            roles.setdefault(entry.run, []).append(f"ablation {entry.group}: {entry.label}")
        if self.best_cpu is not None:
            roles.setdefault(self.best_cpu, []).append("best_cpu")
        return roles


def load_spec(path: str | os.PathLike) -> ReportSpec:
    """Reads a spec file and checks that every run it names has finished.

    Args:
        path: the TOML spec; relative paths inside it are relative to its directory.

    Raises:
        ReportError: the spec is unreadable or malformed, or a run directory is
            missing or unfinished (the message names the spec entry and the path).
    """
    path = Path(path).expanduser()
    try:
        values = tomllib.loads(path.read_text())
    except OSError as error:
        raise ReportError(f"spec {str(path)!r} cannot be read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ReportError(f"spec {str(path)!r} is not valid TOML: {error}") from None
    unknown = sorted(set(values) - set(SPEC_KEYS))
    if unknown:
        raise ReportError(f"spec {str(path)!r}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}")
    base = path.parent

    def resolve(value, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ReportError(f"spec {str(path)!r}: {where} must be a non-empty path string")
        return (base / Path(value).expanduser()).resolve()

    def table(value, where: str) -> dict:
        if not isinstance(value, dict):
            raise ReportError(f"spec {str(path)!r}: {where} must be a table")
        return value

    final = []
    for i, entry in enumerate(values.get("final", [])):
        entry = table(entry, f"final[{i}]")
        recipe = _required_text(entry, "recipe", f"final[{i}]", path)
        run = checked_run(resolve(entry.get("run"), f"final[{i}].run"), f"final[{i}] ({recipe})")
        final.append(FinalEntry(recipe, run, entry.get("hardware")))
    ablation = []
    for i, entry in enumerate(values.get("ablation", [])):
        entry = table(entry, f"ablation[{i}]")
        group = _required_text(entry, "group", f"ablation[{i}]", path)
        label = _required_text(entry, "label", f"ablation[{i}]", path)
        run = checked_run(resolve(entry.get("run"), f"ablation[{i}].run"), f"ablation[{i}] ({group}: {label})")
        ablation.append(AblationEntry(group, label, run, bool(entry.get("baseline", False))))
    best_cpu = values.get("best_cpu")
    return ReportSpec(
        path=path,
        template=resolve(values.get("template"), "template"),
        output=resolve(values.get("output"), "output"),
        images=resolve(values.get("images", "img"), "images"),
        hardware=values.get("hardware"),
        final=tuple(final),
        ablation=tuple(ablation),
        best_cpu=checked_run(resolve(best_cpu, "best_cpu"), "best_cpu") if best_cpu is not None else None,
        spread_recipe=values.get("spread_recipe", "cpu"),
        hard_pairs_groups=_hard_pairs_groups(values.get("hard_pairs_groups", []), ablation, path),
    )


def _hard_pairs_groups(groups, ablation: list[AblationEntry], spec_path: Path) -> tuple[str, ...]:
    known = {entry.group for entry in ablation}
    if not isinstance(groups, list) or any(group not in known for group in groups):
        raise ReportError(f"spec {str(spec_path)!r}: hard_pairs_groups must list ablation groups "
                          f"(known: {', '.join(sorted(known)) or 'none'})")
    return tuple(groups)


def _required_text(entry: dict, key: str, where: str, spec_path: Path) -> str:
    value = entry.get(key)
    if not isinstance(value, str) or not value:
        raise ReportError(f"spec {str(spec_path)!r}: {where}.{key} must be a non-empty string")
    return value


def checked_run(path: str | os.PathLike, role: str = "run") -> Run:
    """The run at `path` if it completed and has its config, history and metrics.

    Args:
        path: the run directory.
        role: what the spec uses the run for, named in the error message.

    Raises:
        ReportError: naming `role` and `path` and what is missing.
    """
    run = Run(path)
    if not run.path.is_dir():
        raise ReportError(f"{role}: run directory {str(run.path)!r} does not exist")
    state = run.status().get("state")
    if state != "completed":
        raise ReportError(f"{role}: run {str(run.path)!r} is not completed (state: {state})")
    for name, value in (("config.json", run.config()), ("history.csv", run.history()),
                        ("metrics.json", run.metrics())):
        if not value:
            raise ReportError(f"{role}: run {str(run.path)!r} has no readable {name}")
    return run


# ---- tables -------------------------------------------------------------------------------


def results_table(final: Sequence[FinalEntry], hardware: str | None = None) -> str:
    """The headline table: one row per final run.

    Args:
        final: the final runs.
        hardware: the hardware column's default; a row's own `hardware` wins,
            else it is derived from the run's `metrics.json`.
    """
    headers = ["recipe", "resolution (px)", "unfrozen depth", "epochs (head + finetune)", "backend", "precision",
               "test accuracy (%)", "macro-F1", "wall time (min)", "hardware"]
    rows = []
    for entry in final:
        config, metrics = entry.run.config(), entry.run.metrics()
        rows.append([
            entry.recipe, config["model"]["image_size"], unfrozen_depth(config),
            epochs_text(config, entry.run.history(), metrics), metrics.get("backend", "—"),
            metrics.get("precision", "—"),
            percent(metrics["test_accuracy"]), f"{metrics['macro_f1']:.3f}",
            minutes((metrics.get("seconds") or {}).get("total")), row_hardware(entry, hardware),
        ])
    note = ("Wall time is the training process's own clock (`seconds.total` in metrics.json: data loading, "
            "both stages and the test evaluation).")
    return markdown_table(headers, rows, align="lrllllrrrl") + "\n\n" + note


def row_hardware(entry: FinalEntry, hardware: str | None = None) -> str:
    """A final run's hardware: its own `hardware`, else the spec's default, else its metrics.json's."""
    return entry.hardware or hardware or describe_hardware(entry.run.metrics().get("device"))


def spread_line(final: Sequence[FinalEntry], recipe: str = "cpu", hardware: str | None = None) -> str:
    """How much `recipe`'s test accuracy and macro-F1 move across backends: one sentence per hardware.

    Runs on different hardware differ in more than the backend (precision, kernels), so each
    hardware's runs get their own sentence, naming it when there are several.

    Raises:
        ReportError: no final run of `recipe`.
    """
    entries = [entry for entry in final if entry.recipe == recipe]
    if not entries:
        raise ReportError(f"{{{{spread}}}}: no [[final]] run has recipe {recipe!r}")
    groups: dict[str, list[FinalEntry]] = {}
    for entry in entries:
        groups.setdefault(row_hardware(entry, hardware), []).append(entry)
    sentences = []
    for where, group in groups.items():
        metrics = [entry.run.metrics() for entry in group]
        accuracies = [m["test_accuracy"] for m in metrics]
        f1s = [m["macro_f1"] for m in metrics]
        backends = ", ".join(m.get("backend", "?") for m in metrics)
        on = f" on the {where}" if len(groups) > 1 else ""
        if len(group) == 1:
            sentences.append(f"The {recipe} recipe's one run ({backends}){on}: test accuracy "
                             f"{percent(accuracies[0])} %, macro-F1 {f1s[0]:.3f}.")
            continue
        spread = 100 * (max(accuracies) - min(accuracies))
        sentences.append(f"The {recipe} recipe over {len(group)} run(s) ({backends}){on}: test accuracy "
                         f"{percent(min(accuracies))}–{percent(max(accuracies))} % (spread {spread:.2f} points), "
                         f"macro-F1 {min(f1s):.3f}–{max(f1s):.3f} (spread {max(f1s) - min(f1s):.3f}).")
    return " ".join(sentences)


def hard_pairs_tables(final: Sequence[FinalEntry], best: Run, classes: Sequence[str] = CONFUSABLE_CLASSES,
                      top: int = 5, compare: Sequence[AblationEntry] = ()) -> str:
    """The classes that get confused with each other, three tables.

    Args:
        final: runs whose recall of `classes` is compared.
        compare: ablation runs added to the recall comparison (what helped the hard classes).
        best: run whose confusion counts among `classes` and top confused pairs are shown.
        classes: the confusable class names.
        top: how many most-confused (true, predicted) pairs to list.
    """
    recall_rows = []
    for entry in final:
        metrics = entry.run.metrics()
        recall = recall_by_class(metrics)
        recall_rows.append([f"{entry.recipe} ({metrics.get('backend', '?')})",
                            *[percent(recall.get(name)) for name in classes]])
    for entry in compare:
        recall = recall_by_class(entry.run.metrics())
        recall_rows.append([f"ablation {entry.group}: {entry.label}",
                            *[percent(recall.get(name)) for name in classes]])
    recall_table = markdown_table(["run", *[f"{name} recall (%)" for name in classes]], recall_rows,
                                  align="l" + "r" * len(classes))

    metrics = best.metrics()
    names = class_names_of(metrics)
    matrix = np.asarray(metrics["confusion_matrix"])
    missing = [name for name in classes if name not in names]
    if missing:
        raise ReportError(f"{{{{hard_pairs}}}}: best_cpu ({best.run_id}) has no class {', '.join(missing)}")
    index = [names.index(name) for name in classes]
    counts = [[f"**{name}**", *[int(matrix[i, j]) for j in index]] for name, i in zip(classes, index)]
    counts_table = markdown_table(["true ↓ / predicted →", *classes], counts, align="l" + "r" * len(classes))

    off_diagonal = [(int(matrix[i, j]), i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    # Ties are broken by class order so the table is the same on every run of the report.
    off_diagonal.sort(key=lambda item: (-item[0], item[1], item[2]))
    support = matrix.sum(axis=1)
    pairs = [[rank, names[i], names[j], count, f"{100 * count / support[i]:.1f}" if support[i] else "—"]
             for rank, (count, i, j) in enumerate(off_diagonal[:top], start=1)]
    pairs_table = markdown_table(["#", "true class", "predicted as", "test images", "% of the true class"], pairs,
                                 align="rllrr")
    return "\n\n".join([
        recall_table,
        f"Confusions among them for best_cpu (`{best.run_id}`), test images (rows: true class):",
        counts_table,
        f"The {top} most confused (true → predicted) pairs over all classes for best_cpu:",
        pairs_table,
    ])


def ablation_tables(ablation: Sequence[AblationEntry]) -> str:
    """One table per ablation group, each row compared with the group's baseline.

    The baseline is the row marked `baseline = true`, else the group's first row.
    Deltas compare the final validation accuracy (last epoch of the last stage).

    Raises:
        ReportError: a group marks more than one baseline.
    """
    groups: dict[str, list[AblationEntry]] = {}
    for entry in ablation:
        groups.setdefault(entry.group, []).append(entry)
    sections = []
    for group, entries in groups.items():
        marked = [entry for entry in entries if entry.baseline]
        if len(marked) > 1:
            labels = ", ".join(entry.label for entry in marked)
            raise ReportError(f"ablation group {group!r}: more than one baseline ({labels})")
        baseline = marked[0] if marked else entries[0]
        stages = [stage for stage in STAGES if any(stage_rows(e.run.history()).get(stage) for e in entries)]
        reference = _final_val_accuracy(baseline.run.history())
        rows = []
        for entry in entries:
            per_stage = stage_rows(entry.run.history())
            final_val = _final_val_accuracy(entry.run.history())
            if entry is baseline:
                change, delta = "baseline", "—"
            else:
                change = "; ".join(config_diff(baseline.run.config(), entry.run.config())) or "no config change"
                delta = "—" if None in (final_val, reference) else f"{100 * (final_val - reference):+.2f}"
            best_val = max((row["val_accuracy"] for row in entry.run.history() if row["val_accuracy"] is not None),
                           default=None)
            rows.append([
                entry.label, change,
                *[percent(per_stage[stage][-1]["val_accuracy"]) if stage in per_stage else "—" for stage in stages],
                percent(best_val), delta, minutes((entry.run.metrics().get("seconds") or {}).get("total")),
            ])
        headers = ["run", f"change vs {baseline.label}", *[f"{stage} final val acc (%)" for stage in stages],
                   "best val acc (%)", "Δ final val acc (points)", "wall time (min)"]
        table = markdown_table(headers, rows, align="ll" + "r" * (len(stages) + 3))
        sections.append(f"**{group}** (baseline: {baseline.label})\n\n{table}")
    return "\n\n".join(sections)


def _final_val_accuracy(history: Sequence[dict]) -> float | None:
    return history[-1]["val_accuracy"] if history else None


def provenance_table(runs_with_roles: dict[Run, list[str]]) -> str:
    """Where each number comes from: one row per run directory used."""
    rows = []
    for run, roles in runs_with_roles.items():
        status, metrics, config = run.status(), run.metrics(), run.config()
        sizes = metrics.get("data_sizes") or status.get("data_sizes") or {}
        rows.append([
            f"`{run.run_id}`", "; ".join(roles), metrics.get("backend", "—"), describe_versions(metrics),
            config.get("seed", "—"), time_span(status.get("started_at"), status.get("finished_at")),
            " / ".join(str(sizes.get(split, "—")) for split in ("train", "val", "test")),
        ])
    headers = ["run id", "used as", "backend", "versions", "seed", "started → finished", "train / val / test"]
    return markdown_table(headers, rows, align="lllllll")


# ---- plots --------------------------------------------------------------------------------


def _plot(draw, *args, **kwargs) -> bytes:
    """PNG bytes from a `tlkit.report` plot function; a missing matplotlib becomes a `ReportError`."""
    try:
        return draw(*args, **kwargs)
    except ImportError as error:
        if error.name != "matplotlib":
            raise
        raise ReportError(str(error)) from None


# ---- rendering ----------------------------------------------------------------------------


@dataclasses.dataclass
class RenderedReport:
    """The report in memory: the markdown and the PNGs, keyed by where they go."""

    output: Path
    markdown: str
    images: dict[Path, bytes]

    def write(self) -> Path:
        """Writes the PNGs, then the markdown (each atomically); returns the markdown's path."""
        for path, data in [*self.images.items(), (self.output, self.markdown)]:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, data)
            # write_atomic's temp file is private (0600); the report is documentation for everyone.
            path.chmod(0o644)
        return self.output


def placeholders_in(template: str) -> list[str]:
    """Placeholder names in the order they first appear."""
    return list(dict.fromkeys(PLACEHOLDER_PATTERN.findall(template)))


def check_placeholders(template: str, known: Sequence[str] = tuple(PLACEHOLDERS), source: str = "template") -> None:
    """Raises `ReportError` naming every placeholder of `template` that is not in `known`."""
    unknown = [name for name in placeholders_in(template) if name not in known]
    if unknown:
        names = ", ".join(f"{{{{{name}}}}}" for name in unknown)
        raise ReportError(f"{source}: unknown placeholder(s) {names}; known: {', '.join(known)}")


def fill_template(template: str, values: dict[str, str], source: str = "template") -> str:
    """Replaces every `{{name}}` with `values[name]`.

    Raises:
        ReportError: naming each placeholder without a value.
    """
    check_placeholders(template, tuple(values), source)
    return PLACEHOLDER_PATTERN.sub(lambda match: values[match.group(1)], template)


def render_report(spec: ReportSpec, command: str = COMMAND, now: datetime | None = None) -> RenderedReport:
    """Builds the report in memory (nothing is written).

    Args:
        spec: from `load_spec`.
        command: shown by `{{generated}}`.
        now: the generation time for `{{generated}}` (default: the current UTC time).

    Raises:
        ReportError: the template is unreadable, names an unknown placeholder or
            needs spec entries that are absent.
    """
    try:
        template = spec.template.read_text()
    except OSError as error:
        raise ReportError(f"template {str(spec.template)!r} cannot be read: {error.strerror or error}") from None
    check_placeholders(template, source=f"template {str(spec.template)!r}")
    images: dict[Path, bytes] = {}
    values = {name: _placeholder_value(name, spec, images, command, now) for name in placeholders_in(template)}
    return RenderedReport(spec.output, fill_template(template, values), images)


def _placeholder_value(name: str, spec: ReportSpec, images: dict[Path, bytes], command: str,
                       now: datetime | None) -> str:
    if name in ("results_table", "spread", "hard_pairs") and not spec.final:
        raise ReportError(f"{{{{{name}}}}} needs [[final]] runs in the spec {str(spec.path)!r}")
    if name in ("learning_curves", "confusion_matrix", "hard_pairs") and spec.best_cpu is None:
        raise ReportError(f"{{{{{name}}}}} needs best_cpu in the spec {str(spec.path)!r}")
    if name == "ablation_table" and not spec.ablation:
        raise ReportError(f"{{{{{name}}}}} needs [[ablation]] runs in the spec {str(spec.path)!r}")
    if name == "results_table":
        return results_table(spec.final, spec.hardware)
    if name == "spread":
        return spread_line(spec.final, spec.spread_recipe, spec.hardware)
    if name == "hard_pairs":
        compare = [entry for entry in spec.ablation if entry.group in spec.hard_pairs_groups]
        return hard_pairs_tables(spec.final, spec.best_cpu, compare=compare)
    if name == "ablation_table":
        return ablation_tables(spec.ablation)
    if name == "provenance":
        return provenance_table(spec.runs())
    if name == "learning_curves":
        png = _plot(learning_curves_png, spec.best_cpu.history(), title=f"best_cpu: {spec.best_cpu.run_id}")
        return _image_link(spec, images, LEARNING_CURVES_FILE, png, "Learning curves of the best CPU run")
    if name == "confusion_matrix":
        metrics = spec.best_cpu.metrics()
        png = _plot(confusion_matrix_png, metrics["confusion_matrix"], class_names_of(metrics),
                    title=f"best_cpu: {spec.best_cpu.run_id} (test set)")
        return _image_link(spec, images, CONFUSION_MATRIX_FILE, png, "Confusion matrix of the best CPU run")
    if name == "generated":
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        return (f"Generated by `{command}` on {moment:%Y-%m-%d %H:%M} UTC from {len(spec.runs())} run "
                "directories; edit the template or the spec, not this file.")
    raise ReportError(f"unknown placeholder {{{{{name}}}}}")  # unreachable: checked by fill_template


def _image_link(spec: ReportSpec, images: dict[Path, bytes], filename: str, png: bytes, alt: str) -> str:
    path = spec.images / filename
    images[path] = png
    relative = PurePosixPath(*Path(os.path.relpath(path, spec.output.parent)).parts)
    return f"![{alt}]({relative})"


def build_report(spec_path: str | os.PathLike, command: str | None = None, now: datetime | None = None) -> Path:
    """Reads the spec, renders the report and writes it with its PNGs.

    Nothing is written unless every run, placeholder and plot succeeded.

    Args:
        spec_path: the TOML spec.
        command: shown by `{{generated}}` (default: `python -m studies.results <spec_path>`).
        now: the generation time (default: now, UTC).

    Returns:
        The path of the written markdown.
    """
    command = command or f"{COMMAND} {shlex.quote(str(spec_path))}"
    return render_report(load_spec(spec_path), command, now).write()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m studies.results SPEC.toml`; exit status 2 on a spec, template or run error."""
    parser = argparse.ArgumentParser(
        prog=COMMAND,
        description="Generate the results report (markdown + PNG plots) from run directories named in a spec.",
    )
    parser.add_argument("spec", help="TOML spec: template, output, images, [[final]], [[ablation]], best_cpu")
    args = parser.parse_args(argv)
    command = f"{COMMAND} " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    try:
        output = build_report(args.spec, command=command)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
