"""`python -m tlkit.train`: the command line, generated from `tlkit.config`.

Every `Config` field is a flag (see `--help`); values are applied on top of
`--preset`, then `--config FILE`, then the flags themselves.

Example:

```
python -m tlkit.train --preset cpu --data-dir ../shared/data/fashion-mnist \\
    --weights ../shared/weights/resnet50_imagenet_notop.weights.h5 --unfreeze conv5
```
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tlkit import runs
from tlkit.config import PRESETS, Config, ConfigError, apply_overrides, field_specs, read_config_file

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tlkit.train",
        description="Transfer learning on Fashion-MNIST: frozen-backbone head stage, then fine-tuning.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="Start from a preset recipe.")
    parser.add_argument("--config", metavar="FILE", help="A .json or .toml config file (nested like config.json).")
    parser.add_argument("--run-dir", metavar="DIR",
                        help="Use this existing run directory (e.g. queued by the explorer); "
                             "its config.json is the base config.")
    parser.add_argument("--resume", action="store_true",
                        help="With --run-dir: continue after the last completed stage.")
    parser.add_argument("--dry-run", action="store_true", help="Print the resolved config and exit.")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0: silent, 1: a progress bar per epoch, 2: one line per epoch (for log files).")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for spec in field_specs():
        if spec.key == "preset":  # recorded by --preset itself
            continue
        group_name = spec.path[0] if len(spec.path) > 1 else "run"
        group = groups.get(group_name) or parser.add_argument_group(group_name)
        groups[group_name] = group
        help_text = spec.help
        if spec.min is not None or spec.max is not None:
            help_text += f" Range [{spec.min}, {spec.max}]."
        kwargs = {"dest": spec.key, "default": argparse.SUPPRESS, "help": f"{help_text} Default: {spec.default}."}
        if spec.type is bool:
            group.add_argument(f"--{spec.flag}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(f"--{spec.flag}", metavar=spec.type.__name__.upper(), choices=spec.choices,
                               **kwargs)
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset → config file / run dir config → flags, then validation."""
    flags = {key: value for key, value in vars(args).items() if "." in key or key in _TOP_LEVEL}
    if args.run_dir:
        stored = runs.Run(args.run_dir).config()
        if stored is None:
            raise ConfigError(f"--run-dir {args.run_dir!r} has no readable config.json")
        config = Config.from_dict(stored)
    elif args.preset:
        config = Config.from_preset(args.preset)
    else:
        config = Config()
    if args.config:
        values = read_config_file(args.config)
        preset = values.pop("preset", None)
        if preset and not args.preset:
            config = Config.from_preset(preset)
        config = apply_overrides(config, values)
    return apply_overrides(config, flags).validate()


_TOP_LEVEL = {spec.key for spec in field_specs() if len(spec.path) == 1} - {"preset"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        if args.run_dir and Path(args.run_dir).is_dir():
            runs.Run(args.run_dir).update_status(state="failed", error=str(error))
        return EXIT_USAGE
    if args.dry_run:
        print(config.to_json())
        return EXIT_OK

    from tlkit.training import RunCancelled, describe_error, train  # imports Keras: after arg checks

    run = runs.Run(args.run_dir) if args.run_dir else None
    try:
        run = train(config, run=run, resume=args.resume, verbose=args.verbose)
    except RunCancelled as error:
        print(f"\ncancelled: {error}", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as error:  # status.json already says failed with the reason
        print(f"\nerror: {describe_error(error)}", file=sys.stderr)
        return EXIT_FAILED
    metrics = run.metrics() or {}
    seconds = metrics.get("seconds", {}).get("total")
    print(f"\ntest accuracy {metrics.get('test_accuracy', float('nan')):.4f} "
          f"(macro-F1 {metrics.get('macro_f1', float('nan')):.4f}) in {seconds:.0f} s on "
          f"{metrics.get('backend')}; run directory: {run.path}")
    return EXIT_OK
