"""The `fif` command line: thin wrappers over the library, one module per command.

Each command module defines ``add_parser(subparsers)`` that registers its sub-command and sets
``func(args) -> int``. The CLI owns everything users see: logging setup, printing, exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Order = order in `fif --help`. A module listed here must exist.
COMMANDS = ["run", "pretrain", "schedule", "budget", "data", "stream", "eval", "merge", "report", "sweep", "study",
            "update"]


class CliError(Exception):
    """An error to show the user as one message (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    from fif.core.version import __version__

    parser = argparse.ArgumentParser(
        prog="fif",
        description="FoMo-in-Flux: continual multimodal pretraining of CLIP under a compute budget.",
    )
    parser.add_argument("--version", action="version", version=f"fif {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"fif.cli.{name}").add_parser(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are the user's to fix: shown as one line, without a traceback (``-vv`` shows it).

    Evaluated only when an exception reaches :func:`main`, so commands import torch only if they need it.
    """
    from fif.core.typed import ConfigError
    from fif.model.clip import ModelLoadError
    from fif.runner.folder import TrainingDivergedError

    return (CliError, ConfigError, OSError, KeyError, ValueError, ModelLoadError, TrainingDivergedError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse gives a positional list (nargs="*") only its first run of values; a command that names its list
    # with set_defaults(intermixed=...) also takes the values after the options (`fif eval RUN --json k=v`).
    target = getattr(args, "intermixed", None)
    if extra and (target is None or any(a.startswith("-") for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, target).extend(extra)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except user_errors() as e:
        if args.verbose >= 2:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"fif {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fif {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
