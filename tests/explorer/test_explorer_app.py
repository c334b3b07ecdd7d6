"""AppTest checks of each page against fixture run directories (no browser, no training)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from streamlit.testing.v1 import AppTest

from explorer import forms, launcher, offline, ui
from tlkit import runs
from tlkit.config import BACKBONE_BLOCKS, PRESETS

from ..helpers import REPO
from .explorer_fixtures import APP, NATIVE_STARTUP_LINE, make_completed

TIMEOUT = 60


@pytest.fixture
def no_worker(monkeypatch):
    """Records worker starts instead of spawning one (queue behaviour is tested in test_worker)."""
    calls = []
    monkeypatch.setattr(launcher, "ensure_worker", lambda *args, **kwargs: calls.append(args))
    return calls


def app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def chart(at: AppTest, key: str) -> dict:
    """The plotly figure JSON of the chart with `key`."""
    for element in at.get("plotly_chart"):
        if element.key == key:
            return json.loads(element.proto.spec)
    raise AssertionError(f"no chart {key!r}; have {[e.key for e in at.get('plotly_chart')]}")


def chart_keys(at: AppTest) -> list[str]:
    return [element.key for element in at.get("plotly_chart")]


# ---- Launch ---------------------------------------------------------------------


def test_launch_form_is_generated_from_field_specs(runs_dir, no_worker):
    at = app().run()
    assert not at.exception
    kinds = ("selectbox", "slider", "select_slider", "number_input", "checkbox", "text_input", "radio")
    rendered = {element.key for kind in kinds for element in at.get(kind)}
    for widget in forms.widget_specs():
        if widget.key not in ui.CUSTOM_SEEDS:
            assert ui.wkey(widget.key) in rendered, widget.key
    assert ui.wkey("finetune.unfreeze", "mode") in rendered
    assert at.selectbox(key="cfg:preset").options == list(PRESETS)
    # The preset's values are the widget defaults, ranges come from the spec.
    dropout = at.slider(key="cfg:model.dropout")
    assert dropout.value == pytest.approx(PRESETS["smoke"]["model"]["dropout"])
    assert dropout.proto.max == pytest.approx(0.9)
    assert at.selectbox(key="cfg:model.backbone:choice").value == "mini_resnet"
    assert at.selectbox(key="cfg:backend").options == forms.installed_backends()
    assert not at.error
    assert at.button(key="launch").disabled is False
    assert "Nothing queued or running." in [c.value for c in at.caption]


def test_preset_sets_every_widget(runs_dir, no_worker):
    at = app().run()
    at.selectbox(key="cfg:preset").select("cpu").run()
    assert at.number_input(key="cfg:model.image_size").value == PRESETS["cpu"]["model"]["image_size"]
    assert at.selectbox(key="cfg:model.backbone:choice").value == "resnet50"
    assert at.selectbox(key="cfg:finetune.schedule").value == "cosine"
    assert at.radio(key="cfg:finetune.unfreeze:mode").value == ui.BLOCK_MODE
    # The block picker lists the backbone's blocks from tlkit.config's static table.
    picker = at.selectbox(key=ui.wkey("finetune.unfreeze", "block"))
    assert picker.value == "conv5" and picker.options == list(BACKBONE_BLOCKS["resnet50"])
    assert "Unfreezes: conv5 and every layer after it" in [c.value for c in at.caption]


def test_keras_hub_backbone_falls_back_to_a_text_box(runs_dir, no_worker):
    at = app().run()
    at.selectbox(key="cfg:preset").select("cpu").run()
    at.selectbox(key="cfg:model.backbone:choice").select(ui.KERAS_HUB_CHOICE)
    apply(at)
    at.text_input(key="cfg:model.backbone:hub").input("resnet_50_imagenet")
    apply(at)
    assert not at.exception
    assert not [b for b in at.get("selectbox") if b.key == ui.wkey("finetune.unfreeze", "block")]
    text = at.text_input(key=ui.wkey("finetune.unfreeze", "text"))
    assert text.value == "conv5"
    text.input("stage4")
    apply(at)
    assert "Unfreezes: stage4 and every layer after it" in [c.value for c in at.caption]
    at.radio(key=ui.wkey("finetune.unfreeze", "mode")).set_value(ui.LAYERS_MODE)
    apply(at)
    assert at.number_input(key=ui.wkey("finetune.unfreeze", "layers")).value == 16
    assert "Unfreezes: last 16 layers" in [c.value for c in at.caption]


def test_data_source_picker_previews_classes_and_counts(runs_dir, no_worker, tmp_path):
    from PIL import Image

    for name, count in (("cats", 3), ("dogs", 2)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for index in range(count):
            Image.new("RGB", (12, 9), (index * 40, 90, 10)).save(tmp_path / "photos" / name / f"{index}.png")
    at = app().run()
    assert at.selectbox(key=ui.wkey("data.source", "choice")).value == "fashion_mnist"
    assert any(c.value.startswith("builtin: 10 classes: T-shirt/top") for c in at.caption)
    at.selectbox(key=ui.wkey("data.source", "choice")).select(ui.SOURCE_PATH_CHOICE)
    apply(at)
    at.text_input(key=ui.wkey("data.source", "path")).input(str(tmp_path / "photos"))
    at.text_input(key="cfg:data.data_dir").input("")  # a data dir is only for built-in datasets
    apply(at)
    assert not at.exception
    assert "folder: 2 classes, 5 images: cats (3), dogs (2)" in [c.value for c in at.caption]
    at.text_input(key=ui.wkey("data.source", "path")).input(str(tmp_path / "nowhere"))
    apply(at)
    assert any("is neither a built-in name nor an existing folder" in c.value for c in at.caption)


# The server must stay thin: importing the explorer and rendering every page never loads a Keras backend.
THIN_SERVER_CHECK = """
import sys
from streamlit.testing.v1 import AppTest
import explorer, explorer.figures, explorer.forms, explorer.launcher, explorer.offline, explorer.session
import explorer.tables, explorer.ui, explorer.worker

at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
at.selectbox(key="cfg:preset").select("cpu").run()  # resnet50: the block picker
for page in ("views/runs.py", "views/compare.py"):
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
at.switch_page("views/runs.py").run()
next(b for b in at.button if str(b.key).startswith("clone:")).click().run()  # the Launch form, from a run
assert not at.exception and any("is a copy of" in c.value for c in at.caption), at.exception
heavy = sorted(name for name in ("keras", "tensorflow", "jax", "torch", "keras_hub") if name in sys.modules)
assert not heavy, f"the explorer imported {heavy}"
print("thin")
"""


def test_explorer_never_imports_a_keras_backend(populated):
    result = subprocess.run([sys.executable, "-c", THIN_SERVER_CHECK, str(APP)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "thin" in result.stdout, result.stdout + result.stderr


def test_invalid_config_shows_config_error_and_blocks_launch(runs_dir, no_worker):
    at = app().run()
    at.number_input(key="cfg:head.warmup_epochs").set_value(3.0)
    apply(at)
    assert any(error.value.startswith("Head › Warmup epochs: 3.0 must be shorter than Head › Epochs")
               for error in at.error)
    assert at.button(key="launch").disabled is True


def test_out_of_range_value_is_named_next_to_the_field_and_blocks_launch(runs_dir, no_worker):
    at = app().run()
    at.number_input(key="cfg:data.train_limit").set_value(5)
    at.button(key="launch").click().run()  # Launch submits the form: refused, nothing queued
    assert not runs.list_runs(runs_dir)
    assert [e.value for e in at.error] == ["Data › Train limit: 5 is outside the allowed range [20, inf]"]
    assert at.number_input(key="cfg:data.train_limit").value == 5  # kept, not silently reverted
    assert at.button(key="launch").disabled is True
    at.number_input(key="cfg:data.train_limit").set_value(200)
    apply(at)
    assert not at.error and at.button(key="launch").disabled is False


def test_learning_rates_and_weight_decay_are_log_sliders(runs_dir, no_worker):
    at = app().run()
    rate = at.select_slider(key="cfg:head.learning_rate")
    assert rate.value == pytest.approx(PRESETS["smoke"]["head"]["learning_rate"])
    assert {1e-5, 1e-4, 1e-3, 1e-2} <= set(rate.options_values if hasattr(rate, "options_values") else
                                            map(float, rate.options))
    decay = at.select_slider(key="cfg:finetune.weight_decay")
    decay.set_value(0.05)
    at.selectbox(key="cfg:finetune.optimizer").select("adamw")
    at.button(key="launch").click().run()
    (run,) = runs.list_runs(runs_dir)
    assert run.config()["finetune"]["weight_decay"] == pytest.approx(0.05)


def test_launch_queues_a_run_and_shows_it(runs_dir, no_worker):
    at = app().run()
    at.slider(key="cfg:model.dropout").set_value(0.35)
    at.text_input(key="cfg:name").input("ui-run")
    at.button(key="launch").click().run()
    assert not at.exception
    (run,) = runs.list_runs(runs_dir)
    assert run.status()["state"] == "queued"
    assert run.status()["backend"] == at.selectbox(key="cfg:backend").value
    config = run.config()
    assert config["model"]["dropout"] == pytest.approx(0.35)
    assert config["name"] == "ui-run" and config["preset"] == "smoke"
    assert len(no_worker) == 1
    assert any(run.run_id in s.value for s in at.success)
    assert any("waiting for the queue worker" in (p.proto.text or "") for p in at.get("progress"))

    at.button(key=f"cancel:{run.run_id}").click().run()
    assert run.status()["state"] == "cancelled"


def test_sweep_queues_the_grid(runs_dir, no_worker):
    at = app().run()
    at.selectbox(key="sweep:field:0").select("model.dropout")
    at.selectbox(key="sweep:field:1").select("finetune.unfreeze").run()
    at.text_input(key="sweep:values:0").input("0.1, 0.3")
    at.text_input(key="sweep:values:1").input("conv2, 4").run()
    assert at.button(key="sweep:queue").label == "Queue 4 runs"
    at.button(key="sweep:queue").click().run()
    configs = [run.config() for run in runs.list_runs(runs_dir)]
    grid = sorted((c["model"]["dropout"], c["finetune"]["unfreeze"]) for c in configs)
    assert grid == [(0.1, "4"), (0.1, "conv2"), (0.3, "4"), (0.3, "conv2")]
    assert all(run.status()["state"] == "queued" for run in runs.list_runs(runs_dir))

    at.text_input(key="sweep:values:0").input("0.1, 0.2, 0.3, 0.4").run()
    assert any("at most 3 values" in error.value for error in at.error)
    assert at.button(key="sweep:queue").disabled is True


def test_form_starts_from_the_newest_run_and_presets_keep_other_edits(populated, no_worker):
    at = app().run()  # a new session (a reload, a second tab): the newest run's config
    assert at.text_input(key="cfg:name").value == "oom"
    assert any("starts from the newest run" in c.value for c in at.caption)
    at.text_input(key="cfg:name").input("mine")
    at.text_input(key="cfg:data.data_dir").input("/elsewhere")
    apply(at)
    at.selectbox(key="cfg:preset").select("cpu").run()
    assert at.text_input(key="cfg:name").value == "mine"  # not defined by presets: kept
    assert at.text_input(key="cfg:data.data_dir").value == "/elsewhere"
    assert at.number_input(key="cfg:data.train_limit").value is None  # smoke's limit goes with smoke
    assert at.number_input(key="cfg:model.image_size").value == PRESETS["cpu"]["model"]["image_size"]
    assert forms.preset_note("cpu") in [c.value for c in at.caption]


def test_offline_copy_fills_the_data_dir_else_a_download_is_announced(runs_dir, no_worker, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("TLKIT_SHARED_DIR", str(tmp_path / "no-shared"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras"))
    monkeypatch.delenv(offline.DATA_DIR_ENV, raising=False)
    at = app().run()
    at.selectbox(key="cfg:preset").select("cpu").run()
    assert at.text_input(key="cfg:data.data_dir").value == ""
    warnings = " ".join(w.value for w in at.warning)
    assert "Fashion-MNIST will be downloaded" in warnings and "Data › Data dir" in warnings
    assert "ImageNet ResNet50 weights will be downloaded" in warnings

    copy = tmp_path / "datasets" / "fashion-mnist"
    copy.mkdir(parents=True)
    (copy / "t10k-labels-idx1-ubyte.gz").write_bytes(b"")
    monkeypatch.setenv(offline.DATA_DIR_ENV, str(tmp_path / "datasets"))
    at = app().run()
    assert at.text_input(key="cfg:data.data_dir").value == str(copy.resolve())
    assert not [w for w in at.warning if "Fashion-MNIST" in w.value]


def test_live_strip_is_rebuilt_from_the_runs_dir_newest_first(populated, no_worker):
    smoke = forms.build_config(forms.preset_values("smoke"))
    older = launcher.queue_run(populated["a"].path.parent, smoke.replace(name="older"), backend="jax")
    newer = launcher.queue_run(populated["a"].path.parent, smoke.replace(name="newer"), backend="jax")
    for _ in range(2):  # two sessions (a reload, a second tab) show the same strip
        at = app().run()
        cards = [block.key for block in at.sidebar.get("flex_container") if str(block.key).startswith("card-")]
        assert cards[:2] == [ui.card_key(newer.run_id), ui.card_key(older.run_id)]
        assert any(c.value.startswith("Finished · 4 · last: ") for c in at.sidebar.caption)
        (finished,) = [e for e in at.sidebar.expander if e.label == "Finished runs"]
        assert "out of memory" in " ".join(e.value for e in finished.error)
    at.sidebar.button(key=f"cancel:{older.run_id}").click().run()
    assert older.status()["state"] == "cancelled"


def test_a_run_error_names_the_form_field_not_the_flag(runs_dir, no_worker):
    run = runs.create_run(runs_dir, "offline", state="queued")
    run.update_status(state="failed", error="downloading Fashion-MNIST through keras.datasets failed "
                                            "(URLError). Download the four IDX files and pass them with --data-dir")
    at = app().run()
    (error,) = [e.value for e in at.sidebar.error]
    assert "the field Data › Data dir (--data-dir)" in error  # no error_field (an older run): flags rewritten

    run.update_status(error="no local copy of Fashion-MNIST", error_field="data.data_dir")
    at = app().run()
    (error,) = [e.value for e in at.sidebar.error]
    assert error == "no local copy of Fashion-MNIST — set the field **Data › Data dir** in the form."


# ---- Runs -----------------------------------------------------------------------


def apply(at: AppTest) -> AppTest:
    """Submits the config form (its edits are batched until Enter, Apply or Launch)."""
    return at.button(key="apply").click().run()


def runs_page() -> AppTest:
    at = app().run()
    return at.switch_page("views/runs.py").run()


def run_picker(at: AppTest):
    """The Run details picker (its key changes with its labels, see explorer/views/runs.py)."""
    return next(box for box in at.selectbox if box.label == "Run")


def test_runs_table_lists_every_run_and_flags_differences(populated):
    at = runs_page()
    assert not at.exception
    frame = at.dataframe[0].value
    assert sorted(frame["run"]) == sorted(run.run_id for run in populated.values())
    states = dict(zip(frame["run"], frame["state"]))
    assert states[populated["a"].run_id].endswith("completed")
    assert states[populated["failed"].run_id].endswith("failed")
    assert states[populated["corrupt"].run_id].endswith("unknown")
    accuracy = dict(zip(frame["run"], frame["test acc"]))
    assert accuracy[populated["b"].run_id] == pytest.approx(populated["b"].metrics()["test_accuracy"])
    errors = dict(zip(frame["run"], frame["error"]))
    assert "out of memory" in errors[populated["failed"].run_id]
    assert "unreadable" in errors[populated["corrupt"].run_id]
    caption = " ".join(c.value for c in at.caption)
    assert "model.dropout" in caption and "finetune.unfreeze" in caption


def test_runs_filter_and_details_of_broken_runs(populated):
    at = runs_page()
    at.multiselect(key="runs:states").select("failed").run()
    assert list(at.dataframe[0].value["run"]) == [populated["failed"].run_id]
    assert any("ResourceExhaustedError" in error.value for error in at.error)
    (log,) = [code.value for code in at.code]  # the Log tab: train.log's tail, without native noise
    assert "ResourceExhaustedError" in log and NATIVE_STARTUP_LINE not in log and "oneDNN" not in log

    at.multiselect(key="runs:states").unselect("failed").select("unknown").run()
    assert not at.exception
    assert any("config.json is missing or unreadable" in w.value for w in at.warning)


def test_runs_page_shows_a_live_run_beside_the_strip(populated, runs_dir, no_worker):
    run = launcher.queue_run(runs_dir, forms.build_config(forms.preset_values("smoke")), backend="jax")
    at = runs_page()
    run_picker(at).select(run.run_id).run()
    assert not at.exception  # the same card in the page and in the sidebar, under different keys
    at.button(key=f"cancel:details:{run.run_id}").click().run()
    assert run.status()["state"] == "cancelled"


def test_delete_asks_for_confirmation(populated):
    at = runs_page()
    target = populated["a"]
    run_picker(at).select(target.run_id).run()
    at.button(key=f"delete:{target.run_id}").click().run()
    assert target.path.exists()
    assert any("cannot be undone" in w.value for w in at.warning)
    at.button(key=f"confirm-delete:{target.run_id}").click().run()
    assert not target.path.exists()
    assert any(f"Deleted {target.run_id}" in s.value for s in at.success)
    assert target.run_id not in list(at.dataframe[0].value["run"])


def test_titles_tags_notes_are_stored_in_the_run_and_shown_everywhere(populated):
    a, b = populated["a"], populated["b"]
    at = runs_page()
    best = dict(zip(at.dataframe[0].value["run"], at.dataframe[0].value["best"]))
    assert best[b.run_id] == "★ test acc, macro F1" and best[a.run_id] == ""
    run_picker(at).select(a.run_id).run()
    at.text_input(key=f"tags:{a.run_id}").input("x" * 41)
    at.button(key=f"save-notes:{a.run_id}").click().run()
    assert any("at most 40 characters" in e.value for e in at.error)  # Run.annotate's message
    at.text_input(key=f"title:{a.run_id}").input("dropout 0.2 baseline")
    at.text_input(key=f"tags:{a.run_id}").input("baseline, small")
    at.text_area(key=f"notes:{a.run_id}").input("val loss still falling")
    at.button(key=f"save-notes:{a.run_id}").click().run()
    assert a.annotations() == {"title": "dropout 0.2 baseline", "tags": ["baseline", "small"],
                               "notes": "val loss still falling"}
    frame = at.dataframe[0].value
    assert dict(zip(frame["run"], frame["title"]))[a.run_id] == "dropout 0.2 baseline"
    # The picker shows the new title at once, still on the same run (Streamlit would keep the old label).
    assert run_picker(at).value == a.run_id
    assert run_picker(at).options[list(frame["run"]).index(a.run_id)].startswith("dropout 0.2 baseline · ")
    assert any("**dropout 0.2 baseline**" in m.value for m in at.sidebar.markdown)  # the live strip's card
    at.multiselect(key="runs:tags").select("baseline").run()
    assert list(at.dataframe[0].value["run"]) == [a.run_id]
    at.switch_page("views/compare.py").run()
    names = {trace["name"] for trace in chart(at, "curves")["data"]}
    assert "dropout 0.2 baseline · train" in names


def test_clone_into_form_relaunches_with_edits_and_files_download(populated, no_worker):
    b = populated["b"]
    b.file(runs.MODEL_FILE).write_bytes(b"PK fake model")
    at = runs_page()
    run_picker(at).select(b.run_id).run()
    assert [e.proto.label for e in at.get("download_button")] == ["model.keras", "config.json", "metrics.json"]
    run_picker(at).select(populated["failed"].run_id).run()
    assert [e.proto.label for e in at.get("download_button")] == ["config.json"]  # only the files it has
    run_picker(at).select(b.run_id).run()
    at.button(key=f"clone:{b.run_id}").click().run()
    assert not at.exception
    assert at.slider(key="cfg:model.dropout").value == pytest.approx(0.4)  # beta's config, in the form
    assert at.text_input(key="cfg:name").value == "beta"
    assert any("is a copy of" in c.value and b.run_id in c.value for c in at.caption)
    at.slider(key="cfg:model.dropout").set_value(0.5)
    at.button(key="launch").click()
    at.switch_page("views/launch.py").run()  # AppTest reruns the page it was told, not st.switch_page's
    (new,) = [run for run in runs.list_runs(populated["a"].path.parent) if run.status()["state"] == "queued"]
    assert new.run_id != b.run_id and new.config()["model"]["dropout"] == pytest.approx(0.5)
    assert new.config()["finetune"]["unfreeze"] == "4" and b.config()["model"]["dropout"] == pytest.approx(0.4)


# ---- Compare --------------------------------------------------------------------


def compare_page(selected=None) -> AppTest:
    at = app()
    if selected is not None:
        at.session_state["compare_ids"] = selected
    at.run()
    return at.switch_page("views/compare.py").run()


def test_compare_renders_curves_confusion_and_summaries(populated):
    at = compare_page()
    assert not at.exception
    a, b = populated["a"].run_id, populated["b"].run_id
    assert sorted(at.multiselect(key="compare:runs").value) == sorted([a, b])
    assert {"curves", f"cm:{a}", f"cm:{b}", "cm:diff", "per_class", "parallel"} <= set(chart_keys(at))

    curves = chart(at, "curves")
    names = {trace["name"] for trace in curves["data"]}
    assert {"alpha · train", "alpha · val", "beta · train", "beta · val"} <= names
    assert any(a.get("text") == "head → finetune" for a in curves["layout"]["annotations"])
    assert any(shape.get("x0") == 1.5 for shape in curves["layout"]["shapes"])  # 1 head epoch + 0.5

    confusion = chart(at, f"cm:{a}")
    heatmap = confusion["data"][0]
    assert heatmap["type"] == "heatmap" and "Ankle boot" in heatmap["x"]
    assert heatmap["z"] == populated["a"].metrics()["confusion_matrix"]

    parallel = chart(at, "parallel")
    labels = [d["label"] for d in parallel["data"][0]["dimensions"]]
    assert "dropout" in labels and labels[-1] == "test accuracy"


def test_compare_normalised_and_gallery_filter(populated):
    at = compare_page([populated["a"].run_id])
    at.radio(key="cm:mode").set_value("row-normalised").run()
    z = chart(at, f"cm:{populated['a'].run_id}")["data"][0]["z"]
    assert all(abs(sum(row) - 1) < 1e-6 for row in z if sum(row))

    (gallery,) = at.image
    assert gallery.captions and all("→" in caption for caption in gallery.captions)
    at.selectbox(key="gallery:true").select("Trouser").run()
    captions = at.image[0].captions if at.image else []
    data = populated["a"].misclassified()
    expected = int((data["true"] == 1).sum())
    assert len(captions) == min(expected, 48)
    assert all(caption.startswith("Trouser →") for caption in captions)


def test_compare_survives_failed_and_corrupt_runs(populated):
    ids = [populated[name].run_id for name in ("a", "failed", "corrupt")]
    at = compare_page(ids)
    assert not at.exception
    labels = " ".join(expander.label for expander in at.expander)
    assert "failed" in labels and "out of memory" in labels
    assert "unknown" in labels
    # The failed run's partial history still plots; only the completed run has a confusion matrix.
    assert "curves" in chart_keys(at)
    assert [k for k in chart_keys(at) if k.startswith("cm:")] == [f"cm:{populated['a'].run_id}"]


def test_hyperparameters_follow_the_selection_and_the_picked_axes(populated, runs_dir):
    third = make_completed(runs_dir, "gamma", seed=2, model={"dropout": 0.3, "head_units": 32})
    at = compare_page([populated["a"].run_id, populated["b"].run_id])
    parallel = chart(at, "parallel")["data"][0]
    assert len(parallel["dimensions"][-1]["values"]) == 2  # only the two selected runs, not gamma
    assert at.multiselect(key="params:axes").value == ["model.dropout", "finetune.unfreeze"]
    assert "head units" not in [d["label"] for d in parallel["dimensions"]]
    at.multiselect(key="params:axes").select("model.head_units").run()
    labels = [d["label"] for d in chart(at, "parallel")["data"][0]["dimensions"]]
    assert labels == ["dropout", "unfreeze", "head units", "test accuracy"]
    scatter = chart(at, "scatter")["data"][0]
    assert sorted(scatter["x"]) == [0.2, 0.4] and set(scatter["text"]) == {"alpha", "beta"}
    at.multiselect(key="compare:runs").select(third.run_id).run()
    assert len(chart(at, "parallel")["data"][0]["dimensions"][-1]["values"]) == 3


def test_curves_note_runs_without_epochs_and_offer_time_smoothing_and_lr(populated, runs_dir):
    empty = launcher.queue_run(runs_dir, forms.build_config(forms.preset_values("smoke")).replace(name="fresh"),
                               backend="jax")
    at = compare_page([populated["a"].run_id, empty.run_id])
    assert any("No epochs recorded yet (not plotted): fresh (queued)" in c.value for c in at.caption)
    assert any(t["name"] == "alpha · lr" for t in chart(at, "curves")["data"])
    at.radio(key="curves:x").set_value("wall clock").run()
    assert chart(at, "curves")["layout"]["xaxis"]["title"]["text"] == "training time (s)"
    at.slider(key="curves:smooth").set_value(0.5).run()
    at.checkbox(key="curves:lr").uncheck().run()
    assert not any(t["name"].endswith(" · lr") for t in chart(at, "curves")["data"])


def test_empty_runs_dir_shows_hints(runs_dir, no_worker):
    at = app().run()
    at.switch_page("views/runs.py").run()
    assert any("No runs in" in info.value for info in at.info)
    at.switch_page("views/compare.py").run()
    assert any("No runs in" in info.value for info in at.info)


def test_sidebar_restarts_a_worker_for_waiting_runs(runs_dir, no_worker):
    launcher.queue_run(runs_dir, forms.build_config(forms.preset_values("smoke")), backend="jax")
    at = app().run()
    assert any("1 queued" in caption.value and "no worker" in caption.value for caption in at.sidebar.caption)
    at.sidebar.button(key="start-worker").click().run()
    assert len(no_worker) == 1
