"""The ``vqtrace`` command line: one subcommand per module of vqtrace.commands.

Exit codes everywhere: 0 success, 1 the analysis found a problem (a violation or
a divergence), 2 bad usage or bad input, with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from .errors import VqtraceError

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_BAD_INPUT = 2

#: Subcommand modules under vqtrace.commands, in the order --help lists them.
COMMANDS = (
    "demo",
    "live",
    "dump",
    "show",
    "stats",
    "export",
    "decode",
    "features",
    "replay",
    "wireshark",
    "tui",
)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(EXIT_BAD_INPUT)


class VersionAction(argparse.Action):
    """``--version``, looking the version up only when asked (importlib.metadata is slow to import)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from . import __version__

        sys.stdout.write(f"vqtrace {__version__}\n")
        parser.exit()


def _command_modules(names: Sequence[str] = COMMANDS) -> list[ModuleType]:
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(f"{__package__}.commands.{name}"))
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.commands.{name}":
                raise
    return modules


def build_parser(command: str | None = None, *, arguments: bool = True) -> argparse.ArgumentParser:
    """The ``vqtrace`` parser: every subcommand, or only ``command`` when it is one (start-up stays cheap).

    ``arguments=False`` leaves the subcommands' own arguments out: enough for the
    top-level ``--help``, usage and "invalid choice" errors, which never show them.
    """
    parser = OneLineParser(
        prog="vqtrace",
        description="Protocol analyser and trace debugger for virtio and vhost-user.",
        epilog="Exit status: 0 success, 1 the analysis found a problem, 2 bad usage or bad input.",
    )
    parser.add_argument("--version", action=VersionAction, help="show the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    modules = _command_modules((command,)) if command in COMMANDS else []
    if not modules:  # no command, or not one of ours: the full list, for the help and the error
        modules = _command_modules()
    for module in modules:
        name = module.__name__.rsplit(".", 1)[1]
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        subparser = sub.add_parser(name, help=summary, description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        if arguments or name == command:
            module.add_arguments(subparser)
        subparser.set_defaults(run=module.run, command_parser=subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # vqtrace uses numpy for vectorised passes, never for BLAS: without this, importing numpy
    # starts one OpenBLAS thread per core (CPU at start-up, memory, and on a small machine a
    # thread the live tracer's peers could use). A user's own setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # `vqtrace COMMAND ...` imports only COMMAND's module. Otherwise every command is listed;
    # their own arguments are built only if some word could select one (not for --help,
    # no command or an unknown one, whose output never shows them).
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command, arguments=command is None and any(word in COMMANDS for word in argv))
    args, extras = parser.parse_known_args(argv)
    if extras:
        # Positional words after options (`decode LAYER --queue-size 4 HEX`) go to
        # the command's list positional, when it has one; anything else is an error.
        spill = getattr(args, "positional_list", None)
        if spill is None or any(word.startswith("-") and len(word) > 1 for word in extras):
            getattr(args, "command_parser", parser).error(f"unrecognized arguments: {' '.join(extras)}")
        getattr(args, spill).extend(extras)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    prog = f"vqtrace {args.command}"
    try:
        return int(args.run(args) or 0)
    except VqtraceError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`vqtrace show ... | head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
