"""Launch page: design a run from the config's fields, queue it (or a sweep), watch it."""

import streamlit as st

from explorer import forms, launcher, session, ui
from tlkit.config import ConfigError

runs_dir = session.runs_dir()
st.title("Launch an experiment")
st.caption("Every field comes from tlkit's config; a preset fills them all. Runs go to a queue "
           "worker that trains them one after another in the background (close the tab any time).")

values, backend = ui.config_form()
try:
    config = forms.build_config(values)
    problem = None
except ConfigError as error:
    config, problem = None, str(error)

if problem:
    st.error(f"Invalid config: {problem}")
else:
    with st.expander("config.json preview"):
        st.json(config.to_dict(), expanded=True)


def start(configs) -> None:
    queued = launcher.queue_many(runs_dir, configs, backend)
    launcher.ensure_worker(runs_dir, st.session_state.get("max_concurrent", session.max_concurrent()))
    st.session_state.setdefault("launched", []).extend(run.run_id for run in queued)
    names = ", ".join(f"`{run.run_id}`" for run in queued)
    st.success(f"Queued {len(queued)} run{'s' if len(queued) > 1 else ''}: {names}")


if st.button("Launch", icon=":material/rocket_launch:", type="primary", disabled=config is None,
             key="launch"):
    start([config])

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

ui.progress_panel(runs_dir)
