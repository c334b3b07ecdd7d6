"""The CLI end to end: run directory contract, reload, failures, cancel and resume."""

import json
import os
import platform
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import tlkit
from tlkit import environment, runs
from tlkit.cli import build_parser, main
from tlkit.data import load_splits
from tlkit.evaluate import confusion_matrix
from tlkit.model import build_classifier
from tlkit.stages import RunCancelled

from .helpers import (
    SMOKE,
    checkpoint_epoch,
    only_run,
    run_cli,
    smoke_config,
    start_trainer,
)

FASHION = {"num_classes": 10, "input_shape": (28, 28, 1)}
# Largest difference of test probabilities, resumed vs uninterrupted run (docs/reliability.md).
RESUME_TOLERANCE = 1e-6  # measured: 0 on tensorflow, jax and torch


def test_cli_run_writes_the_whole_run_directory(synthetic_data_dir, tmp_path):
    runs_dir = tmp_path / "runs"
    # A team's umask (027): every file of the run gets the same mode from it, model.keras included.
    result = run_cli(*SMOKE, "--data-dir", str(synthetic_data_dir), "--runs-dir", str(runs_dir), "--name", "cli test",
                     "--head-epochs", "2", "--unfreeze", "conv4", umask=0o027)
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stderr.splitlines() if environment.NATIVE_NOISE.search(line)]
    run = only_run(runs_dir)
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in run.path.iterdir() if path.is_file()}
    assert set(modes.values()) == {"0o640"} and {"model.keras", "status.json", "misclassified.npz"} <= set(modes), modes
    assert f"run directory: {run.path}" in result.stdout and "test accuracy" in result.stdout
    assert "cli-test" in run.run_id
    config = run.config()
    assert config["preset"] == "smoke" and config["finetune"]["unfreeze"] == "conv4"
    status = run.status()
    assert status["state"] == "completed" and status["progress"] == 1.0 and status["error"] is None
    history = run.history()
    assert [(row["stage"], row["epoch"]) for row in history] == [("head", 1), ("head", 2), ("finetune", 1)]
    assert set(history[0]) == set(runs.HISTORY_COLUMNS)
    assert all(row["val_accuracy"] is not None and row["lr"] > 0 and row["seconds"] > 0 for row in history)
    metrics = run.metrics()
    for key in ("test_accuracy", "test_loss", "confusion_matrix", "per_class", "class_names", "backend",
                "versions", "device", "seconds", "images_per_second", "macro_f1"):
        assert key in metrics, key
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 100
    assert metrics["backend"] == keras.backend.backend()
    if sys.platform == "linux":  # the CPU model comes from /proc/cpuinfo
        assert metrics["device"]["cpu"]["model"], metrics["device"]
    assert {"head", "finetune", "total"} <= set(metrics["seconds"])
    assert metrics["test_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    wrong = run.misclassified()
    assert len(wrong["index"]) == matrix.sum() - np.trace(matrix)
    assert wrong["images"].shape == (len(wrong["index"]), 28, 28) and wrong["images"].dtype == np.uint8
    assert np.all(wrong["true"] != wrong["predicted"])

    # model.keras reloads and predicts exactly what the run measured.
    model = run.load_model()
    splits = load_splits(tlkit.Config.from_dict(config).data, config["seed"])
    predicted = np.argmax(model.predict(splits.test.images, verbose=0), axis=1)
    np.testing.assert_array_equal(confusion_matrix(splits.test.labels, predicted, 10), matrix)


def test_python_api_mirrors_the_cli(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, head={"epochs": 4, "learning_rate": 3e-2},
                          finetune={"epochs": 0})
    run = tlkit.fit(config, verbose=0)
    assert run.status()["state"] == "completed"
    assert [row["stage"] for row in run.history()] == ["head"] * 4
    # a random frozen backbone still separates the synthetic classes well above chance (0.1).
    assert run.metrics()["test_accuracy"] > 0.25
    assert json.loads((run.path / "config.json").read_text()) == config.to_dict()


def test_saved_model_reloads_with_identical_predictions(synthetic_data_dir, tmp_path):
    from tlkit.model import build_classifier

    config = smoke_config(synthetic_data_dir, tmp_path, augment={"flip": True, "rotation": 0.1})
    model = build_classifier(config.model, config.augment, **FASHION).model
    images = np.random.default_rng(0).integers(0, 256, size=(8, 28, 28, 1), dtype=np.uint8)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(reloaded.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6)


def test_config_error_exits_2_before_any_compute(tmp_path, capsys):
    code = main(["--preset", "smoke", "--dropout", "2", "--runs-dir", str(tmp_path / "runs")])
    assert code == 2
    assert "model.dropout: 2.0 is outside the allowed range [0, 0.9]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_resolved_config(tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text('preset = "cpu"\n[model]\ndropout = 0.1\n')
    assert main(["--config", str(config_file), "--head-epochs", "7", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["preset"] == "cpu" and printed["model"]["dropout"] == 0.1 and printed["head"]["epochs"] == 7


def dry_run(capsys, *argv) -> dict:
    assert main([*argv, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_epochs_given_without_min_steps_run_exactly_those_epochs(tmp_path, capsys):
    # The cpu preset floors both stages in optimizer steps; an explicit epoch count turns its stage's floor off.
    preset = dry_run(capsys, "--preset", "cpu")
    assert (preset["head"]["min_steps"], preset["finetune"]["min_steps"]) == (2000, 500)
    head_only = dry_run(capsys, "--preset", "cpu", "--head-epochs", "5")
    assert (head_only["head"]["epochs"], head_only["head"]["min_steps"]) == (5, 0)
    assert head_only["finetune"]["min_steps"] == 500  # the other stage keeps its floor
    both = dry_run(capsys, "--preset", "cpu", "--head-epochs", "5", "--head-min-steps", "800")
    assert both["head"]["min_steps"] == 800
    # Epochs and min_steps from different sources (file, flags) both count as given.
    config_file = tmp_path / "run.toml"
    config_file.write_text('preset = "cpu"\n[head]\nmin_steps = 900\n')
    mixed = dry_run(capsys, "--config", str(config_file), "--head-epochs", "4")
    assert (mixed["head"]["epochs"], mixed["head"]["min_steps"]) == (4, 900)


def test_failing_run_records_failed_with_the_reason(synthetic_data_dir, tmp_path):
    bad_weights = tmp_path / "corrupt.weights.h5"
    bad_weights.write_bytes(b"this is not an HDF5 file")
    runs_dir = tmp_path / "runs"
    result = run_cli(*SMOKE, "--data-dir", str(synthetic_data_dir), "--runs-dir", str(runs_dir),
                 "--weights", str(bad_weights))
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: cannot load weights") and "corrupt.weights.h5" in last_line
    status = only_run(runs_dir).status()
    assert status["state"] == "failed" and status["error"].startswith("cannot load weights")


def test_missing_data_fails_with_guidance(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    runs_dir = tmp_path / "runs"
    assert main([*SMOKE, "--data-dir", str(empty), "--runs-dir", str(runs_dir)]) == 1
    status = only_run(runs_dir).status()
    assert "train-images-idx3-ubyte(.gz) not found" in status["error"] and status["error_field"] == "data.data_dir"


RELOAD_SCRIPT = """
import sys
import numpy as np
import tlkit
from tlkit.data import load_splits

run = tlkit.runs.Run(sys.argv[1])
config = tlkit.Config.from_dict(run.config())
model = run.load_model()                       # a fresh process: nothing of tlkit imported but the package
splits = load_splits(config.data, config.seed)
predicted = model.predict(splits.test.images, verbose=0).argmax(axis=1)
print("ACCURACY", float(np.mean(predicted == splits.test.labels)))
"""


def test_one_trainer_sigterm_keeps_every_finished_epoch_and_the_model_reloads_anywhere(synthetic_data_dir, tmp_path):
    # With augmentation the full model is compiled, so model.keras names tlkit's LR schedule.
    runs_dir = tmp_path / "runs"
    process, run = start_trainer(runs_dir, synthetic_data_dir, "--head-epochs", "2", "--aug-flip",
                                 min_finetune_rows=2)
    try:
        # A second trainer on the busy run is refused at once and changes nothing.
        second = run_cli("--existing-run", run.path, "--resume", timeout=120)
        assert second.returncode == 1 and f"is being trained by pid {process.pid} on host" in second.stderr
        status = run.status()
        assert status["state"] == "running" and status["pid"] == process.pid and status["error"] is None
        with pytest.raises(RuntimeError, match=f"being trained by pid {process.pid}"):
            runs.delete_run(run)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 130
    finally:
        process.kill()
    status = run.status()
    assert status["state"] == "cancelled" and status["completed_stages"] == ["head"] and run.holder() is None
    before = run.history()
    assert len({(r["stage"], r["epoch"]) for r in before}) == len(before)  # no interleaved duplicates
    saved = checkpoint_epoch(run)
    finetune_rows = sum(row["stage"] == "finetune" for row in before)
    assert saved >= finetune_rows - 1 and saved >= 1  # at most the interrupted epoch is lost
    assert run.model_path.exists()  # the finished head stage is kept

    result = run_cli("--existing-run", run.path, "--resume", "--finetune-epochs", saved + 2)
    assert result.returncode == 0, result.stderr
    after = run.history()
    assert [(r["stage"], r["epoch"]) for r in after] == (
        [("head", 1), ("head", 2)] + [("finetune", epoch) for epoch in range(1, saved + 3)])
    assert after[:2 + saved] == before[:2 + saved]  # the finished epochs' rows, exactly as they were
    assert run.status()["state"] == "completed" and not (run.path / "checkpoints" / "finetune").exists()

    reload = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(run.path)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert reload.returncode == 0, reload.stderr[-2000:]
    assert float(reload.stdout.split("ACCURACY")[-1]) == pytest.approx(run.metrics()["test_accuracy"], abs=1e-9)


def test_resume_refuses_flags_that_change_the_model(synthetic_data_dir, tmp_path):
    run = tlkit.fit(smoke_config(synthetic_data_dir, tmp_path, head={"epochs": 1}, finetune={"epochs": 0}), verbose=0)
    history = run.history()
    result = run_cli("--existing-run", run.path, "--resume", "--dropout", "0.5", "--unfreeze", "conv4")
    assert result.returncode == 2
    assert "--resume would continue a different model or data" in result.stderr
    assert "model.dropout 0.2 → 0.5" in result.stderr and "finetune.unfreeze 'conv3' → 'conv4'" in result.stderr
    assert run.history() == history and run.status()["state"] == "completed"


def test_auto_precision_resolves_per_device(monkeypatch):
    from tlkit import environment

    monkeypatch.setattr(environment, "list_devices", lambda: ["gpu:0"])
    assert environment.resolve_precision("auto") == "mixed_float16"
    monkeypatch.setattr(environment, "list_devices", lambda: ["cpu:0"])
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: True)
    expected = "mixed_bfloat16" if keras.backend.backend() in environment.BF16_CPU_BACKENDS else "float32"
    assert environment.resolve_precision("auto") == expected
    monkeypatch.setattr(environment, "cpu_has_bf16", lambda: False)
    assert environment.resolve_precision("auto") == "float32"
    assert environment.resolve_precision("mixed_bfloat16") == "mixed_bfloat16"


def test_mixed_precision_run_keeps_float32_probabilities(synthetic_data_dir, tmp_path):
    config = smoke_config(synthetic_data_dir, tmp_path, precision="mixed_bfloat16", head={"epochs": 1},
                          finetune={"epochs": 1})
    run = tlkit.fit(config, verbose=0)
    assert run.metrics()["precision"] == "mixed_bfloat16"
    model = run.load_model()
    assert model.get_layer("head_dense").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored


def sigterm_then_wait(*args, **kwargs):
    """Stands in for a slow download or file read that a SIGTERM interrupts."""
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    raise AssertionError("SIGTERM did not interrupt the wait")


def sigterm_rewrapped_by_the_library(*args, **kwargs):
    """Library code that turns any error into its own, as tf.data does with anything raised in a
    `py_function`: the cancel arrives as some other exception type."""
    try:
        sigterm_then_wait()
    except BaseException as error:  # RunCancelled is a BaseException, so `except Exception` lets it pass
        raise RuntimeError(f"the library's own error, wrapping {error!r}") from error


@pytest.mark.parametrize("phase, stand_in", [("weights", sigterm_then_wait), ("data", sigterm_then_wait),
                                             ("weights", sigterm_rewrapped_by_the_library)])
def test_sigterm_while_loading_records_cancelled_not_failed(synthetic_data_dir, tmp_path, monkeypatch, phase,
                                                            stand_in):
    # Library code wraps downloads and file reads in `except Exception`, and may re-raise a cancel as
    # its own error; either way the run is cancelled, not failed.
    overrides = {}
    if phase == "weights":
        weights = tmp_path / "mini.weights.h5"
        build_classifier(smoke_config(synthetic_data_dir, tmp_path).model, **FASHION).backbone.save_weights(weights)
        overrides["model"] = {"weights": str(weights)}
        monkeypatch.setattr(keras.Model, "load_weights", stand_in)
    else:
        overrides["data"] = {"data_dir": None}
        monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", stand_in)
    config = smoke_config(synthetic_data_dir, tmp_path, **overrides)
    with pytest.raises(RunCancelled):
        tlkit.fit(config, verbose=0)
    status = only_run(tmp_path / "runs").status()
    assert status["state"] == "cancelled" and status["error"] == "cancelled by the user"


def test_precedence_is_preset_then_file_then_flags(tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text('preset = "cpu"\n[model]\ndropout = 0.1\nimage_size = 40\n')
    assert main(["--config", str(config_file), "--preset", "smoke", "--image-size", "48", "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    # --preset (a flag) beats the file's preset; the file's values beat the preset; flags beat the file.
    assert printed["preset"] == "smoke" and printed["model"]["backbone"] == "mini_resnet"
    assert printed["model"]["dropout"] == 0.1 and printed["model"]["image_size"] == 48
    assert "< config file (--config) < flags" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize("extra, message", [
    (["--preset", "cpu"], "--preset ('cpu') would replace it"),
    (["--config", "FILE"], "the preset key in FILE ('cpu') would replace it"),
])
def test_a_preset_with_an_existing_run_is_refused(tmp_path, capsys, extra, message):
    run = runs.create_run(tmp_path / "runs", state="queued")
    run.write_config(tlkit.Config.from_preset("smoke").to_dict())
    config_file = tmp_path / "run.toml"
    config_file.write_text('preset = "cpu"\n')
    extra = [str(config_file) if part == "FILE" else part for part in extra]
    assert main(["--existing-run", str(run.path), *extra, "--dry-run"]) == 2
    assert message.replace("FILE", str(config_file)) in capsys.readouterr().err


def test_resume_without_an_existing_run_is_refused(capsys):
    assert main(["--preset", "smoke", "--resume", "--dry-run"]) == 2
    assert "--resume needs --existing-run DIR" in capsys.readouterr().err


def test_native_start_up_lines_are_filtered_and_everything_else_passes(capfd):
    with environment.quiet_native_startup():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795980407.577248   11130 port.cc:153] oneDNN custom operations are on. You may\n")
        os.write(2, b"E0000 00:00:1795980461.542020   11234 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n")
        os.write(2, b"E0000 00:00:1795980461.542020   11234 some_op.cc:52] a real native error\n")
        os.write(2, b"error: a real tlkit error\n")  # (a CLI's sys.stderr is fd 2; pytest's capfd is not)
    assert capfd.readouterr().err == "E0000 00:00:1795980461.542020   11234 some_op.cc:52] a real native error\n" \
        "error: a real tlkit error\n"


def test_importing_tlkit_under_jax_adds_the_measured_xla_cpu_flag_and_respects_the_users_own():
    script = "import os, tlkit; print(os.environ.get('XLA_FLAGS', ''))"

    def flags(backend, **env):
        env = {"KERAS_BACKEND": backend, "XLA_FLAGS": "", **env}
        result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                                text=True, timeout=120, check=True)
        return result.stdout.strip()

    jaxlib = environment.versions(("jaxlib",)).get("jaxlib", "")
    expected = environment.XLA_CPU_FLAGS.get(".".join(jaxlib.split(".")[:2]), "")
    assert flags("jax") == expected  # only for the jaxlib versions it was measured on
    assert flags("jax", XLA_FLAGS="--xla_force_host_platform_device_count=2") == \
        f"--xla_force_host_platform_device_count=2 {expected}".strip()
    own = "--xla_cpu_experimental_ynn_fusion_type="
    assert flags("jax", XLA_FLAGS=own) == own  # the user's own setting wins
    assert flags("jax", TLKIT_XLA_CPU_TUNING="0") == ""
    assert flags("tensorflow") == "" and flags("torch") == ""


@pytest.mark.backend_independent  # sets KERAS_BACKEND itself
def test_under_tensorflow_tlkit_runs_onednn_kernels_unless_the_user_chose():
    script = ("import json, os, tlkit; from tlkit import environment; "
              "print(json.dumps([os.environ.get('TF_ENABLE_ONEDNN_OPTS'), environment.device_info().get("
              "'tensorflow_onednn') if environment.keras_backend_name() == 'tensorflow' else None]))")

    def onednn(**env) -> list:
        env = {key: value for key, value in {**os.environ, "TF_ENABLE_ONEDNN_OPTS": None, **env}.items()
               if value is not None}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                timeout=120, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    assert onednn(KERAS_BACKEND="tensorflow") == ["1", True]  # whatever the CPU (TensorFlow's own default varies)
    assert onednn(KERAS_BACKEND="tensorflow", TF_ENABLE_ONEDNN_OPTS="0") == ["0", False]  # the user's choice wins
    assert onednn(KERAS_BACKEND="torch") == [None, None]


@pytest.mark.backend_independent  # sets KERAS_BACKEND itself
def test_importing_tensorflow_before_tlkit_warns_when_it_leaves_onednn_off():
    # TensorFlow reads TF_ENABLE_ONEDNN_OPTS once, when it loads: `import keras` first is too late for tlkit.
    script = ("import json, warnings; import keras\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always'); import tlkit\n"
              "from tensorflow.python.util import _pywrap_util_port\n"
              "print(json.dumps([_pywrap_util_port.IsMklEnabled(), [str(w.message) for w in caught]]))")
    env = {key: value for key, value in os.environ.items() if key != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", script], env={**env, "KERAS_BACKEND": "tensorflow"},
                            capture_output=True, text=True, timeout=120, check=True)
    onednn, messages = json.loads(result.stdout.strip().splitlines()[-1])
    late = [message for message in messages if "imported before tlkit" in message]
    # Where TensorFlow turns oneDNN on by itself (AVX-512 VNNI/BF16, AMX) nothing is lost and nothing is said.
    assert len(late) == (0 if onednn else 1), messages
    if late:
        assert "Import tlkit before keras" in late[0] and "TF_ENABLE_ONEDNN_OPTS=1" in late[0]


@pytest.mark.backend_independent  # sets KERAS_BACKEND itself
def test_under_jax_the_next_process_reads_compiled_programs_back_from_the_cache_dir(tmp_path):
    pytest.importorskip("jax")
    script = ("import json, os; import tlkit; import jax, jax.numpy as jnp; events = []; "
              "jax.monitoring.register_event_listener(lambda name, **_: events.append(name)); "
              "jax.jit(lambda x: x * 2 + 1)(jnp.arange(3.0)).block_until_ready(); "
              "print(json.dumps([os.environ.get('JAX_COMPILATION_CACHE_DIR', ''), "
              "[name.rsplit('/', 1)[-1] for name in events if name.endswith(('cache_hits', 'cache_misses'))]]))")

    def run(**env) -> list:
        env = {key: value for key, value in {**os.environ, "TLKIT_CACHE_DIR": str(tmp_path), **env}.items()
               if value is not None}
        result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                timeout=120, check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    directory, events = run(KERAS_BACKEND="jax", JAX_COMPILATION_CACHE_DIR=None)
    assert directory == str(tmp_path / "jax") and "cache_misses" in events and "cache_hits" not in events
    assert list((tmp_path / "jax").glob("*-cache"))
    assert run(KERAS_BACKEND="jax", JAX_COMPILATION_CACHE_DIR=None) == [directory, ["cache_hits"] * len(events)]
    own = str(tmp_path / "own")
    assert run(KERAS_BACKEND="jax", JAX_COMPILATION_CACHE_DIR=own)[0] == own  # the user's own setting wins
    assert run(KERAS_BACKEND="jax", JAX_COMPILATION_CACHE_DIR=None, TLKIT_JAX_COMPILATION_CACHE="0") == ["", []]
    assert run(KERAS_BACKEND="tensorflow", JAX_COMPILATION_CACHE_DIR=None)[0] == ""


def test_under_torch_tlkit_keeps_freed_memory_on_glibc_s_heap_unless_the_user_tuned_malloc():
    def tuned(**env) -> list[str]:
        script = ("from tlkit import environment; import json, os; "
                  "print(json.dumps(environment.tune_torch_allocator(os.environ)))")
        result = subprocess.run([sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True,
                                text=True, timeout=120, check=True)
        return json.loads(result.stdout)

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only")
    assert tuned(KERAS_BACKEND="torch") == ["M_TRIM_THRESHOLD", "M_MMAP_THRESHOLD"]
    assert tuned(KERAS_BACKEND="torch", MALLOC_TRIM_THRESHOLD_="0") == []  # the user's own setting wins
    assert tuned(KERAS_BACKEND="torch", TLKIT_TORCH_MEMORY_TUNING="0") == []
    assert tuned(KERAS_BACKEND="jax") == [] and tuned(KERAS_BACKEND="tensorflow") == []
