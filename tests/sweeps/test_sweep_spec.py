"""Sweep specs are checked through tlkit.config before any trial starts; bad input ends in one line
that names the field, and nothing is written (no Ray, no training)."""

from __future__ import annotations

import socket
import time

import pytest

from tlkit import sweep
from tlkit.config import Config

from ..helpers import run_cli
from .conftest import write_spec


def spec_text(space: str, top: str = "") -> str:
    return f"{top}\n[space]\n{space}\n"


@pytest.mark.parametrize("space, top, message", [
    ('"model.dropot" = { grid = [0.1] }', "", "model.dropot: unknown config field (in the sweep's [space])"),
    ('"model.dropout" = { uniform = [0.1, 1.5] }', "",
     "model.dropout: 1.5 is outside the allowed range [0, 0.9] (a uniform value in the sweep's [space])"),
    ('"head.optimizer" = { choice = ["adam", "sgd"] }', "", "head.optimizer: 'sgd' is not one of adam, adamw"),
    ('"head.learning_rate" = { loguniform = [0.0, 0.1] }', "", "head.learning_rate: 0.0 is outside the allowed"),
    ('"model.head_units" = { uniform = [8, 64] }', "", "model.head_units: uniform needs a float field"),
    ('"model.dropout" = { uniform = [0.5, 0.1] }', "", "model.dropout: uniform [0.5, 0.1]: low must be below high"),
    ('"model.dropout" = 0.3', "", "model.dropout: give one distribution"),
    ('"runs_dir" = { grid = ["a", "b"] }', "", "runs_dir: set by the sweep itself"),
    # Each grid value is put into the base config and validated: 5 warm-up epochs of a 4-epoch stage.
    ('"head.warmup_epochs" = { grid = [0.0, 5.0] }', "",
     "head.warmup_epochs: grid value 5.0 makes the config invalid: head.warmup_epochs: 5.0 must be shorter"),
    ('"model.dropout" = { grid = [0.1] }', 'metric = "test_accuracy"', "metric: 'test_accuracy' is not one of"),
    ('"model.dropout" = { grid = [0.1] }', 'search = "optuna"', "model.dropout: grid axes need search = \"random\""),
    ('"model.dropout" = { grid = [0.1] }', "trials = 0", "trials: 0 must be a whole number ≥ 1"),
    ('"model.dropout" = { grid = [0.1] }', "trails = 3", "trails: unknown sweep spec key"),
    ('"model.dropout" = { grid = [0.1] }', "[scheduler]\ngrace_period = 4",
     "scheduler.grace_period: 4 leaves nothing to stop"),
    ('"model.dropout" = { grid = [0.1] }', "[resources]\ncpus = 0", "resources.cpus: 0 must be a number > 0"),
])
def test_bad_specs_name_the_field_before_anything_runs(tmp_path, space, top, message):
    path = write_spec(tmp_path / "spec.toml", spec_text(space, top))
    with pytest.raises(sweep.SweepError) as error:
        sweep.load_spec(path, {"runs_dir": str(tmp_path / "runs")})
    assert str(error.value).startswith(message), str(error.value)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()


def test_base_config_and_flags_are_validated_and_a_swept_flag_is_refused(tmp_path):
    path = write_spec(tmp_path / "spec.toml", spec_text('"model.dropout" = { grid = [0.1, 0.2] }'))
    with pytest.raises(sweep.SweepError, match=r"^model.image_size: 8 is outside the allowed range \[32, 512\] "
                                               r"\(in the sweep's base config"):
        sweep.load_spec(path, {"model.image_size": "8"})
    with pytest.raises(sweep.SweepError, match="^model.dropout: given as a flag and swept in the spec's"):
        sweep.load_spec(path, {"model.dropout": "0.3"})


def test_spec_resolves_base_flags_and_samples_like_ray(tmp_path, sweep_data):
    """Precedence preset < [base] < flags; relative paths become absolute (trials run elsewhere); grid
    axes are crossed with every sample, the other axes drawn (seeded) within their bounds."""
    path = write_spec(tmp_path / "spec.toml", spec_text(
        '"head.learning_rate" = { loguniform = [1e-3, 1e-2] }\n"model.head_units" = { randint = [8, 12] }\n'
        '"finetune.unfreeze" = { grid = ["conv2", "conv3"] }', "trials = 3\nseed = 7"))
    spec = sweep.load_spec(path, {"data.source": str(sweep_data["easy"]), "batch_size": "16",
                                  "runs_dir": "relative-runs"})
    assert spec.base.batch_size == 16 and spec.base.head.epochs == 4 and spec.base.preset == "smoke"
    assert spec.runs_dir.is_absolute() and spec.runs_dir.name == "relative-runs"
    assert spec.total_trials == 6
    trials = sweep.sample_trials(spec)
    assert trials == sweep.sample_trials(spec)  # seeded
    assert [t["finetune.unfreeze"] for t in trials] == ["conv2", "conv3"] * 3
    assert all(1e-3 <= t["head.learning_rate"] <= 1e-2 and 8 <= t["model.head_units"] <= 12 for t in trials)
    assert len({t["head.learning_rate"] for t in trials}) == 6
    config = spec.trial_config(trials[1], number=2)
    assert isinstance(config, Config) and config.name == "spec-2" and config.finetune.unfreeze == "conv3"
    config.validate()


def test_cli_error_is_one_line_and_writes_nothing(tmp_path):
    path = write_spec(tmp_path / "spec.toml", spec_text('"model.dropout" = { uniform = [0.0, 0.95] }'))
    result = run_cli(path, "--runs-dir", tmp_path / "runs", module="tlkit.sweep", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {path}: model.dropout: 0.95 is outside the allowed range [0, 0.9] (a uniform value in the "
        "sweep's [space])"]
    assert not (tmp_path / "runs").exists()


def test_engine_ray_without_ray_says_which_extra_to_install(tmp_path):
    """A Python where `import ray` fails (a stand-in package first on the path) gets the extra's name."""
    shadow = tmp_path / "no-ray" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    path = write_spec(tmp_path / "spec.toml", spec_text('"model.dropout" = { grid = [0.1, 0.2] }'))
    result = run_cli(path, "--engine", "ray", "--runs-dir", tmp_path / "runs", module="tlkit.sweep", timeout=60,
                     env={"PYTHONPATH": str(shadow.parent)})
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("--engine ray needs Ray Tune (No module named 'ray'); pip install 'tlkit[ray]'")
    assert not (tmp_path / "runs").exists()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # nothing listens there once the probe is closed


def test_unreachable_address_fails_in_seconds(tmp_path):
    path = write_spec(tmp_path / "spec.toml", spec_text('"model.dropout" = { grid = [0.1, 0.2] }'))
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = run_cli(path, "--engine", "ray", "--address", address, "--runs-dir", tmp_path / "runs",
                     module="tlkit.sweep", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"--address {address}: no Ray cluster answers there (Connection refused" in line
    assert "ray start --head" in line
    assert elapsed < 15, f"{elapsed:.1f} s"  # Python, Ray's import and a refused connection; Ray alone retries
    assert not (tmp_path / "runs").exists()


def test_address_needs_the_ray_engine(tmp_path):
    path = write_spec(tmp_path / "spec.toml", spec_text('"model.dropout" = { grid = [0.1, 0.2] }'))
    assert sweep.main([str(path), "--address", "10.0.0.5:6379", "--runs-dir", str(tmp_path / "runs")]) == 2
    assert not (tmp_path / "runs").exists()


def test_optuna_search_without_optuna_names_the_package(tmp_path):
    try:
        import optuna  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("optuna is installed here: nothing to refuse")
    sweep_ray = pytest.importorskip("tlkit.sweep_ray")  # imports Ray
    path = write_spec(tmp_path / "spec.toml", spec_text('"model.dropout" = { uniform = [0.1, 0.3] }',
                                                        'search = "optuna"'))
    with pytest.raises(sweep.SweepError, match=r"^search: optuna needs the optuna package \(.*\); pip install optuna$"):
        sweep_ray.check_ready(sweep.load_spec(path, {"runs_dir": str(tmp_path / "runs")}), address=None)
