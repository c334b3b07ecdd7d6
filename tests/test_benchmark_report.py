"""docs/performance.md's summary names the CPU each figure was measured on (they are not comparable across CPUs)."""

import json

import pytest

from benchmarks import report

from .helpers import REPO

pytestmark = pytest.mark.backend_independent

AVX2_ONLY = ["sse2", "avx", "avx2", "fma", "f16c"]


def info_with(flags: list[str], model_number: int) -> dict:
    return {"cpu": {"model": "AMD EPYC", "flags": flags, "model_number": model_number}}


def test_cpu_label_names_the_widest_simd():
    assert report.cpu_label(info_with(AVX2_ONLY, 1)) == "AVX2 (model 1)"
    assert report.cpu_label(info_with([*AVX2_ONLY, "avx512f"], 17)) == "AVX-512 (model 17)"
    assert report.cpu_label(info_with([*AVX2_ONLY, "avx512f", "avx512_bf16"], 17)) == "AVX-512 + bf16 (model 17)"
    assert report.cpu_label(info_with([*AVX2_ONLY, "avx512f", "amx_tile"], 143)) == "AMX (model 143)"
    assert report.cpu_label(info_with(["sse2"], 0)) == "no AVX2 (model 0)"


def test_every_summary_row_names_its_cpu():
    runs = [json.loads(path.read_text()) for path in sorted((REPO / "benchmarks" / "results").glob("20*.json"))]
    summary = report.render(runs).split("## Summary")[1].split("## Machine")[0]
    header, _, *rows = [line for line in summary.splitlines() if line.startswith("|")]
    cpu_column = [cell.strip() for cell in header.split("|")].index("CPU")
    labels = {report.cpu_label(run["info"]) for run in runs}
    assert rows
    for row in rows:
        assert [cell.strip() for cell in row.split("|")][cpu_column] in labels, row


def test_finetune_arithmetic_bound_counts_resnet50_convolutions():
    from benchmarks.sections.boundary_cache import arithmetic_bound
    from benchmarks.tlkit_runs import finetune_convolution_gflop
    from tlkit.config import Config

    def work(image_size):
        overrides = {"model": {"image_size": image_size}, "finetune": {"unfreeze": "conv5", "epochs": 3}}
        return finetune_convolution_gflop(Config.from_preset("cpu", overrides=overrides))

    full = work(224)
    # He et al. 2016, Table 1: ResNet-50 is 3.8e9 multiply-adds; conv5 is a fifth of it.
    assert 3.8 < (full["frozen"] + full["unfrozen_forward"]) / 2 < 3.9
    assert full["unfrozen_forward"] < full["unfrozen_train"] < 3 * full["unfrozen_forward"]
    assert Config.from_preset("cpu").finetune.unfreeze and finetune_convolution_gflop(
        Config.from_preset("cpu", overrides={"finetune": {"epochs": 0}})) is None

    def bound(image_size):
        result = {"finetune_convolution_gflop": work(image_size), "data_sizes": {"train": 1350, "val": 150}}
        return arithmetic_bound({"result": result})

    # conv5's maps are 3x3 at 72 px: the prefix is relatively cheaper there than at 224 px (7x7).
    assert 1.9 < bound(72) < 2.1 < 2.5 < bound(224) < 2.7
    assert arithmetic_bound({"result": {"data_sizes": {"train": 1}}}) is None
