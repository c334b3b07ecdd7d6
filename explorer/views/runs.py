"""Runs page: every run in the runs directory (explorer- or CLI-launched): filter by state, text or tag,
the best run per metric, select to compare; per run: log, title/tags/notes, clone, downloads, delete."""

import hashlib
import json

import streamlit as st

from explorer import session, tables, ui

runs_dir = session.runs_dir()
st.title("Runs")
if flash := st.session_state.pop("flash", None):
    st.success(flash)

summaries = tables.summarise_all(runs_dir)
if not summaries:
    st.info(f"No runs in `{runs_dir}` yet. Launch one on the Launch page or with `python -m tlkit.train`.")
    st.stop()

left, tags_col, middle, right, refresh = st.columns([2, 2, 2, 1.3, 0.5], vertical_alignment="bottom")
states = left.multiselect("State", list(tables.STATE_ICONS), key="runs:states", placeholder="all states")
tags = tags_col.multiselect("Tags", tables.all_tags(summaries), key="runs:tags", placeholder="any tags",
                            help="Runs carrying every tag picked (set a run's tags under Run details).")
text = middle.text_input("Title, name or id contains", key="runs:text")
order = right.selectbox("Sort", list(tables.SORTS), key="runs:sort")
refresh.button("", icon=":material/refresh:", help="Re-read the runs directory.")

best = tables.best_runs(summaries)  # among every completed run, not only the filtered ones
shown = tables.sort_summaries(tables.filter_summaries(summaries, states, text, tags), order)
frame, differing = tables.runs_table(shown, best)


STATE_COLORS = {"completed": "#1a7f37", "failed": "#cf222e", "crashed": "#cf222e", "unknown": "#bf8700",
                "running": "#0969da"}


def highlight(column):
    return ["background-color: rgba(255, 200, 0, 0.25)"] * len(column)


styled = frame.style.apply(highlight, subset=differing).map(
    lambda state: f"color: {STATE_COLORS[state]}" if state in STATE_COLORS else "", subset=["state"]).format(
    {"test acc": "{:.2%}", "macro F1": "{:.3f}"}, na_rep="")
by_all = {s.run_id: s for s in summaries}
best_line = " · ".join(f"best {name}: **{by_all[best[attribute]].label}**"
                       for attribute, name in tables.BEST_METRICS if attribute in best)
st.caption(f"{len(shown)} of {len(summaries)} runs. "
           + (f"★ {best_line} (among completed runs). " if best_line else "")
           + (f"Highlighted columns differ between them: {', '.join(differing)}. " if differing else "")
           + "Tick rows to compare them.")
selection_default = {"selection": {"rows": [i for i, s in enumerate(shown)
                                            if s.run_id in st.session_state.get("compare_ids", [])]}}
event = st.dataframe(styled, key="runs:table", on_select="rerun", selection_mode="multi-row",
                     hide_index=True, selection_default=selection_default, placeholder="",
                     column_config={"tags": st.column_config.ListColumn("tags"),
                                    "best": st.column_config.TextColumn("best", help="★: the best completed "
                                                                        "run at this metric")})
picked = [shown[i].run_id for i in event.selection.rows if i < len(shown)]
if picked:
    st.session_state["compare_ids"] = picked
    if st.button(f"Compare {len(picked)} selected run{'s' if len(picked) > 1 else ''} →", type="primary"):
        st.switch_page("views/compare.py")

st.subheader("Run details")
by_id = {s.run_id: s for s in shown}
if by_id:
    labels = {i: f"{s.label} · {s.state}" + (f" ({i})" if s.label != i else "") for i, s in by_id.items()}
    remembered = st.session_state.get("runs:detail_id")
    default = remembered if remembered in by_id else picked[0] if picked else next(iter(by_id))
    # Streamlit keeps drawing a selectbox's old labels when only format_func's output changes
    # (streamlit#13788), e.g. after a rename: a key per set of labels redraws it, on the same run.
    digest = hashlib.sha1(json.dumps(labels).encode()).hexdigest()[:10]
    run_id = st.selectbox("Run", list(by_id), index=list(by_id).index(default), key=f"runs:detail:{digest}",
                          format_func=labels.get)
    st.session_state["runs:detail_id"] = run_id
    summary = by_id[run_id]
    if summary.state in ("queued", "running"):
        ui.run_card(summary, scope="details")
    ui.run_details(summary, best)
    ui.delete_control(summary)
