"""Sweeps page: the sweeps of `python -m tlkit.sweep` in this runs directory: each trial (an ordinary
run, live from its run directory), the best trial, and the metric against each swept field."""

import pandas as pd
import streamlit as st

from explorer import figures, session, tables
from tlkit import sweep as sweeps

runs_dir = session.runs_dir()
st.title("Sweeps")

found = {s.sweep_id: s for s in sweeps.list_sweeps(runs_dir)}
records = {sweep_id: record for sweep_id, s in found.items() if (record := s.record()) and "spec" in record}
if not records:
    st.info(f"No sweeps in `{runs_dir}` yet. Start one with `python -m tlkit.sweep examples/sweep.toml` "
            "(add `--engine ray` for Ray Tune).")
    st.stop()

pick_col, refresh = st.columns([6, 0.5], vertical_alignment="bottom")
sweep_id = pick_col.selectbox("Sweep", list(records), key="sweeps:pick",
                              format_func=lambda i: f"{records[i]['name']} · {records[i]['state']} · {i}")
refresh.button("", icon=":material/refresh:", help="Re-read the sweep and its trials.")
record = records[sweep_id]
spec = sweeps.spec_from_record(record)
rows = found[sweep_id].trials(spec)  # live: the run directories, not sweep.json's last snapshot
metric = record["metric"]

scheduler = record["spec"].get("scheduler")
st.caption(f"`{sweep_id}` · {record['engine']} engine · {record['state']} · {len(rows)} of "
           f"{record['trials_planned']} trials started · {metric} ({record['mode']}) · search "
           f"{record['spec']['search']}" + (f" · ASHA (grace {scheduler['grace_period']}, "
                                            f"×{scheduler['reduction_factor']:g})" if scheduler else ""))
if record.get("error"):
    st.error(f"The sweep stopped: {record['error']}")

best = sweeps.best_trial(rows, record["mode"])
if best:
    st.success(f"Best: trial {best['trial']} ({sweeps.describe_params(best['params'])}): {metric} "
               f"{best['best_metric']:.4f} at epoch {best['best_epoch']} · run `{best['run_id']}` · {best['state']}")

keys = [axis.key for axis in spec.space]
frame = pd.DataFrame([{"trial": row["trial"], "state": row["state"], f"best {metric}": row["best_metric"],
                       "at epoch": row["best_epoch"], "epochs": row["epochs"], "test acc": row["test_accuracy"],
                       **{key: row["params"].get(key) for key in keys}, "run": row["run_id"],
                       "reason": row["error"] if row["state"] != "completed" else None} for row in rows])
if not frame.empty:
    st.dataframe(frame.style.format({f"best {metric}": "{:.4f}", "test acc": "{:.2%}"}, na_rep=""),
                 hide_index=True, key="sweeps:trials")
    states = ", ".join(f"{tables.STATE_ICONS.get(state, '')} {count} {state}"
                       for state, count in frame["state"].value_counts().items())
    st.caption(f"Trials by state: {states}. Each trial is a run on the Runs page (tags `sweep:{sweep_id}`, "
               "`trial:N`).")
    if st.button(f"Compare the {len(rows)} trials →", key="sweeps:compare"):
        st.session_state["compare_ids"] = [row["run_id"] for row in rows]
        st.switch_page("views/compare.py")

points = [{**row["params"], "best": row["best_metric"], "run": row["run_id"], "label": f"trial {row['trial']}"}
          for row in rows if row["best_metric"] is not None]
if points:
    st.subheader(f"Best {metric} against each swept field")
    columns = st.columns(min(len(spec.space), 2))
    for index, axis in enumerate(spec.space):
        with columns[index % len(columns)]:
            st.plotly_chart(figures.scatter_figure(points, axis.key, "best", f"best {metric}",
                                                   log_x=axis.kind == "loguniform"), key=f"sweeps:vs:{axis.key}")
else:
    st.info("No trial has finished an epoch yet.")
