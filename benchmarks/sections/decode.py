"""Section 6, `decode`: a folder of image files into uint8 arrays, decoded vs read from the decode cache."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import SEED
from benchmarks.formatting import by_backend, failure, find, num, ok, ratio, table, times
from benchmarks.sections.base import Case, Section, SummaryRow

SETTINGS = {
    "quick": {"images": 300, "classes": 3, "side": 224, "source_sides": [180, 420]},
    "full": {"images": 2000, "classes": 10, "side": 224, "source_sides": [180, 640]},
}


def plan(settings: dict, workdir: Path) -> list[Case]:
    params = {**settings, "folder": str(workdir / "decode" / "photos"), "cache_dir": str(workdir / "decode" / "cache"),
              "seed": SEED}
    return [Case("decode a folder of images", "decode_folder", params, 1800)]


def write_folder(folder: Path, images: int, classes: int, source_sides: list[int], seed: int) -> dict:
    """JPEG photos (3 of 4) and PNGs (1 of 4) of random sizes with smooth content, like small photo sets."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    total_bytes = 0
    for index in range(images):
        width, height = (int(side) for side in rng.integers(source_sides[0], source_sides[1] + 1, size=2))
        gradient = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        noise = rng.normal(0, 30, size=(height, width, 3)).astype(np.float32)
        pixels = np.clip(gradient * rng.uniform(0.3, 1.0, size=3) + noise, 0, 255).astype(np.uint8)
        path = folder / f"class{index % classes}" / f"{index:05d}.{'png' if index % 4 == 0 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90) if path.suffix == ".jpg" else Image.fromarray(pixels).save(path)
        total_bytes += path.stat().st_size
    return {"images": images, "bytes": total_bytes}


def decode_folder(params: dict, emit) -> dict:
    """Times `decode_images` with one worker and with the default pool, then `load_splits` cold and warm."""
    import time

    from tlkit.config import DataConfig
    from tlkit.data import decode_images, default_workers, load_splits

    folder = Path(params["folder"])
    written = write_folder(folder, params["images"], params["classes"], params["source_sides"], params["seed"])
    paths = sorted(str(path) for path in folder.rglob("*.*"))
    shape = (params["side"], params["side"], 3)
    result = {"files": written, "workers": default_workers()}

    def timed(label, function):
        start = time.perf_counter()
        value = function()
        seconds = time.perf_counter() - start
        result[label] = {"seconds": round(seconds, 3), "images_per_second": round(len(paths) / seconds, 1)}
        emit(result)
        return value

    timed("decode_one_worker", lambda: decode_images(paths, shape, workers=1))
    timed("decode_pool", lambda: decode_images(paths, shape))
    config = DataConfig(source=str(folder), image_size=params["side"])
    splits = timed("load_cold", lambda: load_splits(config, params["seed"], cache_dir=params["cache_dir"]))
    timed("load_warm", lambda: load_splits(config, params["seed"], cache_dir=params["cache_dir"]))
    result["stored_mb"] = round(sum(split.images.nbytes for split in (splits.train, splits.val, splits.test)) / 1e6, 1)
    return result


# ---- rendering (parent side) ------------------------------------------------------------------------

ROWS = (("decode_one_worker", "`decode_images`, 1 worker"), ("decode_pool", "`decode_images`, default pool"),
        ("load_cold", "`load_splits`, empty decode cache (decode + split + write the cache)"),
        ("load_warm", "`load_splits`, second load (reads the decode cache)"))


def render(reports: list[dict], settings: dict, cores: int) -> str:
    parts = [f"A folder of {settings['images']:,} generated photos in {settings['classes']} class folders (3 of 4 "
             f"JPEG at quality 90, 1 of 4 PNG; {settings['source_sides'][0]}–{settings['source_sides'][1]} px a "
             f"side, RGB) decoded to uint8 {settings['side']}×{settings['side']}×3 by `tlkit.data`: Pillow decode, "
             "EXIF orientation, bilinear resize, in a thread pool. The cold load also splits and writes the decode "
             "cache; the warm load reads it back (memory-mapped). Seconds include the file reads (the files were "
             "just written, so they are in the page cache)."]
    for backend, group in by_backend(reports).items():
        report = find(group, "decode_folder")
        if not report or failure(report):
            parts.append(f"*{backend}*: failed: {failure(report) if report else 'no report'}")
            continue
        result = report["result"]
        rows = [(label, num(result[key]["seconds"], 2), num(result[key]["images_per_second"]))
                for key, label in ROWS if key in result]
        files = result["files"]
        warm = ratio(result["load_cold"]["seconds"], result["load_warm"]["seconds"])
        pool = ratio(result["decode_one_worker"]["seconds"], result["decode_pool"]["seconds"])
        parts.append(table(("step", "seconds", "images/s"), rows))
        parts.append(
            f"- Files: {files['images']:,} ({files['bytes'] / 1e6:.1f} MB on disk); stored as "
            f"{result.get('stored_mb')} MB of uint8; pool of {result['workers']} workers on {cores} cores.\n"
            f"- Second load vs first: **{times(warm)}** faster; pool vs one worker: {times(pool)}.")
    return "\n\n".join(parts)


def summarise(reports: list[dict], settings: dict) -> list[SummaryRow]:
    report = find(reports, "decode_folder")
    if not ok(report):
        return []
    result = report["result"]
    measured = (f"{num(result['load_cold']['images_per_second'])} img/s decoding · "
                f"{num(result['load_warm']['images_per_second'])} img/s from the decode cache "
                f"({times(ratio(result['load_cold']['seconds'], result['load_warm']['seconds']))})")
    return [SummaryRow(f"Folder of images → uint8 at {settings['side']} px, first load · second load", measured,
                       "second run starts in seconds", [report])]


SECTION = Section(
    name="decode", title="Decoding a folder of images, and the decode cache",
    default_backends=("tensorflow",), settings=SETTINGS, plan=plan, cases={"decode_folder": decode_folder},
    render=render, summarise=summarise,
)
