"""`python -m tlkit.train`: the command line, generated from `tlkit.config`.

Every `Config` field is a flag (see `--help`). One precedence rule: a preset,
then a config file, then flags (each overrides the one before). The preset is
`--preset`, else the config file's `preset` key; with `--existing-run DIR` the
run's own config.json is the base instead, and a preset is refused.

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

from tlkit import environment, runs
from tlkit.config import (
    PRESETS,
    Config,
    ConfigError,
    apply_overrides,
    field_named_in,
    field_specs,
    read_config_file,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
PRECEDENCE_HELP = """\
Where values come from, later wins: defaults < preset (--preset, else the config file's
`preset` key) < config file (--config) < flags. With --existing-run DIR, that run's
config.json takes the place of defaults and preset (a preset is then an error).

New runs go into a new directory under --runs-dir (default $TLKIT_RUNS_DIR or ./runs);
--existing-run DIR trains in that one run directory (queued by the explorer, or to --resume)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tlkit.train",
        description="Transfer learning on small image datasets: frozen-backbone head stage, then fine-tuning.",
        epilog=PRECEDENCE_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="Start from a preset recipe.")
    parser.add_argument("--config", metavar="FILE", help="A .json or .toml config file (nested like config.json).")
    parser.add_argument("--existing-run", metavar="DIR",
                        help="Train in this existing run directory (e.g. queued by the explorer); its config.json "
                             "is the base config. Not to be confused with --runs-dir, where new runs are created.")
    parser.add_argument("--resume", action="store_true",
                        help="With --existing-run: continue after the last completed stage.")
    parser.add_argument("--dry-run", action="store_true", help="Print the resolved config and exit.")
    parser.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1,
                        help="0: silent, 1: a progress bar per epoch (default), 2: one line per epoch (for log files).")
    add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """A flag per `Config` field (but `preset`), in a group per config group; read them back with
    `config_flags` (`python -m tlkit.sweep` takes the same flags)."""
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
        help_text += f" Default: {spec.default}."
        if spec.key == "runs_dir":
            help_text += " (Not --existing-run, which names one run directory.)"
        kwargs = {"dest": spec.key, "default": argparse.SUPPRESS, "help": help_text}
        if spec.type is bool:
            group.add_argument(f"--{spec.flag}", action=argparse.BooleanOptionalAction, **kwargs)
        else:
            group.add_argument(f"--{spec.flag}", metavar=spec.type.__name__.upper(), choices=spec.choices,
                               **kwargs)


def config_flags(args: argparse.Namespace) -> dict:
    """The config fields given as flags, by dotted key (`{"model.dropout": "0.3"}`), not yet coerced."""
    return {key: value for key, value in vars(args).items() if "." in key or key in _TOP_LEVEL}


def resolve_config(args: argparse.Namespace) -> Config:
    """Applies the precedence rule (see `PRECEDENCE_HELP`), then validates.

    Raises:
        ConfigError: for invalid values, and for flags that would do nothing or silently
            replace something (a preset with --existing-run, --resume without it).
    """
    flags = config_flags(args)
    file_values = read_config_file(args.config) if args.config else {}
    file_preset = file_values.pop("preset", "") or ""
    if args.resume and not args.existing_run:
        raise ConfigError("--resume needs --existing-run DIR: the run directory to continue")
    if args.existing_run:
        preset = args.preset or file_preset
        if preset:
            source = "--preset" if args.preset else f"the preset key in {args.config}"
            raise ConfigError(
                f"--existing-run {args.existing_run}: its config.json is the base config, and {source} "
                f"({preset!r}) would replace it; drop the preset and pass the fields to change as flags"
            )
        if not Path(args.existing_run).is_dir():
            raise ConfigError(f"--existing-run {args.existing_run!r} is not a run directory (it does not exist); "
                              "pass a directory under --runs-dir, e.g. runs/<run id>")
        stored = runs.Run(args.existing_run).config()
        if stored is None:
            raise ConfigError(f"--existing-run {args.existing_run!r} has no readable config.json; "
                              "start a new run instead")
        config = Config.from_dict(stored)
    else:
        preset = args.preset or file_preset  # --preset is a flag: it wins over the file
        config = Config.from_preset(preset) if preset else Config()
    return apply_overrides(config, file_values, flags).validate()


_TOP_LEVEL = {spec.key for spec in field_specs() if len(spec.path) == 1} - {"preset"}


@environment.quiet_native_startup()  # TensorFlow's C++ start-up lines off stderr
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = resolve_config(args)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        if args.existing_run and Path(args.existing_run).is_dir() and runs.Run(args.existing_run).holder() is None:
            runs.Run(args.existing_run).update_status(state="failed", error=str(error),
                                                      error_field=field_named_in(str(error)))
        return EXIT_USAGE
    if args.dry_run:
        print(config.to_json())
        return EXIT_OK
    if not args.existing_run:
        try:
            runs.ensure_runs_dir(config.runs_dir)  # before the slow Keras import
        except runs.RunsDirError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_USAGE
    holder = runs.Run(args.existing_run).holder() if args.existing_run else None
    if holder is not None:  # before the slow Keras import; fit() holds the lock itself
        print(f"error: run {Path(args.existing_run).name} is being trained by pid {holder.get('pid')} on host "
              f"{holder.get('host')}; wait for it, or cancel it first", file=sys.stderr)
        return EXIT_FAILED

    from tlkit.training import RunCancelled, describe_error, fit  # imports Keras: after arg checks

    run = runs.Run(args.existing_run) if args.existing_run else None
    try:
        run = fit(config, run=run, resume=args.resume, verbose=args.verbose)
    except RunCancelled as error:
        print(f"\ncancelled: {error}", file=sys.stderr)
        return EXIT_CANCELLED
    except runs.RunLocked as error:  # another trainer holds the run: its files are left alone
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    except ConfigError as error:  # e.g. --resume with flags that change the model: nothing was written
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as error:  # status.json already says failed with the reason
        print(f"\nerror: {describe_error(error)}", file=sys.stderr)
        return EXIT_FAILED
    metrics = run.metrics() or {}
    seconds = metrics.get("seconds", {}).get("total")
    print(f"\ntest accuracy {metrics.get('test_accuracy', float('nan')):.4f} "
          f"(macro-F1 {metrics.get('macro_f1', float('nan')):.4f}) in {seconds:.0f} s on "
          f"{metrics.get('backend')}; run directory: {run.path}")
    return EXIT_OK
