"""Launch-form logic: widgets derived from `tlkit.config.field_specs()`, and sweeps.

Nothing here knows tlkit's fields by heart: labels, help, ranges and choices
come from each `FieldSpec`, groups are the config's nested dataclasses (their
docstrings are the section captions) and defaults come from the presets. A new
config field therefore shows up in the explorer without touching this file.

Example:

```python
from explorer import forms

widgets = {w.key: w for w in forms.widget_specs()}
widgets["model.dropout"].kind  # 'slider'
config = forms.build_config({**forms.preset_values("smoke"), "model.dropout": 0.3})
```
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import math
import re
from typing import Any

from tlkit.config import (
    PRESET_NOTES,
    PRESETS,
    Config,
    ConfigError,
    FieldSpec,
    check_value,
    coerce,
    field_specs,
    flatten_dict,
)

# Fields the page handles itself: the preset selector, and the runs dir the explorer is bound to.
HIDDEN_FIELDS = ("preset", "runs_dir")
BACKENDS = ("tensorflow", "jax", "torch")


@dataclasses.dataclass(frozen=True)
class WidgetSpec:
    """How to render one config field.

    Attributes:
        key: the dotted config key (`model.dropout`).
        kind: `checkbox`, `selectbox`, `slider`, `number`, `log` (a slider over a 1-2-3-5 grid
            of decades, `options`) or `text`.
        label: short label (the field's name in words).
        help: the field's help text.
        options: choices for a selectbox; the grid of a `log` widget.
        min_value: lower bound (None: unbounded).
        max_value: upper bound (None: unbounded).
        step: increment for numbers and sliders.
        format: printf format for numbers (`%.1e` for log-scale values).
        optional: empty input means None.
    """

    key: str
    kind: str
    label: str
    help: str
    options: tuple = ()
    min_value: float | int | None = None
    max_value: float | int | None = None
    step: float | int | None = None
    format: str | None = None
    optional: bool = False


def specs_by_key() -> dict[str, FieldSpec]:
    return {spec.key: spec for spec in field_specs(Config)}


def label_for(spec: FieldSpec) -> str:
    return spec.path[-1].replace("_", " ").capitalize()


LOG_GRID_MANTISSAS = (1, 2, 3, 5)


def is_log_scale(spec: FieldSpec) -> bool:
    """Learning rates, L2 penalties, weight decay: the config marks them `scale="log"`."""
    return spec.scale == "log"


def log_grid(low: float | None, high: float | None, floor: float = 1e-7) -> tuple[float, ...]:
    """1, 2, 3, 5 × 10^k within [low, high] (0 first when allowed): a log-scale slider's stops."""
    high = 1.0 if high is None else float(high)
    start = max(float(low or 0.0), floor)
    stops = [0.0] if low is not None and low <= 0 else []
    for exponent in range(math.floor(math.log10(start)), math.ceil(math.log10(high)) + 1):
        for mantissa in LOG_GRID_MANTISSAS:
            value = float(f"{mantissa}e{exponent}")  # exact decimal, no 3 * 1e-5 round-off
            if start <= value <= high:
                stops.append(value)
    return tuple(stops)


def log_options(widget: WidgetSpec, *values: Any) -> list[float]:
    """The grid plus any current value off the grid (a preset's 3e-3 stays selectable)."""
    extra = {float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(set(widget.options) | extra)


def format_log(value: float) -> str:
    return "0" if value == 0 else f"{value:.1e}".replace(".0e", "e")  # 3e-03, 2.5e-04


def widget_spec(spec: FieldSpec) -> WidgetSpec:
    """Picks a widget for a field from its type, choices and range."""
    common = {"key": spec.key, "label": label_for(spec), "help": spec.help, "optional": spec.optional}
    if spec.type is bool:
        return WidgetSpec(kind="checkbox", **common)
    if spec.choices is not None:
        return WidgetSpec(kind="selectbox", options=tuple(spec.choices), **common)
    if spec.type is int:
        return WidgetSpec(kind="number", min_value=_as(int, spec.min), max_value=_as(int, spec.max),
                          step=1, **common)
    if spec.type is float:
        if is_log_scale(spec):
            return WidgetSpec(kind="log", options=log_grid(spec.min, spec.max), min_value=spec.min,
                              max_value=spec.max, format="%.0e", **common)
        bounded = spec.min is not None and spec.max is not None
        if bounded and spec.max - spec.min <= 1 and not spec.optional:
            # A [0, 1] range needs finer steps (weight decay 0.004) than a [0, 0.5] strength.
            step = 0.001 if spec.max - spec.min >= 1 else 0.01
            return WidgetSpec(kind="slider", min_value=float(spec.min), max_value=float(spec.max),
                              step=step, **common)
        return WidgetSpec(kind="number", min_value=spec.min, max_value=spec.max, step=0.1, format="%g",
                          **common)
    return WidgetSpec(kind="text", **common)


def _as(kind, bound):
    return None if bound is None else kind(bound)


def widget_specs() -> list[WidgetSpec]:
    """One widget per visible config field, in the config's declaration order."""
    return [widget_spec(spec) for spec in field_specs(Config) if spec.key not in HIDDEN_FIELDS]


def groups() -> list[tuple[str, str]]:
    """(group name, caption) for the config's top-level fields and each nested group.

    Group "" holds the top-level fields (seed, batch size...); captions are the
    nested dataclasses' docstrings.
    """
    found = [("", "Run-wide settings.")]
    config = Config()
    for field in dataclasses.fields(Config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            found.append((field.name, (type(value).__doc__ or "").strip().split("\n")[0]))
    return found


def group_of(key: str) -> str:
    return key.split(".")[0] if "." in key else ""


def preset_values(preset: str) -> dict[str, Any]:
    """Flat `{key: value}` of every field of a preset (the form's defaults)."""
    config = Config.from_preset(preset) if preset else Config()
    return {spec.key: spec.get(config) for spec in field_specs(Config)}


def normalise(key: str, value: Any) -> Any:
    """Form value → config value: typed text, '' for optional fields, ints from sliders."""
    spec = specs_by_key()[key]
    if isinstance(value, str):
        value = value.strip()
    value = coerce(spec, value)
    if spec.type is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    return value


def build_config(values: dict[str, Any]) -> Config:
    """A validated Config from flat form values.

    Raises:
        ConfigError: a value cannot be read or fails `Config.validate()`.
    """
    known = specs_by_key()
    flat = {key: normalise(key, value) for key, value in values.items() if key in known}
    return Config.from_dict(flat).validate()


def installed_backends() -> list[str]:
    return [name for name in BACKENDS if importlib.util.find_spec(name) is not None]


# ---- sweeps ---------------------------------------------------------------------

MAX_SWEEP_AXES = 2
MAX_SWEEP_VALUES = 3


def sweepable_keys() -> list[str]:
    return [widget.key for widget in widget_specs() if widget.key != "name"]


def parse_sweep_values(key: str, text: str) -> list[Any]:
    """'0.1, 0.3' → [0.1, 0.3], typed and range-checked through the field's spec.

    Raises:
        ConfigError: a value is unreadable or out of range, or too many/few values.
    """
    tokens = [token.strip() for token in text.split(",") if token.strip()]
    if not tokens:
        raise ConfigError(f"{key}: give 1 to {MAX_SWEEP_VALUES} comma-separated values")
    if len(tokens) > MAX_SWEEP_VALUES:
        raise ConfigError(f"{key}: at most {MAX_SWEEP_VALUES} values per field (got {len(tokens)})")
    values = [normalise(key, token) for token in tokens]
    for value in values:
        check_value(specs_by_key()[key], value)
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"{key}: values repeat")
    return values


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def sweep_configs(base: Config, axes: list[tuple[str, list[Any]]]) -> list[Config]:
    """The grid of configs over up to two fields; each is named and validated.

    Raises:
        ConfigError: too many axes, a repeated field, or an invalid grid point.
    """
    if len(axes) > MAX_SWEEP_AXES:
        raise ConfigError(f"sweep: at most {MAX_SWEEP_AXES} fields")
    keys = [key for key, _ in axes]
    if len(set(keys)) != len(keys):
        raise ConfigError("sweep: pick two different fields")
    configs = []
    base_name = base.name or base.preset or "sweep"
    for point in itertools.product(*(values for _, values in axes)):
        overrides = dict(zip(keys, point))
        label = "-".join(f"{key.split('.')[-1]}{_short(value)}" for key, value in overrides.items())
        config = base.replace(**overrides, name=f"{base_name}-{label}" if label else base_name)
        configs.append(config.validate())
    return configs


# ---- checking the form field by field -------------------------------------------


def field_label(key: str) -> str:
    """How the form names a field: `Data › Train limit` (group › label), `Seed` for run-wide ones."""
    spec = specs_by_key().get(key)
    label = label_for(spec) if spec else key
    group = group_of(key)
    return f"{group.capitalize()} › {label}" if group else label


def field_problems(values: dict[str, Any]) -> dict[str, str]:
    """`{config key: message}` for every field whose value is unreadable or out of range, else the
    first cross-field problem of `Config.validate()` under the key it names ("" when it names none).

    The messages name the form's field (`Data › Train limit: 5 is below the minimum 20`), not a flag.
    """
    known = specs_by_key()
    problems, flat = {}, {}
    for key, value in values.items():
        if key not in known:
            continue
        try:
            flat[key] = normalise(key, value)
            check_value(known[key], flat[key])
        except ConfigError as error:
            problems[key] = _for_the_form(str(error), key)
    if problems:
        return problems
    try:
        Config.from_dict(flat).validate()
    except ConfigError as error:
        key = _named_key(str(error))
        problems[key] = _for_the_form(str(error), key)
    return problems


def _named_key(message: str) -> str:
    """The config key a ConfigError starts with (`head.epochs / finetune.epochs: …` → head.epochs)."""
    head = message.split(":", 1)[0].split("/")[0].strip()
    return head if head in specs_by_key() else ""


def _for_the_form(message: str, key: str) -> str:
    """A ConfigError in the form's words: dotted keys and CLI flags become field labels."""
    if key and message.startswith(key + ":"):
        message = field_label(key) + message[len(key):]
    for other in sorted(specs_by_key(), key=len, reverse=True):
        if "." in other:
            message = re.sub(rf"(?<![\w.]){re.escape(other)}(?![\w.])", field_label(other), message)
    return name_form_fields(message)


def flag_labels() -> dict[str, str]:
    """`--data-dir` → `Data › Data dir`, for every config field's CLI flag."""
    return {f"--{spec.flag}": field_label(spec.key) for spec in field_specs(Config)
            if spec.key not in HIDDEN_FIELDS}


def error_for_form(message: str, error_field: str | None = None) -> str:
    """A trainer's error, pointing at the form field to fix: the field status.json's `error_field`
    names (the trainer knows which), else the fields of the CLI flags the message mentions."""
    if error_field in specs_by_key() and error_field not in HIDDEN_FIELDS:
        return f"{message} — set the field **{field_label(error_field)}** in the form."
    return name_form_fields(message)


def name_form_fields(message: str) -> str:
    """Replaces CLI flags in a message (a trainer's error) with the form field to set."""
    for flag, label in sorted(flag_labels().items(), key=lambda item: -len(item[0])):
        message = re.sub(rf"{re.escape(flag)}(?![\w-])", f"the field {label} ({flag})", message)
    return message


# ---- presets --------------------------------------------------------------------

def preset_note(preset: str) -> str:
    return PRESET_NOTES.get(preset, "")


def switch_preset(values: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """The form after picking preset `new`: what `new` defines, and the user's other edits kept.

    A field follows the new preset unless the user changed it from the old preset's value and the
    new preset does not define it: a data dir, weights file or run name survive a preset switch,
    a train limit that only the old preset set does not.
    """
    old_values, new_values = preset_values(old), preset_values(new)
    defined = set(flatten_dict(PRESETS.get(new, {})))
    switched = {}
    for key, value in new_values.items():
        edited = key in values and repr(values[key]) != repr(old_values.get(key))
        switched[key] = values[key] if edited and key not in defined else value
    switched["preset"] = new
    # A weights file the user picked stands for `imagenet` (a local copy) when the new preset wants it.
    picked = values.get("model.weights")
    if new_values.get("model.weights") == "imagenet" and picked not in (None, "imagenet", "none") \
            and values.get("model.backbone") == new_values.get("model.backbone"):
        switched["model.weights"] = picked
    return switched
