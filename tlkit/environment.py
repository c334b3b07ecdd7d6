"""The machine a run or a benchmark runs on: devices, precision, versions, CPU.

One place for what `metrics.json` records about the environment and what the
benchmarks print about the machine. Importing this module does not import
Keras (the benchmark parent process must stay Keras-free); the functions that
need the backend import it when called.

Example:

```python
from tlkit import environment

environment.versions()["python"]        # '3.11.7'
environment.cpu_info()["model"]         # 'AMD EPYC ...'
environment.resolve_precision("auto")   # 'float32' on a CPU without bf16 instructions
```
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import threading
import warnings
from pathlib import Path

PACKAGES = ("keras", "tensorflow", "jax", "jaxlib", "torch", "numpy", "keras-hub")
# The package that carries each Keras backend's kernels.
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jaxlib", "torch": "torch"}
# Backends whose CPU kernels run bfloat16 faster than float32 on CPUs with native bf16
# support (docs/performance.md measures it per backend).
BF16_CPU_BACKENDS = ("tensorflow", "torch")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def versions(packages=PACKAGES) -> dict[str, str]:
    """Python's version and the installed version of each of `packages` (absent ones left out)."""
    found = {"python": platform.python_version()}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def cpu_info() -> dict:
    """Model name, family/model numbers and flags of the first processor (`/proc/cpuinfo`; Linux)."""
    info = {"model": platform.processor() or platform.machine(), "flags": []}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n")[0]
    fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    info.update(model=fields.get("model name", info["model"]), family=fields.get("cpu family"),
                model_number=fields.get("model"), flags=fields.get("flags", "").split())
    return info


# The widest vector instructions a CPU offers, widest first: what its kernels' speed hinges on.
VECTOR_EXTENSIONS = (("amx_tile", "AMX"), ("avx512_bf16", "AVX-512 + bf16"), ("avx512f", "AVX-512"),
                     ("avx2", "AVX2"), ("asimd", "NEON"))


def widest_vector_unit(flags) -> str | None:
    """`AMX`, `AVX-512 + bf16`, `AVX-512`, `AVX2` or `NEON` from `/proc/cpuinfo` flags; None for none of them."""
    flags = set(flags)
    return next((name for flag, name in VECTOR_EXTENSIONS if flag in flags), None)


def cpu_description() -> dict:
    """The CPU as metrics.json records it: model name, family/model numbers and widest vector unit."""
    info = cpu_info()
    vector = widest_vector_unit(info["flags"])
    described = {"model": info["model"], "family": info.get("family"), "model_number": info.get("model_number"),
                 "vector": vector}
    return {key: value for key, value in described.items() if value}


def cpu_has_bf16() -> bool:
    """True when the CPU advertises bf16 instructions (AVX512-BF16 or AMX-BF16; Linux only)."""
    return bool(set(cpu_info()["flags"]) & set(BF16_CPU_FLAGS))


def memory_gb() -> float | None:
    """Total RAM in GB (`/proc/meminfo`), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) * 1024 / 1e9, 1)
    except OSError:
        pass
    return None


# ---- XLA's CPU compiler (jax) ------------------------------------------------------------------

# jaxlib 0.10's XLA hands every convolution to YNNPACK, which runs many of ResNet50's smaller
# convolutions (all of stage 2, the 1x1s of stage 3) on one core; with convolutions left to XLA's
# own kernels, both cores work. On a 2-core CPU at 72 px this made the frozen prefix 1.32x and the
# conv5 training step 1.22x faster (docs/performance.md, section 4: jax vs jax+TLKIT_XLA_CPU_TUNING=0).
# Only for the jaxlib versions it was measured on: an XLA flag a version does not know aborts the process.
XLA_CPU_FLAGS = {"0.10": "--xla_cpu_experimental_ynn_fusion_type=-LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


def keras_backend_name(environ=os.environ) -> str:
    """The backend Keras will load (`KERAS_BACKEND`, else `~/.keras/keras.json`), without importing it."""
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    config = Path(environ.get("KERAS_HOME") or Path.home() / ".keras") / "keras.json"
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return json.loads(config.read_text()).get("backend") or "tensorflow"
    return "tensorflow"


def xla_cpu_tuning(environ=os.environ) -> bool:
    """Whether tlkit works around XLA's CPU convolutions under jax: the flag `tune_xla_cpu` adds, and
    small feature maps convolved as a matmul (`tlkit.model.convolve_small_maps_as_matmul`). The
    default; `TLKIT_XLA_CPU_TUNING=0` turns both off, e.g. to measure them side by side."""
    return keras_backend_name(environ) == "jax" and environ.get("TLKIT_XLA_CPU_TUNING") != "0"


def tune_xla_cpu(environ=os.environ) -> str | None:
    """Adds tlkit's measured XLA CPU flag to `XLA_FLAGS` when Keras will run on jax; returns it, or
    None when it does not apply (another backend, an unmeasured jaxlib, or the user set it already).
    Takes effect if called before jax starts its CPU client (importing tlkit does it);
    `TLKIT_XLA_CPU_TUNING=0` turns it off."""
    if not xla_cpu_tuning(environ):
        return None
    version = versions(("jaxlib",)).get("jaxlib", "")
    flag = XLA_CPU_FLAGS.get(".".join(version.split(".")[:2]))
    current = environ.get("XLA_FLAGS", "")
    if flag is None or flag.split("=")[0] in current:
        return None
    environ["XLA_FLAGS"] = f"{current} {flag}".strip()
    return flag


# ---- TensorFlow's oneDNN kernels -----------------------------------------------------------

# TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI/BF16 or AMX
# (TensorFlow RFC 400); elsewhere it runs Eigen's, whose convolution gradients are slow on the small maps
# of fine-tuning. On a 2-core AVX2 CPU: a 3x3 convolution's forward and backward pass (batch 64, 512
# channels, 3x3 maps) took 266 ms with Eigen and 88 ms with oneDNN, and the fine-tuning stage of the
# regression check (tests/test_regression.py) 245 s vs 34 s; docs/performance.md compares whole stages
# (`tensorflow` vs `tensorflow+TF_ENABLE_ONEDNN_OPTS=0`). Where TensorFlow enables them itself, nothing changes.


def use_onednn(environ=os.environ) -> bool:
    """Sets `TF_ENABLE_ONEDNN_OPTS=1` when Keras will run on TensorFlow and the user has not set it;
    returns whether it set it. Takes effect if called before TensorFlow is imported (importing tlkit
    does it); `TF_ENABLE_ONEDNN_OPTS=0` keeps Eigen's kernels. TensorFlow reads the setting once, when it
    loads, so after `import keras` it comes too late: then it warns if Eigen's kernels are what runs (on a
    2-core AVX2 CPU the fine-tune stage ran 3.0x slower with them: 136 vs 45 s per epoch of 5,400 images,
    conv5 on cached activations)."""
    if keras_backend_name(environ) != "tensorflow" or "TF_ENABLE_ONEDNN_OPTS" in environ:
        return False
    environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
    if "tensorflow" in sys.modules and tensorflow_onednn_enabled() is False:
        warnings.warn("TensorFlow was imported before tlkit, so it runs Eigen's CPU kernels instead of oneDNN's "
                      "(fine-tuning ran 3x slower with them on an AVX2 CPU). Import tlkit before keras or "
                      "tensorflow, or set TF_ENABLE_ONEDNN_OPTS=1 in the environment before starting Python.",
                      stacklevel=3)
    return True


def tensorflow_onednn_enabled() -> bool | None:
    """Whether the loaded TensorFlow runs its oneDNN kernels, whoever chose them; None where its private
    module that says so is absent."""
    with contextlib.suppress(ImportError, AttributeError):
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    return None


# ---- jax's compiled programs, kept on disk --------------------------------------------------

# A jax run compiles hundreds of small programs (initialisers, optimizer and metric updates, each new batch
# shape) besides its train and predict steps. Kept on disk, every later run of the same model (a resume, the
# next run of a sweep or from the explorer, the test suite's many small runs) reads them back: a smoke run
# (a test, 2 cores) took 19 s instead of 53 s, a `cpu`-preset run on 1,500 images 58.7 s instead of 77.9 s
# (docs/performance.md, section compile_cache). Most take well under jax's default 1 s
# threshold for caching, so everything is kept, within a size limit (least recently used entries go first).
JAX_COMPILATION_CACHE_BYTES = 2 << 30


def default_cache_dir(environ=os.environ) -> Path:
    """Where tlkit keeps what later runs reuse: `TLKIT_CACHE_DIR`, else `~/.cache/tlkit`."""
    return Path(environ.get("TLKIT_CACHE_DIR") or Path.home() / ".cache" / "tlkit")


def keep_jax_compilations(environ=os.environ) -> str | None:
    """Points jax's persistent compilation cache at `<cache dir>/jax` when Keras will run on jax; returns
    the directory, or None when it does not apply (another backend, the user's own
    `JAX_COMPILATION_CACHE_DIR`, or `TLKIT_JAX_COMPILATION_CACHE=0`). Takes effect if called before jax
    is imported (importing tlkit does it); jax keys each entry by the program, its version and its flags."""
    if keras_backend_name(environ) != "jax" or environ.get("TLKIT_JAX_COMPILATION_CACHE") == "0":
        return None
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    directory = str(default_cache_dir(environ) / "jax")
    environ["JAX_COMPILATION_CACHE_DIR"] = directory
    environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    with contextlib.suppress(ImportError):  # jax needs filelock to enforce the size limit
        import filelock  # noqa: F401

        environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(JAX_COMPILATION_CACHE_BYTES))
    return directory


# ---- glibc's allocator (torch) ---------------------------------------------------------------

# torch's CPU tensors come from glibc's malloc. Once a functional model frees each activation after its
# last reader (`tlkit.model.release_intermediates`), glibc hands the big blocks back to the kernel and
# the next batch faults them in again: a frozen ResNet50 forward at 96 px, batch 64, took 1.20-1.32 s
# instead of 0.97-1.07 s. Blocks up to 512 MB kept on the heap (and the heap trimmed only past 1 GB free)
# bring it to 0.95-1.00 s at half the peak memory (1.1-1.3 GB vs 2.4-2.5 GB).
MALLOC_OPTIONS = {"M_TRIM_THRESHOLD": (-1, 1 << 30), "M_MMAP_THRESHOLD": (-3, 512 << 20)}
MALLOC_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def torch_memory_tuning(environ=os.environ) -> bool:
    """Whether tlkit frees activations early and tunes glibc's allocator under torch (the default;
    `TLKIT_TORCH_MEMORY_TUNING=0` turns both off, e.g. to measure them side by side)."""
    return keras_backend_name(environ) == "torch" and environ.get("TLKIT_TORCH_MEMORY_TUNING") != "0"


def tune_torch_allocator(environ=os.environ) -> list[str]:
    """Keeps freed memory on glibc's heap when Keras will run on torch (Linux with glibc only); returns
    the options set, [] when it does not apply (another backend, another C library, the user's own
    `MALLOC_*_` settings, `torch_memory_tuning` off)."""
    if (not torch_memory_tuning(environ) or any(name in environ for name in MALLOC_ENV)
            or platform.libc_ver()[0] != "glibc"):
        return []
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return []
    return [name for name, (option, value) in MALLOC_OPTIONS.items() if mallopt(option, value) == 1]


def list_devices() -> list[str]:
    """Devices of the current Keras backend, e.g. `["cpu:0"]` or `["gpu:0", "gpu:1"]`."""
    import keras

    if keras.backend.backend() != "torch":
        return list(keras.distribution.list_devices())
    # Backend-specific helper: Keras' list_devices is not implemented for torch.
    import torch

    gpus = [f"gpu:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return gpus or ["cpu:0"]


def device_info() -> dict:
    """What metrics.json records about the hardware."""
    info = {"devices": list_devices(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "cpu": cpu_description()}
    if os.environ.get("XLA_FLAGS"):
        info["xla_flags"] = os.environ["XLA_FLAGS"]
    import keras

    if keras.backend.backend() == "tensorflow" and (onednn := tensorflow_onednn_enabled()) is not None:
        info["tensorflow_onednn"] = onednn
    return info


def resolve_precision(precision: str) -> str:
    """`auto` → mixed_float16 on a GPU (Keras adds loss scaling), mixed_bfloat16 on a CPU with
    native bf16 instructions for backends that use them, else float32; other values unchanged."""
    if precision != "auto":
        return precision
    import keras

    devices = [device.lower() for device in list_devices()]
    if any(device.startswith(("gpu", "cuda")) for device in devices):
        return "mixed_float16"
    if keras.backend.backend() in BF16_CPU_BACKENDS and cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"


# ---- native start-up noise ---------------------------------------------------------------------

# TensorFlow's C++ start-up lines: written to fd 2 below Python (logging cannot quiet them, nor can
# TF_CPP_MIN_LOG_LEVEL in current versions) on every run, whatever the backend: Keras imports
# TensorFlow to save a model. Only these exact messages are dropped; anything else passes.
NATIVE_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|triggered tf\.function retracing"
)


@contextlib.contextmanager
def quiet_native_startup(enabled: bool = True):
    """Filters `NATIVE_NOISE` lines out of this process's stderr (fd 2) for the `with` block.

    Every other line reaches stderr as it comes. `TLKIT_NATIVE_LOGS=1` keeps everything.

    Example:

    ```python
    with environment.quiet_native_startup():
        import tensorflow  # no oneDNN / CUDA / absl lines
    ```
    """
    if not enabled or os.environ.get("TLKIT_NATIVE_LOGS"):
        yield
        return
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not NATIVE_NOISE.search(line.decode("utf-8", "replace")):
                    os.write(original, line)

    forwarder = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    forwarder.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)  # the pipe's last write end closes: the forwarder drains it and ends
        forwarder.join(timeout=5)
        os.close(original)
