"""Compare page: curves, confusion matrices, per-class metrics, hyperparameters, mistakes."""

import streamlit as st

from explorer import figures, forms, session, tables

runs_dir = session.runs_dir()
st.title("Compare runs")

summaries = tables.summarise_all(runs_dir)
by_id = {s.run_id: s for s in summaries}
if not summaries:
    st.info(f"No runs in `{runs_dir}` yet.")
    st.stop()

completed = [s.run_id for s in summaries if s.state == "completed"]
wanted = [i for i in st.session_state.get("compare_ids", []) if i in by_id] or completed[:2]
if "compare:runs" not in st.session_state or st.session_state.get("compare:synced") != wanted:
    # Follow the Runs page's selection when it changes; otherwise keep this page's own choice.
    st.session_state["compare:runs"] = wanted
    st.session_state["compare:synced"] = wanted
selected = st.multiselect("Runs to compare", list(by_id), key="compare:runs",
                          format_func=lambda i: f"{by_id[i].label} · {by_id[i].state}"
                          + (f" ({i})" if by_id[i].label != i else ""))
chosen = [by_id[i] for i in selected]
label = tables.distinct_labels(chosen)  # run id → its name in legends and titles
for summary in chosen:
    if summary.state in ("failed", "unknown") or (summary.error and summary.state not in ("cancelled", "stopped")):
        reason = summary.error or "no error recorded"
        with st.expander(f":orange[:material/warning:] {summary.label} is {summary.state}: {reason}"):
            st.code(tables.clean_log(summary.run.log_tail()) or "(no train.log)", language=None)

curves_tab, confusion_tab, per_class_tab, params_tab = st.tabs(
    [":material/show_chart: Curves", ":material/grid_on: Confusion & mistakes",
     ":material/bar_chart: Per class", ":material/tune: Hyperparameters"])

with curves_tab:
    histories = {label[s.run_id]: s.run.history() for s in chosen}
    without = [s for s in chosen if not histories[label[s.run_id]]]
    histories = {name: rows for name, rows in histories.items() if rows}
    axis_col, smooth_col, lr_col = st.columns([1, 1, 1], vertical_alignment="bottom")
    x_axis = axis_col.radio("x axis", ["epoch", "wall clock"], horizontal=True, key="curves:x")
    smoothing = smooth_col.slider("Smoothing", 0.0, 0.9, 0.0, 0.1, key="curves:smooth",
                                  help="Exponential moving average of loss and accuracy (0: raw).")
    show_lr = lr_col.checkbox("Learning rate", value=True, key="curves:lr")
    if histories:
        st.plotly_chart(figures.curves_figure(histories, "time" if x_axis == "wall clock" else "epoch",
                                              smoothing, show_lr), key="curves")
        st.caption("Solid: training, dashed: validation, dotted: learning rate. A dotted vertical line marks "
                   "each distinct head → finetune boundary (hover its label for the runs).")
    else:
        st.info("No epoch history for the selected runs yet.")
    if without:
        st.caption("No epochs recorded yet (not plotted): "
                   + ", ".join(f"{label[s.run_id]} ({s.state})" for s in without))

with_matrix = [(s, figures.as_matrix((s.metrics or {}).get("confusion_matrix"))) for s in chosen]
with_matrix = [(s, m) for s, m in with_matrix if m is not None]
sizes = {s.run_id: len(m) for s, m in with_matrix}

with confusion_tab:
    if not with_matrix:
        st.info("None of the selected runs has a confusion matrix (only completed runs do).")
    else:
        normalise = st.radio("Show", ["counts", "row-normalised"], horizontal=True, key="cm:mode") != "counts"
        st.caption("Click a cell to show its misclassified images below.")
        columns = st.columns(min(len(with_matrix), 3))
        for index, (summary, matrix) in enumerate(with_matrix):
            with columns[index % len(columns)]:
                accuracy = summary.test_accuracy
                title = label[summary.run_id] + (f" · acc {accuracy:.2%}" if accuracy is not None else "")
                event = st.plotly_chart(
                    figures.confusion_figure(matrix, summary.class_names, normalise, title),
                    key=f"cm:{summary.run_id}", on_select="rerun", selection_mode="points")
                cell = figures.selected_cell(event)
                if cell and st.session_state.get(f"cm:applied:{summary.run_id}") != cell:
                    # A new click: point the gallery at that cell (once, so the select boxes stay usable).
                    st.session_state[f"cm:applied:{summary.run_id}"] = cell
                    names = figures.class_labels(summary.class_names, len(matrix))
                    st.session_state["gallery:run"] = summary.run_id
                    st.session_state["gallery:true"] = names[cell[0]]
                    st.session_state["gallery:pred"] = names[cell[1]]

        if len(with_matrix) >= 2:
            st.markdown("**Difference between two runs**")
            labels = {s.run_id: label[s.run_id] for s, _ in with_matrix}
            left, right = st.columns(2)
            a_id = left.selectbox("A", list(labels), index=0, key="diff:a", format_func=labels.get)
            b_id = right.selectbox("B", list(labels), index=1, key="diff:b", format_func=labels.get)
            matrices = {s.run_id: (s, m) for s, m in with_matrix}
            (a, matrix_a), (b, matrix_b) = matrices[a_id], matrices[b_id]
            if matrix_a.shape != matrix_b.shape:
                st.warning("The two confusion matrices have different sizes.")
            else:
                st.plotly_chart(figures.difference_figure(matrix_a, matrix_b, b.class_names or a.class_names,
                                                          labels[a_id], labels[b_id]), key="cm:diff")

        st.markdown("**Misclassified test images**")
        gallery_ids = [s.run_id for s, _ in with_matrix]
        if st.session_state.get("gallery:run") not in gallery_ids:
            st.session_state["gallery:run"] = gallery_ids[0]
        run_col, true_col, pred_col = st.columns(3)
        run_id = run_col.selectbox("Run", gallery_ids, key="gallery:run",
                                   format_func=label.get)
        summary = by_id[run_id]
        names = figures.class_labels(summary.class_names, sizes[run_id])
        options = ["any", *names]
        for key in ("gallery:true", "gallery:pred"):
            if st.session_state.get(key) not in options:
                st.session_state[key] = "any"
        true_name = true_col.selectbox("True class", options, key="gallery:true")
        pred_name = pred_col.selectbox("Predicted class", options, key="gallery:pred")
        data = summary.run.misclassified()
        if data is None:
            st.info("This run has no misclassified.npz.")
        else:
            picks = figures.misclassified_subset(
                data, None if true_name == "any" else names.index(true_name),
                None if pred_name == "any" else names.index(pred_name))
            total = len(data.get("images", []))
            st.caption(f"{len(picks)} shown (most confident first) of {total} misclassified test images.")
            if picks:
                st.image([figures.enlarge(data["images"][i]) for i in picks], width=84, caption=[
                    f"{names[int(data['true'][i])]} → {names[int(data['predicted'][i])]} "
                    f"({float(data['confidence'][i]):.0%})" for i in picks])
            else:
                st.caption("No misclassified images for this cell.")

with per_class_tab:
    per_class = {label[s.run_id]: (s.metrics or {}).get("per_class") for s in chosen}
    per_class = {name: rows for name, rows in per_class.items() if isinstance(rows, list) and rows}
    if per_class:
        st.plotly_chart(figures.per_class_figure(per_class), key="per_class")
    else:
        st.info("No per-class metrics for the selected runs.")

METRICS = {"test accuracy": "test_accuracy", "macro F1": "macro_f1"}

with params_tab:
    done = [s for s in chosen if s.state == "completed" and s.test_accuracy is not None and s.config]
    if len(done) < 2:
        st.info("Select at least two completed runs above to compare their hyperparameters.")
    else:
        default, choices = tables.hyperparameter_axes(done)
        if any(key not in choices for key in st.session_state.get("params:axes", [])):
            st.session_state.pop("params:axes")  # the selection changed under the axes picked before
        axes_col, metric_col = st.columns([4, 1])
        axes = axes_col.multiselect("Axes", choices, default=default, key="params:axes",
                                    help="Default: the config fields that differ between these runs "
                                         "(limits, caches and paths left out).")
        metric_label = metric_col.selectbox("Metric", list(METRICS), key="params:metric")
        metric = METRICS[metric_label]
        points = [{**s.flat_config, "test_accuracy": s.test_accuracy, "macro_f1": s.macro_f1 or 0.0,
                   "run": s.run_id, "label": label[s.run_id]} for s in done]
        if axes:
            st.plotly_chart(figures.parallel_figure(points, axes, metric, metric_label), key="parallel")
        st.caption(f"The {len(done)} completed runs selected above.")
        if axes:
            field = st.selectbox("Field vs metric", axes, key="params:field")
            spec = forms.specs_by_key().get(field)
            log_x = spec is not None and forms.is_log_scale(spec)
            st.plotly_chart(figures.scatter_figure(points, field, metric, metric_label, log_x), key="scatter")
