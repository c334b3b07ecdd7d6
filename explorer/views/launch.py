"""Launch page: design a run from the config's fields, queue it (or a sweep); the sidebar watches it."""

import streamlit as st

from explorer import forms, launcher, session, ui
from tlkit.config import ConfigError

runs_dir = session.runs_dir()
st.title("Launch an experiment")
st.caption("Every field comes from tlkit's config; a preset fills the fields it defines. Runs go to a "
           "queue worker that trains them one after another in the background (close the tab any time); "
           "the sidebar follows them.")


def start(configs) -> None:
    queued = launcher.queue_many(runs_dir, configs, backend)
    launcher.ensure_worker(runs_dir, st.session_state.get("max_concurrent", session.max_concurrent()))
    names = ", ".join(f"`{run.run_id}`" for run in queued)
    st.session_state.pop("form:started_from", None)  # the form is no longer "a copy of" a run
    st.session_state["launch:flash"] = f"Queued {len(queued)} run{'s' if len(queued) > 1 else ''}: {names}"
    st.rerun()  # the whole app, so the sidebar's live strip shows the new runs at once


result, backend = ui.config_form(runs_dir)
config = None if result.problems else forms.build_config(result.values)
if result.launch and config is not None:
    start([config])
if flash := st.session_state.pop("launch:flash", None):
    st.success(flash)
if config is not None:
    with st.expander("config.json preview"):
        st.json(config.to_dict(), expanded=True)

with st.expander("Sweep: queue a grid over up to two fields"):
    st.caption(f"Pick a field and {forms.MAX_SWEEP_VALUES} or fewer comma-separated values; "
               "every combination is queued with the form above as the base.")
    axes, sweep_problem = [], None
    for index in range(forms.MAX_SWEEP_AXES):
        left, right = st.columns([1, 2])
        key = left.selectbox(f"Field {index + 1}", ["—", *forms.sweepable_keys()], key=f"sweep:field:{index}")
        text = right.text_input(f"Values {index + 1}", key=f"sweep:values:{index}",
                                placeholder="e.g. 0.1, 0.3, 0.5", disabled=key == "—")
        if key != "—":
            try:
                axes.append((key, forms.parse_sweep_values(key, text)))
            except ConfigError as error:
                sweep_problem = str(error)
    grid = []
    if config is not None and axes and not sweep_problem:
        try:
            grid = forms.sweep_configs(config, axes)
        except ConfigError as error:
            sweep_problem = str(error)
    if sweep_problem:
        st.error(sweep_problem)
    elif grid:
        st.markdown("Runs: " + ", ".join(f"`{c.name}`" for c in grid))
    if st.button(f"Queue {len(grid)} runs", disabled=not grid, key="sweep:queue"):
        start(grid)
