"""Streamlit pieces shared by the pages: the config form, live progress, run details.

Logic lives in `forms`, `tables`, `figures` and `launcher`; this module only
turns it into widgets. Widget keys are `cfg:<config key>`; the form's values
also live in a plain `draft` dict in session state, because Streamlit drops
widget state when the user visits another page.
"""

from __future__ import annotations

import os
import re
from typing import Any

import streamlit as st

from explorer import forms, launcher, offline, tables
from tlkit import run_queue, runs
from tlkit.config import (
    BACKBONE_BLOCKS,
    KERAS_HUB_PREFIX,
    LOCAL_BACKBONES,
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    UnfreezeSpec,
    field_specs,
)

DEFAULT_PRESET = "smoke" if "smoke" in PRESETS else next(iter(PRESETS))
KERAS_HUB_CHOICE = f"{KERAS_HUB_PREFIX}…"
WEIGHTS_FILE_CHOICE = "weights file…"
SOURCE_PATH_CHOICE = "folder or .npz file…"
LAYERS_MODE, BLOCK_MODE = "last N layers", "backbone block"


def wkey(key: str, part: str = "") -> str:
    return f"cfg:{key}:{part}" if part else f"cfg:{key}"


# ---- backbone facts (a static table in tlkit.config: no Keras in this process) ----


def backbone_names() -> list[str]:
    """The built-in backbones (`tlkit.config.LOCAL_BACKBONES`)."""
    return list(LOCAL_BACKBONES)


def block_names(backbone: str) -> list[str] | None:
    """A built-in backbone's block names in layer order; None for keras-hub ones (a text box is shown)."""
    blocks = BACKBONE_BLOCKS.get(backbone)
    return list(blocks) if blocks else None


# ---- the config form ------------------------------------------------------------


def _seed_backbone(value: str) -> None:
    if value in backbone_names():
        st.session_state[wkey("model.backbone", "choice")] = value
    else:
        st.session_state[wkey("model.backbone", "choice")] = KERAS_HUB_CHOICE
        st.session_state[wkey("model.backbone", "hub")] = value.removeprefix(KERAS_HUB_PREFIX)


def _render_backbone(widget: forms.WidgetSpec) -> str:
    choice = st.selectbox(widget.label, [*backbone_names(), KERAS_HUB_CHOICE], help=widget.help,
                          key=wkey(widget.key, "choice"))
    if choice != KERAS_HUB_CHOICE:
        return choice
    hub = st.text_input("keras-hub preset or local preset dir", key=wkey(widget.key, "hub"),
                        placeholder="resnet_50_imagenet")
    return f"{KERAS_HUB_PREFIX}{hub.strip()}"


def _seed_weights(value: str) -> None:
    choice = value if value in ("imagenet", "none") else WEIGHTS_FILE_CHOICE
    st.session_state[wkey("model.weights", "choice")] = choice
    st.session_state[wkey("model.weights", "path")] = "" if choice != WEIGHTS_FILE_CHOICE else value


def _render_weights(widget: forms.WidgetSpec) -> str:
    choice = st.selectbox(widget.label, ["imagenet", "none", WEIGHTS_FILE_CHOICE], help=widget.help,
                          key=wkey(widget.key, "choice"))
    if choice != WEIGHTS_FILE_CHOICE:
        return choice
    return st.text_input("Weights file (.weights.h5)", key=wkey(widget.key, "path")).strip()


def _unfreeze_spec(value: Any) -> UnfreezeSpec | None:
    """`UnfreezeSpec.parse`, or None for text it rejects (the config's validation reports it)."""
    try:
        return UnfreezeSpec.parse(value)
    except ConfigError:
        return None


def _seed_unfreeze(value: str) -> None:
    spec = _unfreeze_spec(value)
    layers = spec is not None and spec.is_count
    text = "" if layers else str(value).strip()
    st.session_state[wkey("finetune.unfreeze", "mode")] = LAYERS_MODE if layers else BLOCK_MODE
    st.session_state[wkey("finetune.unfreeze", "layers")] = spec.count if layers else 16
    st.session_state[wkey("finetune.unfreeze", "block")] = text
    st.session_state[wkey("finetune.unfreeze", "text")] = text


def _render_unfreeze(widget: forms.WidgetSpec, backbone: str) -> str:
    value = _unfreeze_value(widget, backbone)
    spec = _unfreeze_spec(value)
    if spec is not None:
        st.caption(f"Unfreezes: {spec.describe()}")
    return value


def _unfreeze_value(widget: forms.WidgetSpec, backbone: str) -> str:
    mode = st.radio(widget.label, [LAYERS_MODE, BLOCK_MODE], horizontal=True, help=widget.help,
                    key=wkey(widget.key, "mode"))
    if mode == LAYERS_MODE:
        layers = st.number_input("Layers from the end", min_value=0, step=1, key=wkey(widget.key, "layers"))
        return str(int(layers))
    blocks = block_names(backbone)
    if not blocks:
        return st.text_input("Block or stage name", key=wkey(widget.key, "text"),
                             placeholder="conv5 or conv5_block3",
                             help="No block list for this backbone (keras-hub backbones are only known "
                                  "once built); type a block or stage name.").strip()
    current = st.session_state.get(wkey(widget.key, "block")) or ""
    options = blocks if current in blocks or not current else [current, *blocks]
    if current not in options:
        st.session_state[wkey(widget.key, "block")] = options[-1]
    return st.selectbox(f"Block of {backbone} (it and everything after it)", options,
                        key=wkey(widget.key, "block"))


def _seed_source(value: str) -> None:
    builtin = value in DataConfig.BUILTINS
    st.session_state[wkey("data.source", "choice")] = value if builtin else SOURCE_PATH_CHOICE
    st.session_state[wkey("data.source", "path")] = "" if builtin else value


def _render_source(widget: forms.WidgetSpec) -> str:
    choice = st.selectbox("Dataset", [*DataConfig.BUILTINS, SOURCE_PATH_CHOICE], help=widget.help,
                          key=wkey(widget.key, "choice"))
    value = choice
    if choice == SOURCE_PATH_CHOICE:
        value = st.text_input("Folder (one subfolder per class) or .npz file", key=wkey(widget.key, "path"),
                              placeholder="/data/photos").strip()
    if value:
        st.caption(source_preview(value))
    return value


@st.cache_data(show_spinner=False, ttl=10)
def source_preview(source: str) -> str:
    """One line on what the source holds (classes and image counts), read without decoding."""
    from tlkit.data import describe_source

    info = describe_source(DataConfig(source=source))
    if "error" in info:
        return f"⚠ {info['error']}"
    names, counts = info["class_names"], info["counts"]
    shown = [f"{name} ({count})" for name, count in zip(names, counts)] if counts else list(names)
    more = f", … {len(names) - 12} more" if len(names) > 12 else ""
    total = f", {sum(counts):,} images" if counts else ""
    return f"{info['kind']}: {len(names)} classes{total}: {', '.join(shown[:12])}{more}"


# Fields drawn by several widgets: how to seed them, and which widget key shows they are seeded.
CUSTOM_SEEDS = {"model.backbone": _seed_backbone, "model.weights": _seed_weights,
                "finetune.unfreeze": _seed_unfreeze, "data.source": _seed_source}
CUSTOM_PROBES = {"model.backbone": "choice", "model.weights": "choice", "finetune.unfreeze": "mode",
                 "data.source": "choice"}


def _seed(widget: forms.WidgetSpec, value: Any) -> None:
    """Writes a config value into the widget state that will show it."""
    if widget.key in CUSTOM_SEEDS:
        CUSTOM_SEEDS[widget.key](value)
        return
    if widget.kind == "text":
        value = "" if value is None else str(value)
    elif widget.kind == "slider":
        value = float(value)
    st.session_state[wkey(widget.key)] = value


def _render_generic(widget: forms.WidgetSpec) -> Any:
    key = wkey(widget.key)
    if widget.kind == "checkbox":
        return st.checkbox(widget.label, help=widget.help, key=key)
    if widget.kind == "selectbox":
        return st.selectbox(widget.label, widget.options, help=widget.help, key=key)
    if widget.kind == "slider":
        return st.slider(widget.label, min_value=widget.min_value, max_value=widget.max_value,
                         step=widget.step, help=widget.help, key=key)
    if widget.kind == "log":
        options = forms.log_options(widget, st.session_state.get(key))
        return st.select_slider(widget.label, options, format_func=forms.format_log, key=key,
                                help=f"{widget.help} (log scale)")
    if widget.kind == "number":
        # No min/max here: Streamlit would silently keep the old value; the range is checked
        # by `forms.field_problems`, which says what is wrong next to the field.
        return st.number_input(widget.label, step=widget.step, format=widget.format, help=widget.help,
                               key=key, placeholder="none" if widget.optional else None)
    return st.text_input(widget.label, help=widget.help, key=key,
                         placeholder="none" if widget.optional else "")


def _seed_all(values: dict[str, Any]) -> None:
    st.session_state["draft"] = dict(values)
    for widget in forms.widget_specs():
        _seed(widget, values[widget.key])


def load_preset(preset: str | None = None) -> None:
    """Switches the form to a preset (the preset selector's on_change); the user's edits to
    fields the preset does not define are kept (`forms.switch_preset`)."""
    preset = preset or st.session_state.get(wkey("preset")) or DEFAULT_PRESET
    draft = st.session_state.get("draft") or forms.preset_values(preset)
    values = forms.switch_preset(draft, draft.get("preset") or preset, preset)
    _seed_all(offline.machine_defaults(values))


def config_values(config: dict | None) -> dict[str, Any] | None:
    """A run's stored config.json as flat form values; None when it is missing or unreadable."""
    if not config:
        return None
    try:
        parsed = Config.from_dict(config)
    except (ConfigError, TypeError, KeyError):
        return None
    return {spec.key: spec.get(parsed) for spec in field_specs(Config)}


def last_run_values(runs_dir) -> tuple[dict[str, Any], str] | None:
    """The flat config of the newest run in the runs dir (what the form restarts from), and its id."""
    for summary in tables.newest_first(tables.summarise_all(runs_dir))[:20]:
        if (values := config_values(summary.config)) is not None:
            return values, summary.run_id
    return None


def clone_into_form(summary: tables.RunSummary) -> bool:
    """Loads a run's config (and backend) into the Launch form, to edit and launch as a new run.

    Returns False when the run has no readable config. The Launch page reseeds its widgets from
    the draft on its next run (`_ensure_state`); this page must not touch them (they are not drawn here).
    """
    values = config_values(summary.config)
    if values is None:
        return False
    values["preset"] = values.get("preset") if values.get("preset") in PRESETS else DEFAULT_PRESET
    st.session_state["draft"] = values
    st.session_state["form:reseed"] = True
    st.session_state["form:started_from"] = (f"The form is a copy of **{summary.label}** (`{summary.run_id}`); "
                                             "edit it and Launch to start a new run.")
    if summary.backend in forms.installed_backends():
        st.session_state["cfg:backend"] = summary.backend
    return True


def _ensure_state(runs_dir) -> None:
    """Seeds widget state: from the draft (back from another page), else from the newest run in the
    runs dir (a reload or a new tab shows what was last launched), else from the default preset."""
    if "draft" not in st.session_state:
        last = last_run_values(runs_dir) if runs_dir is not None else None
        values, source = (last[0], last[1]) if last else (forms.preset_values(DEFAULT_PRESET), None)
        values["preset"] = values.get("preset") if values.get("preset") in PRESETS else DEFAULT_PRESET
        st.session_state["form:started_from"] = f"The form starts from the newest run, `{source}`." if source \
            else None
        st.session_state[wkey("preset")] = values["preset"]
        _seed_all(offline.machine_defaults(values))
        return
    draft = st.session_state["draft"]
    if st.session_state.pop("form:reseed", False):  # "Clone into form" on the Runs page
        st.session_state[wkey("preset")] = draft["preset"]
        _seed_all(draft)
        return
    if wkey("preset") not in st.session_state:
        st.session_state[wkey("preset")] = draft.get("preset") or DEFAULT_PRESET
    for widget in forms.widget_specs():
        if wkey(widget.key, CUSTOM_PROBES.get(widget.key, "")) not in st.session_state:
            _seed(widget, draft[widget.key])


def preset_and_backend() -> tuple[str, str]:
    """The preset selector (outside the form: picking one reseeds it) and the backend."""
    backends = forms.installed_backends() or ["jax"]
    if "cfg:backend" not in st.session_state:
        env_backend = os.environ.get("KERAS_BACKEND")
        st.session_state["cfg:backend"] = env_backend if env_backend in backends else backends[0]
    left, right, note = st.columns([1, 1, 2], vertical_alignment="bottom")
    preset = left.selectbox("Preset", list(PRESETS), key=wkey("preset"), on_change=load_preset,
                            help="Sets the fields the preset defines; your other edits are kept.")
    backend = right.selectbox("Backend", backends, key="cfg:backend",
                              help="Keras backend for the training process (only installed ones).")
    note.caption(forms.preset_note(preset))
    return preset, backend


class FormResult:
    """What the config form returns: the applied values, per-field problems, which button was pressed."""

    def __init__(self, values: dict[str, Any], problems: dict[str, str], launch: bool):
        self.values, self.problems, self.launch = values, problems, launch


def config_form(runs_dir=None) -> tuple[FormResult, str]:
    """Preset, backend and every config field in one `st.form`; returns (result, backend).

    Edits are batched: typing reruns nothing until Enter, **Apply** or **Launch**. Each problem
    is shown under its field, and **Launch** is disabled while there is one.
    """
    _ensure_state(runs_dir)
    preset, backend = preset_and_backend()
    if started_from := st.session_state.get("form:started_from"):
        st.caption(started_from)
    values: dict[str, Any] = {"preset": preset}
    slots: dict[str, Any] = {}
    widgets = forms.widget_specs()
    with st.form("config", enter_to_submit=True, border=False):
        name_widget = next(w for w in widgets if w.key == "name")
        values["name"] = _render_generic(name_widget)
        slots["name"] = st.empty()
        for group, caption in forms.groups():
            members = [w for w in widgets if forms.group_of(w.key) == group and w.key != "name"]
            if not members:
                continue
            title = group.capitalize() if group else "Run"
            with st.expander(f"**{title}** — {caption}", expanded=group in EXPANDED_GROUPS):
                columns = st.columns(3)
                for index, widget in enumerate(members):
                    with columns[index % 3]:
                        values[widget.key] = _render_field(widget, values)
                        slots[widget.key] = st.empty()  # its problem, if any, once all values are known
        problems = forms.field_problems(values)
        for key, message in problems.items():
            (slots.get(key) or st).error(message, icon=":material/error:")
        for warning in offline.download_warnings(values):
            st.warning(warning, icon=":material/cloud_download:")
        apply_col, launch_col, hint = st.columns([1, 1, 4], vertical_alignment="center")
        # The first submit button is what Enter presses: Apply, never Launch.
        apply_col.form_submit_button("Apply", icon=":material/check:", key="apply")
        launch = launch_col.form_submit_button("Launch", icon=":material/rocket_launch:", type="primary",
                                               disabled=bool(problems), key="launch")
        hint.caption("Edits apply on Enter, Apply or Launch."
                     + (" Launch is disabled until the fields marked in red are fixed." if problems else ""))
    st.session_state["draft"] = {**st.session_state.get("draft", {}), **values}
    return FormResult(values, problems, launch), backend


EXPANDED_GROUPS = ("data", "model", "head", "finetune")


def _render_field(widget: forms.WidgetSpec, values: dict[str, Any]) -> Any:
    if widget.key == "data.source":
        return _render_source(widget)
    if widget.key == "model.backbone":
        return _render_backbone(widget)
    if widget.key == "model.weights":
        return _render_weights(widget)
    if widget.key == "finetune.unfreeze":
        return _render_unfreeze(widget, values.get("model.backbone") or "")
    return _render_generic(widget)


# ---- live strip -----------------------------------------------------------------


def _last_metrics(history: list[dict]) -> str:
    if not history:
        return ""
    row = history[-1]
    parts = [f"{name} {row[name]:.4f}" for name in ("loss", "accuracy", "val_loss", "val_accuracy")
             if isinstance(row.get(name), float)]
    return " · ".join(parts)


def progress_line(summary: tables.RunSummary) -> str:
    status = summary.status
    if summary.state == "queued":
        return "waiting for the queue worker"
    stage, epoch, epochs = status.get("stage"), status.get("epoch"), status.get("epochs")
    eta = status.get("eta_s")  # of the stage or the running activity; None until measurable
    elapsed = status.get("elapsed_s")
    parts = [f"stage **{stage}**" if stage else "", f"epoch {epoch}/{epochs}" if epochs else "",
             status.get("activity") or "",  # e.g. "features (train) 40%" while a cache is computed
             f"{tables.format_duration(elapsed)} in" if isinstance(elapsed, (int, float)) and elapsed > 0 else "",
             f"~{tables.format_duration(eta)} left" if isinstance(eta, (int, float)) and eta > 0 else ""]
    return " · ".join(part for part in parts if part) or "starting…"


def card_key(run_id: str) -> str:
    """The card's key; Streamlit turns it into the CSS class `st-key-<key>` (used by the browser test)."""
    return "card-" + re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


def outcome(summary: tables.RunSummary) -> str:
    """A finished run in a few words: `✓ 85.20 %`, `failed`, `cancelled`."""
    if summary.state == "completed":
        accuracy = summary.test_accuracy
        return f"test accuracy {accuracy:.2%}" if accuracy is not None else "completed"
    return summary.state


def run_card(summary: tables.RunSummary, scope: str = "") -> None:
    """One run's live state, compact enough for the sidebar: progress, metrics, result or error, Cancel.

    `scope` keeps keys apart when a page shows a run that the sidebar's strip shows too.
    """
    prefix = f"{scope}:" if scope else ""
    with st.container(border=True, key=(f"{scope}-" if scope else "") + card_key(summary.run_id)):
        icon = tables.STATE_ICONS[summary.state]
        st.markdown(f"{icon} **{summary.label}** · {summary.state}"
                    f"{' · ' + summary.backend if summary.backend else ''}",
                    help=f"`{summary.run_id}`")
        if summary.state in ("queued", "running"):
            progress = summary.status.get("progress")
            progress = min(1.0, max(0.0, float(progress))) if isinstance(progress, (int, float)) else 0.0
            st.progress(progress, text=progress_line(summary))
            metrics = _last_metrics(summary.run.history())
            if metrics:
                st.caption(metrics)
            if st.button("Cancel", key=f"cancel:{prefix}{summary.run_id}", icon=":material/stop_circle:"):
                st.toast(launcher.cancel_run(summary.run))
        elif summary.state == "completed":
            st.markdown(outcome(summary))
        if summary.state in ("cancelled", "stopped"):  # stopped: ended early by a sweep's scheduler
            st.caption(f"{summary.state}{': ' + summary.error if summary.error else ''}; its history is kept.")
        elif summary.error and summary.state != "completed":
            st.error(forms.error_for_form(summary.error, summary.error_field))


FINISHED_SHOWN = 8


@st.fragment(run_every=2)
def live_strip(runs_dir) -> None:
    """The sidebar's live view, rebuilt from the runs dir every 2 s (so a reload or a second tab
    shows the same): queue and worker line, queued and running runs newest first, and the
    latest finished runs folded in an expander, under a line that says how the last one ended."""
    summaries = tables.newest_first(tables.summarise_all(runs_dir))
    live = [s for s in summaries if s.state in ("queued", "running")]
    finished = [s for s in summaries if s.state not in ("queued", "running")]
    _queue_line(runs_dir, live)
    if not live:
        st.caption("Nothing queued or running.")
    for summary in live:
        run_card(summary)
    if finished:
        last = finished[0]
        st.caption(f"Finished · {len(finished)} · last: {last.label}, {outcome(last)}")
        # A constant label: a changing one would make a new expander, closed again, every refresh.
        with st.expander("Finished runs", key="finished"):
            for summary in finished[:FINISHED_SHOWN]:
                run_card(summary)
            if len(finished) > FINISHED_SHOWN:
                st.caption(f"{len(finished) - FINISHED_SHOWN} older runs are on the Runs page.")


def _queue_line(runs_dir, live: list[tables.RunSummary]) -> None:
    """Queue length and workers; offers to restart a worker if runs wait without one."""
    queued = sum(s.state == "queued" for s in live)
    workers = run_queue.active_workers(runs_dir) if runs_dir.is_dir() else []
    st.caption(f"Queue: {queued} queued · {len(live) - queued} running · "
               f"{'worker pid ' + ', '.join(map(str, workers)) if workers else 'no worker'}")
    # After a reboot (or a killed worker) queued runs wait for nobody.
    if queued and not workers and st.button("Start queue worker", key="start-worker"):
        launcher.ensure_worker(runs_dir, st.session_state.get("max_concurrent", 1))


# ---- run details ----------------------------------------------------------------


def run_details(summary: tables.RunSummary, best: dict[str, str] | None = None) -> None:
    """One run: its state and error, actions (resume, clone, downloads), then tabs for the live
    log, the user's title/tags/notes and the stored status and config (safe on broken runs)."""
    run = summary.run
    marks = tables.best_marks(summary, best or {})
    st.markdown(f"**{summary.label}** · `{run.run_id}` · {tables.STATE_ICONS[summary.state]} {summary.state}"
                + (f" · :orange[{marks}]" if marks else ""))
    if summary.state in ("cancelled", "stopped"):
        st.info(f"{summary.state}{': ' + summary.error if summary.error else ''}; its history is kept.")
    elif summary.error:
        st.error(f"{summary.state}: {forms.error_for_form(summary.error, summary.error_field)}")
    run_actions(summary)
    log_tab, notes_tab, status_tab, config_tab = st.tabs(
        [":material/article: Log", ":material/edit_note: Title, tags & notes", ":material/info: status.json",
         ":material/settings: config.json"])
    with log_tab:
        log_view(run, live=summary.state in ("queued", "running"))
    with notes_tab:
        annotation_form(summary)
    with status_tab:
        st.json(summary.status, expanded=True)
    with config_tab:
        if summary.config is None:
            st.warning("config.json is missing or unreadable.")
        else:
            st.json(summary.config, expanded=True)


# What a run can be downloaded as, when the file exists: (file, MIME type).
DOWNLOADS = ((runs.MODEL_FILE, "application/octet-stream"), (runs.CONFIG_FILE, "application/json"),
             (runs.METRICS_FILE, "application/json"))


def run_actions(summary: tables.RunSummary) -> None:
    """Resume (when there is something to resume), Clone into form, and a download per stored file."""
    run = summary.run
    resumable = summary.state in ("crashed", "failed", "cancelled") and (
        summary.status.get("completed_stages") or summary.state == "crashed")
    with st.container(horizontal=True, vertical_alignment="center", key=f"actions-{card_key(run.run_id)}"):
        if resumable and st.button("Resume", key=f"resume:{run.run_id}", icon=":material/replay:",
                                   help="Queue it again; the trainer continues after its last finished "
                                        "stage (--existing-run DIR --resume)."):
            st.toast(launcher.resume_run(run))
            launcher.ensure_worker(run.path.parent, st.session_state.get("max_concurrent", 1))
        if st.button("Clone into form", key=f"clone:{run.run_id}", icon=":material/content_copy:",
                     disabled=summary.config is None, help="Open the Launch form with this run's config; "
                     "edit it and Launch a new run (this one stays as it is)."):
            if clone_into_form(summary):
                st.switch_page("views/launch.py")
            st.error("This run's config.json cannot be read into the form.")
        for name, mime in DOWNLOADS:
            path = run.file(name)
            if path.is_file():
                # A callable: the file (a model can be 100 MB) is read only when the button is pressed.
                st.download_button(name, data=path.read_bytes, file_name=f"{run.run_id}-{name}", mime=mime,
                                   key=f"download:{name}:{run.run_id}", icon=":material/download:",
                                   on_click="ignore")


LOG_TAIL_CHARS = 20_000


def log_view(run: runs.Run, live: bool) -> None:
    """train.log's tail, wrapped and without native start-up noise; re-read every 2 s while the run
    is queued or running."""
    def show() -> None:
        log = tables.clean_log(run.log_tail(LOG_TAIL_CHARS)).strip("\n")
        if not log:
            st.caption("train.log is empty or missing.")
            return
        st.caption(f"train.log (last {LOG_TAIL_CHARS:,} characters)" if len(log) >= LOG_TAIL_CHARS - 1000
                   else "train.log")
        st.code(log, language=None, wrap_lines=True, height=420)

    st.fragment(show, run_every=2 if live else None, key=f"log:{run.run_id}")()


def split_tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def annotation_form(summary: tables.RunSummary) -> None:
    """Title, tags and notes, stored in the run directory (annotations.json) by `Run.annotate`."""
    run, current = summary.run, summary.annotations
    with st.form(f"annotate:{run.run_id}", border=False):
        title = st.text_input("Title", value=current["title"] or "", max_chars=120, key=f"title:{run.run_id}",
                              placeholder=summary.name or run.run_id,
                              help="Shown instead of the run id in lists, the live strip and legends.")
        tags = st.text_input("Tags", value=", ".join(current["tags"]), key=f"tags:{run.run_id}",
                             placeholder="baseline, aug", help="Comma-separated labels; filter by them above.")
        notes = st.text_area("Notes", value=current["notes"], max_chars=20_000, key=f"notes:{run.run_id}")
        saved = st.form_submit_button("Save", icon=":material/save:", key=f"save-notes:{run.run_id}")
    if saved:
        try:
            run.annotate(title=title, tags=split_tags(tags), notes=notes)
        except ValueError as error:
            st.error(str(error))
            return
        st.session_state["flash"] = f"Saved the title, tags and notes of {run.run_id}."
        st.rerun()


def delete_control(summary: tables.RunSummary) -> None:
    """Delete with a confirmation step; a running run must be cancelled first."""
    pending_key = "pending_delete"
    if st.session_state.get(pending_key) != summary.run_id:
        if st.button("Delete this run…", key=f"delete:{summary.run_id}"):
            st.session_state[pending_key] = summary.run_id
            st.rerun()
        return
    st.warning(f"Delete `{summary.run_id}` and all its files? This cannot be undone.")
    yes, no = st.columns(2)
    if yes.button("Yes, delete", type="primary", key=f"confirm-delete:{summary.run_id}"):
        st.session_state.pop(pending_key, None)
        try:
            runs.delete_run(summary.run)
        except (RuntimeError, OSError) as error:
            st.error(str(error))
            return
        st.session_state["compare_ids"] = [i for i in st.session_state.get("compare_ids", [])
                                           if i != summary.run_id]
        st.session_state["flash"] = f"Deleted {summary.run_id}."
        st.rerun()
    if no.button("Keep it", key=f"keep:{summary.run_id}"):
        st.session_state.pop(pending_key, None)
        st.rerun()
