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
