"""Packs what a bare GPU machine needs for `benchmarks/gpu_run.sh` into one folder under 64 MiB.

The device tool copies the repository's working tree plus a few ignored `carry` paths, 64 MiB in
all, to a machine that can reach nothing else. The run there needs three things the repository
lacks, and this module packs them into `.gpu-pack/` (git-ignored), then unpacks them there:

- **Weights** (`weights-*`): the Keras `.weights.h5` of the backbone with every multi-dimensional
  tensor (the kernels: 99.4 % of ResNet50's parameters) stored as float16 and the rest (BatchNorm
  statistics, biases) as float32. The float16 values are split into their high bytes (sign,
  exponent, two mantissa bits: lzma-compressed) and the remaining mantissa bits, bit-packed raw
  (they are noise to a compressor). The real ResNet50 file does not fit with the data at the full
  10 mantissa bits of float16, so `--mantissa-bits auto` rounds the kernels to the most mantissa
  bits that fit under the limit (round to nearest, from the float32 originals); the manifest and
  the run's summary record the bits and the round-trip error.
- **Data** (`data/*.xz`): the four Fashion-MNIST IDX files, lossless: images stored column by column
  (lzma finds more repeats that way: 21.7 MB vs 22.6 MB for the training images) and xz-compressed;
  `unpack` writes the raw IDX files that `--data-dir` reads and checks them against the sha256 of
  the originals.
- **Python packages** (`site.tar.xz`): Keras and the two packages it needs that the GPU image lacks
  (namex, optree), from wheels for the device's Python; `unpack` extracts them into a folder for
  `PYTHONPATH`.

`unpack` needs only the standard library, numpy and h5py (all on the GPU image).

Example:

```
python -m benchmarks.gpu_pack pack                 # ../shared → .gpu-pack/ (3–10 min), sizes, round trip
python -m benchmarks.gpu_pack synthetic --out DIR  # a tiny pack of generated inputs (the dry run's)
python -m benchmarks.gpu_pack unpack --pack .gpu-pack --dest /tmp/gpu-inputs   # on the GPU machine
```
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PACK = REPO / ".gpu-pack"
SHARED = Path(os.environ.get("TLKIT_SHARED_DIR", REPO.parent / "shared"))
DEFAULT_WEIGHTS = SHARED / "weights" / "resnet50_imagenet_notop.weights.h5"
DEFAULT_DATA_DIR = SHARED / "data" / "fashion-mnist"
MANIFEST = "manifest.json"
FORMAT = 1
MIB = 1024 * 1024
# What the device tool copies at most: the working tree plus the carried paths.
TRAVEL_LIMIT_MIB = 64.0
# The four IDX files, as tlkit.data reads them (raw or .gz) from --data-dir.
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Packages Keras needs that the GPU image lacks (it has numpy, h5py, ml-dtypes, absl-py, rich, packaging).
SITE_PACKAGES = ("keras", "namex", "optree")
WEIGHTS_FILE = "weights.weights.h5"
FLOAT16_MAX = 65504.0
XZ_BEST = 9 | lzma.PRESET_EXTREME


class PackError(RuntimeError):
    """The pack cannot be made or read; the message says what to do."""


# ---- float16 kernels ----------------------------------------------------------------------------


def round_to_float16(values: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """float32 → float16 holding at most `mantissa_bits` (1–10) mantissa bits, rounded to nearest even.

    Normal values are rounded once, on the float32 bit pattern, so their error is at most half a
    unit in the last kept bit (2^-(bits+1) relative). float16's subnormals (|x| < 2^-14) are rounded
    again to the kept bits (an absolute error below 2^-25 · 2^(10-bits)).
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    direct = values.astype(np.float16)  # one rounding to 10 bits, subnormals included
    if mantissa_bits == 10:
        return direct
    rounded = _round_bits(values.view(np.uint32), 23 - mantissa_bits).view(np.float32).astype(np.float16)
    rounded = np.where(np.abs(direct) < 2.0 ** -14, direct, rounded)
    return _round_bits(rounded.view(np.uint16), 10 - mantissa_bits).view(np.float16)


def _round_bits(pattern: np.ndarray, drop: int) -> np.ndarray:
    """Rounds the magnitude of sign-magnitude bit patterns to nearest even, clearing `drop` low bits."""
    if drop == 0:
        return pattern
    one = pattern.dtype.type(1)
    drop = pattern.dtype.type(drop)
    lsb = (pattern >> drop) & one
    half = one << (drop - one)
    return (pattern + (half - one) + lsb) & ~((one << drop) - one)


def encode_float16(values: np.ndarray, mantissa_bits: int) -> tuple[bytes, bytes]:
    """float16 values (with `mantissa_bits` significant) → (lzma'd high bytes, bit-packed low bits)."""
    pattern = values.view(np.uint16).ravel()
    high = (pattern >> 8).astype(np.uint8)
    low_width = mantissa_bits - 2  # the high byte holds sign, 5 exponent bits and 2 mantissa bits
    low = ((pattern & 0xFF) >> (8 - low_width)).astype(np.uint8)
    low_bits = np.unpackbits(low[:, None], axis=1)[:, 8 - low_width:]
    return lzma.compress(high.tobytes(), preset=6), np.packbits(low_bits.ravel()).tobytes()


def decode_float16(high_xz: bytes, low_packed: bytes, count: int, mantissa_bits: int) -> np.ndarray:
    """Inverse of `encode_float16`."""
    high = np.frombuffer(lzma.decompress(high_xz), np.uint8)
    low_width = mantissa_bits - 2
    bits = np.unpackbits(np.frombuffer(low_packed, np.uint8))[: count * low_width].reshape(count, low_width)
    low = np.packbits(np.pad(bits, ((0, 0), (8 - low_width, 0))), axis=1).ravel()
    pattern = (high.astype(np.uint16) << 8) | (low.astype(np.uint16) << (8 - low_width))
    return pattern.view(np.float16)


# ---- the weights file ---------------------------------------------------------------------------


def _attrs(obj) -> dict:
    """An HDF5 object's attributes as JSON (Keras writes strings; numbers are kept too)."""
    out = {}
    for key, value in obj.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, (str, int, float, bool)):
            raise PackError(f"attribute {obj.name}@{key} of type {type(value).__name__} is not supported")
        out[key] = value
    return out


def read_weights(path: Path) -> tuple[list[dict], list[tuple[str, np.ndarray]]]:
    """The HDF5 tree of a `.weights.h5` (groups with their attributes, datasets in order) and its arrays."""
    import h5py

    tree, arrays = [{"path": "/", "kind": "group", "attrs": None}], []
    with h5py.File(path, "r") as file:
        tree[0]["attrs"] = _attrs(file)

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                tree.append({"path": name, "kind": "dataset", "attrs": _attrs(obj)})
                arrays.append((name, obj[()]))
            else:
                tree.append({"path": name, "kind": "group", "attrs": _attrs(obj)})

        file.visititems(visit)
    return tree, arrays


def write_weights(path: Path, tree: list[dict], arrays: dict[str, np.ndarray]) -> None:
    """Writes the HDF5 tree back (the same groups, attributes and datasets, in the same order)."""
    import h5py

    with h5py.File(path, "w") as file:
        for node in tree:
            if node["kind"] == "group":
                obj = file if node["path"] == "/" else file.require_group(node["path"])
            else:
                obj = file.create_dataset(node["path"], data=arrays[node["path"]])
            for key, value in node["attrs"].items():
                obj.attrs[key] = value


def _is_kernel(array: np.ndarray) -> bool:
    """Stored as float16: multi-dimensional float32 tensors inside float16's range."""
    return (array.dtype == np.float32 and array.ndim > 1 and bool(np.isfinite(array).all())
            and float(np.abs(array).max(initial=0)) < FLOAT16_MAX)


def pack_weights(source: Path, dest: Path, mantissa_bits: int) -> dict:
    """Writes `weights-f16-high.xz`, `weights-f16-low.bin` and `weights-f32.xz`; returns the manifest part."""
    tree, arrays = read_weights(source)
    layout, kernels, others = [], [], []
    for name, array in arrays:
        kernel = _is_kernel(array)
        layout.append({"path": name, "shape": list(array.shape), "dtype": str(array.dtype),
                       "stored": "float16" if kernel else "raw"})
        (kernels if kernel else others).append(np.ascontiguousarray(array))
    flat = np.concatenate([k.ravel() for k in kernels]) if kernels else np.zeros(0, np.float32)
    high, low = encode_float16(round_to_float16(flat, mantissa_bits), mantissa_bits)
    (dest / "weights-f16-high.xz").write_bytes(high)
    (dest / "weights-f16-low.bin").write_bytes(low)
    (dest / "weights-f32.xz").write_bytes(lzma.compress(b"".join(a.tobytes() for a in others), preset=XZ_BEST))
    return {"source": str(source), "source_bytes": source.stat().st_size, "source_sha256": sha256_file(source),
            "mantissa_bits": mantissa_bits, "float16_values": int(flat.size),
            "raw_values": int(sum(a.size for a in others)), "tree": tree, "layout": layout}


def unpack_weights(pack: Path, info: dict, dest: Path) -> Path:
    """Rebuilds the `.weights.h5` as float32 (float16 kernels widened exactly) at `dest`."""
    kernels = decode_float16((pack / "weights-f16-high.xz").read_bytes(), (pack / "weights-f16-low.bin").read_bytes(),
                             info["float16_values"], info["mantissa_bits"]).astype(np.float32)
    raw = lzma.decompress((pack / "weights-f32.xz").read_bytes())
    arrays, kernel_at, raw_at = {}, 0, 0
    for entry in info["layout"]:
        shape, dtype = tuple(entry["shape"]), np.dtype(entry["dtype"])
        size = int(np.prod(shape, dtype=np.int64))
        if entry["stored"] == "float16":
            arrays[entry["path"]] = kernels[kernel_at:kernel_at + size].reshape(shape)
            kernel_at += size
        else:
            arrays[entry["path"]] = np.frombuffer(raw, dtype, size, raw_at).reshape(shape)
            raw_at += size * dtype.itemsize
    write_weights(dest, info["tree"], arrays)
    return dest


# ---- the IDX files ------------------------------------------------------------------------------


def read_idx_bytes(data_dir: Path, stem: str) -> bytes:
    """The raw bytes of one IDX file of `data_dir` (`.gz` or raw)."""
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            raw = candidate.read_bytes()
            return gzip.decompress(raw) if candidate.suffix == ".gz" else raw
    raise PackError(f"{stem}(.gz) not found in {data_dir}; pass --data-dir with the four Fashion-MNIST IDX files")


def _idx_header(raw: bytes) -> tuple[int, tuple[int, ...]]:
    ndim = raw[3]
    return 4 + 4 * ndim, tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))


def pack_data(data_dir: Path, dest: Path, preset: int = XZ_BEST) -> dict:
    """Writes `data/<stem>.xz` for the four IDX files; images column by column. Returns the manifest part."""
    (dest / "data").mkdir(parents=True, exist_ok=True)
    files = {}
    for stem in IDX_STEMS:
        raw = read_idx_bytes(data_dir, stem)
        header, shape = _idx_header(raw)
        layout = "column-major" if len(shape) == 3 else "as-is"
        body = np.frombuffer(raw, np.uint8, offset=header)
        if layout == "column-major":  # (N, rows, cols) stored as (N, cols, rows)
            body = np.ascontiguousarray(body.reshape(shape).transpose(0, 2, 1))
        (dest / "data" / f"{stem}.xz").write_bytes(lzma.compress(raw[:header] + body.tobytes(), preset=preset))
        files[stem] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "shape": list(shape),
                       "layout": layout}
    return {"source": str(data_dir), "files": files}


def unpack_data(pack: Path, info: dict, dest: Path) -> Path:
    """Writes the raw IDX files into `dest` and checks each against its original sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem, entry in info["files"].items():
        stored = lzma.decompress((pack / "data" / f"{stem}.xz").read_bytes())
        header, shape = _idx_header(stored)
        body = np.frombuffer(stored, np.uint8, offset=header)
        if entry["layout"] == "column-major":
            n, rows, cols = shape
            body = np.ascontiguousarray(body.reshape(n, cols, rows).transpose(0, 2, 1))
        raw = stored[:header] + body.tobytes()
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise PackError(f"{stem} does not match its original after unpacking; make the pack again")
        (dest / stem).write_bytes(raw)
    return dest


# ---- Python packages ----------------------------------------------------------------------------


def site_from_wheels(dest: Path, python_version: str) -> dict:
    """Downloads this environment's versions of `SITE_PACKAGES` as wheels for the device's Python
    (manylinux x86-64) and stores their contents as `site.tar.xz`."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in SITE_PACKAGES]
    platforms = [arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                 "manylinux2014_x86_64") for arg in ("--platform", tag)]
    with tempfile.TemporaryDirectory() as wheels:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
                   python_version, "--implementation", "cp", *platforms, "-d", wheels, *pins]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise PackError(f"pip download of {', '.join(pins)} failed (exit {result.returncode}): "
                            f"{result.stderr.strip().splitlines()[-1:]}; check the package index, or pass --no-site")
        members = {}
        for wheel in sorted(Path(wheels).glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if not name.endswith("/"):
                        members[name] = archive.read(name)
    _write_tar_xz(dest / "site.tar.xz", members, XZ_BEST)
    return {"from": "wheels", "python": python_version, "packages": pins}


def site_from_installed(dest: Path) -> dict:
    """`site.tar.xz` from the files of `SITE_PACKAGES` as installed here (the dry run's: same Python)."""
    members, mtimes = {}, {}
    for name in SITE_PACKAGES:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or ():
            path = Path(distribution.locate_file(file))
            if ".." in file.parts or not path.is_file():
                continue
            # Bytecode included, with the sources' mtimes, so imports need not compile it again.
            members[str(file)], mtimes[str(file)] = path.read_bytes(), int(path.stat().st_mtime)
    _write_tar_xz(dest / "site.tar.xz", members, preset=0, mtimes=mtimes)
    return {"from": "installed", "python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "packages": [f"{name}=={importlib.metadata.version(name)}" for name in SITE_PACKAGES]}


def _write_tar_xz(path: Path, members: dict[str, bytes], preset: int, mtimes: dict[str, int] | None = None) -> None:
    now = int(time.time())
    with lzma.open(path, "wb", preset=preset) as stream, tarfile.open(fileobj=stream, mode="w") as tar:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".so") else 0o644
            info.mtime = (mtimes or {}).get(name, now)
            tar.addfile(info, io.BytesIO(data))


def unpack_site(pack: Path, dest: Path) -> Path | None:
    """Extracts `site.tar.xz` into `dest` (a folder for PYTHONPATH); None when the pack has none."""
    archive = pack / "site.tar.xz"
    if not archive.is_file():
        return None
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        if hasattr(tarfile, "data_filter"):  # Python ≥ 3.11.4: refuse links and paths out of `dest`
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)
    return dest


# ---- sizes --------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def working_tree_bytes(repo: Path = REPO) -> int:
    """Bytes of what the device tool copies besides `carry`: tracked files, untracked files git does
    not ignore, and a `shared/` folder in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                            capture_output=True, check=True).stdout.decode().split("\0")
    files = {repo / name for name in listed if name}
    if (repo / "shared").is_dir():
        files |= {path for path in (repo / "shared").rglob("*") if path.is_file()}
    return sum(path.lstat().st_size for path in files if path.is_file() or path.is_symlink())


# ---- making and reading a pack ------------------------------------------------------------------


def make_pack(dest: Path, weights: Path, data_dir: Path, *, mantissa_bits: str = "auto", site: str = "wheels",
              python_version: str = "3.12", backbone: str = "resnet50", limit_mib: float = TRAVEL_LIMIT_MIB,
              headroom_mib: float = 0.25, data_preset: int = XZ_BEST, verify_images: int = 16,
              verify_image_size: int = 224, count_working_tree: bool = True) -> dict:
    """Packs weights, data and packages into `dest`, verifies the round trip, writes the manifest.

    Args:
        mantissa_bits: 1–10, or "auto": the most (≤ 10) for which the working tree plus the pack
            fits in `limit_mib - headroom_mib`.
        site: "wheels" (download for `python_version`), "installed" (this environment's files) or "none".
        count_working_tree: add the repository's travelling bytes to the total checked against the limit.

    Raises:
        PackError: when even 7 mantissa bits do not fit, or an input is missing.
    """
    started = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    for old in ("weights-f16-high.xz", "weights-f16-low.bin", "weights-f32.xz", "site.tar.xz", MANIFEST):
        (dest / old).unlink(missing_ok=True)
    manifest = {"format": FORMAT, "backbone": backbone,
                "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    manifest["data"] = pack_data(data_dir, dest, data_preset)
    manifest["site"] = (site_from_wheels(dest, python_version) if site == "wheels"
                        else site_from_installed(dest) if site == "installed" else None)
    tree_bytes = working_tree_bytes() if count_working_tree else 0
    limit = (limit_mib - headroom_mib) * MIB
    bits = 10 if mantissa_bits == "auto" else int(mantissa_bits)
    manifest["weights"] = pack_weights(weights, dest, bits)
    total = tree_bytes + folder_bytes(dest)
    if mantissa_bits == "auto" and total > limit:
        bits = _bits_that_fit(manifest["weights"]["float16_values"], total - limit)
        manifest["weights"] = pack_weights(weights, dest, bits)
        total = tree_bytes + folder_bytes(dest)
    parts = {str(path.relative_to(dest)): path.stat().st_size for path in sorted(dest.rglob("*")) if path.is_file()}
    manifest["sizes"] = {"pack_bytes": folder_bytes(dest), "working_tree_bytes": tree_bytes, "total_bytes": total,
                         "limit_bytes": int(limit_mib * MIB), "parts": parts}
    if total > limit_mib * MIB:
        raise PackError(f"the working tree ({tree_bytes / MIB:.2f} MiB) and the pack ({folder_bytes(dest) / MIB:.2f} "
                        f"MiB) exceed {limit_mib} MiB even at {bits} mantissa bits; make the working tree smaller")
    manifest["verify"] = verify_pack(dest, manifest, weights, data_dir, verify_images, verify_image_size)
    manifest["pack_seconds"] = round(time.perf_counter() - started, 1)
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _bits_that_fit(values: int, excess_at_10_bits: int) -> int:
    """The most mantissa bits (7–10) whose smaller low part makes up for `excess_at_10_bits`; each
    bit dropped saves `values / 8` bytes (the high bytes compress alike at any width, within ~1 kB)."""
    for bits in range(9, 6, -1):
        if values * (10 - bits) // 8 >= excess_at_10_bits + 16 * 1024:
            return bits
    return 7


def read_manifest(pack: Path) -> dict:
    path = pack / MANIFEST
    if not path.is_file():
        raise PackError(f"{pack} holds no {MANIFEST}; make it first with `python -m benchmarks.gpu_pack pack`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise PackError(f"{path} is format {manifest.get('format')}, this code reads {FORMAT}; make the pack again")
    return manifest


def unpack(pack: Path, dest: Path) -> dict:
    """Unpacks into `dest`: `weights.weights.h5`, `data/` (raw IDX) and `site/`. Returns their paths."""
    manifest = read_manifest(pack)
    dest.mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.perf_counter()
    site = unpack_site(pack, dest / "site")
    timings["site_seconds"] = round(time.perf_counter() - started, 2)
    weights = unpack_weights(pack, manifest["weights"], dest / WEIGHTS_FILE)
    timings["weights_seconds"] = round(time.perf_counter() - started - timings["site_seconds"], 2)
    data = unpack_data(pack, manifest["data"], dest / "data")
    timings["seconds"] = round(time.perf_counter() - started, 2)
    return {"weights": str(weights), "data_dir": str(data), "site": str(site) if site else None,
            "backbone": manifest["backbone"], "mantissa_bits": manifest["weights"]["mantissa_bits"], **timings}


# ---- round-trip check ---------------------------------------------------------------------------


def verify_pack(pack: Path, manifest: dict, weights: Path, data_dir: Path, images: int, image_size: int) -> dict:
    """Unpacks into a temp folder and compares with the originals: every weight, the backbone's
    pooled features (tlkit's own input pipeline) on `images` real test images, and the data bytes."""
    import keras

    from tlkit.config import ModelConfig
    from tlkit.model import build_classifier

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        unpacked = unpack_weights(pack, manifest["weights"], scratch / WEIGHTS_FILE)
        unpack_data(pack, manifest["data"], scratch / "data")  # raises on any byte difference
        raw = read_idx_bytes(data_dir, "t10k-images-idx3-ubyte")
        header, shape = _idx_header(raw)
        test_images = np.frombuffer(raw, np.uint8, offset=header).reshape(shape)[:images, :, :, None]
        models, features = [], []
        for path in (weights, unpacked):
            config = ModelConfig(backbone=manifest["backbone"], weights=str(path), image_size=image_size)
            classifier = build_classifier(config, num_classes=10, input_shape=test_images.shape[1:])
            models.append(classifier.backbone)
            features.append(np.asarray(classifier.feature_model().predict(test_images, verbose=0), np.float64))
    before = np.concatenate([np.ravel(w) for w in models[0].get_weights()]).astype(np.float64)
    after = np.concatenate([np.ravel(w) for w in models[1].get_weights()]).astype(np.float64)
    error = np.abs(after - before)
    normal = np.abs(before) >= 2.0 ** -14  # float16's normal range: below it the step is absolute
    cosine = np.sum(features[0] * features[1], 1) / (
        np.linalg.norm(features[0], axis=1) * np.linalg.norm(features[1], axis=1))
    feature_error = np.abs(features[1] - features[0])
    return {
        "backend": keras.backend.backend(),
        "weights_compared": int(before.size),
        "weights_identical": int(np.sum(error == 0)),
        "weight_max_abs_error": float(error.max()),
        "weight_mean_abs_error": float(error.mean()),
        "weight_max_relative_error": float((error[normal] / np.abs(before[normal])).max()),
        "feature_images": int(len(test_images)), "feature_image_size": image_size,
        "feature_max_abs_error": float(feature_error.max()),
        "feature_max_abs": float(np.abs(features[0]).max()),
        "feature_max_relative_l2_error": float(np.max(np.linalg.norm(features[1] - features[0], axis=1)
                                                      / np.linalg.norm(features[0], axis=1))),
        "feature_min_cosine": float(cosine.min()),
        "data": "identical (sha256 of every unpacked IDX file matches the original)",
    }


# ---- synthetic inputs for the dry run -----------------------------------------------------------


def synthetic_inputs(folder: Path, n_train: int = 200, n_test: int = 100) -> tuple[Path, Path]:
    """A mini_resnet `.weights.h5` and Fashion-MNIST-shaped IDX files whose class sets the
    brightness of a central square (learnable in one epoch)."""
    from tlkit.backbones import build_backbone
    from tlkit.data import IDX_FILES, write_idx

    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n_train), ("test", n_test)):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = rng.integers(0, 40, size=(count, 28, 28), dtype=np.uint8)
        images[:, 6:22, 6:22] += (40 + 20 * labels).astype(np.uint8)[:, None, None]
        write_idx(data_dir / f"{IDX_FILES[f'{split}_images']}.gz", images)
        write_idx(data_dir / f"{IDX_FILES[f'{split}_labels']}.gz", labels)
    weights = folder / "mini_resnet.weights.h5"
    build_backbone("mini_resnet", weights="none", image_size=32).model.save_weights(weights)
    return weights, data_dir


# ---- command line -------------------------------------------------------------------------------


def _summary(manifest: dict) -> str:
    sizes, verify, weights = manifest["sizes"], manifest["verify"], manifest["weights"]
    parts = ", ".join(f"{name} {size / MIB:.2f}" for name, size in sizes["parts"].items())
    return "\n".join([
        f"pack: {sizes['pack_bytes'] / MIB:.2f} MiB ({parts}) + working tree {sizes['working_tree_bytes'] / MIB:.2f} "
        f"MiB = {sizes['total_bytes'] / MIB:.2f} MiB of {sizes['limit_bytes'] / MIB:.0f} MiB",
        f"weights: {weights['float16_values']:,} values as float16 with {weights['mantissa_bits']} mantissa bits, "
        f"{weights['raw_values']:,} kept as float32; max |Δw| {verify['weight_max_abs_error']:.3g}, "
        f"max relative {verify['weight_max_relative_error']:.3g}",
        f"features ({verify['feature_images']} test images at {verify['feature_image_size']} px, "
        f"{verify['backend']}): max |Δ| {verify['feature_max_abs_error']:.3g} (max |f| "
        f"{verify['feature_max_abs']:.3g}), max relative L2 {verify['feature_max_relative_l2_error']:.3g}, "
        f"min cosine {verify['feature_min_cosine']:.6f}",
        f"data: {verify['data']}; packed in {manifest['pack_seconds']} s",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_pack", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="Pack the real weights, data and packages (for benchmarks/gpu_run.sh).")
    pack.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    pack.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    pack.add_argument("--out", type=Path, default=DEFAULT_PACK)
    pack.add_argument("--mantissa-bits", default="auto", choices=["auto", *map(str, range(7, 11))])
    pack.add_argument("--python-version", default="3.12", help="The GPU machine's Python, for the wheels.")
    pack.add_argument("--no-site", action="store_true", help="Leave the Python packages out.")
    pack.add_argument("--limit-mib", type=float, default=TRAVEL_LIMIT_MIB)
    pack.add_argument("--headroom-mib", type=float, default=0.25)
    synthetic = commands.add_parser("synthetic", help="A tiny pack of generated inputs (mini_resnet), for the dry run.")
    synthetic.add_argument("--out", type=Path, required=True)
    unpacking = commands.add_parser("unpack", help="Unpack a pack; prints the paths as JSON.")
    unpacking.add_argument("--pack", type=Path, default=DEFAULT_PACK)
    unpacking.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            print(json.dumps(unpack(args.pack, args.dest)))
            return 0
        if args.command == "synthetic":
            with tempfile.TemporaryDirectory() as scratch:
                weights, data_dir = synthetic_inputs(Path(scratch))
                manifest = make_pack(args.out, weights, data_dir, mantissa_bits="10", site="installed",
                                     backbone="mini_resnet", data_preset=1, verify_images=8, verify_image_size=32,
                                     count_working_tree=False)
        else:
            manifest = make_pack(args.out, args.weights, args.data_dir, mantissa_bits=args.mantissa_bits,
                                 site="none" if args.no_site else "wheels", python_version=args.python_version,
                                 limit_mib=args.limit_mib, headroom_mib=args.headroom_mib)
    except PackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(_summary(manifest))
    if args.command == "pack":
        carry = os.path.relpath(args.out.resolve(), REPO)
        print(f'device tool: run(command="bash benchmarks/gpu_run.sh", carry=["{carry}"], timeout_s=600)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
