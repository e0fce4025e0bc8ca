"""``isobox``: the command line.  Docker's verbs, flags and exit codes.

Exit codes: a verb's own result (the workload's exit code for run/start -a/exec), 125 for
isobox's own errors -- bad flags included, as Docker does --, 130 after Ctrl-C.

Only argparse is imported to parse; the verbs' module after parsing, so ``isobox --help``
and a usage error cost no more than that.
"""

from __future__ import annotations

import sys

from isobox.cli.parser import UsageError, build_parser, parse

__all__ = ["EXIT_USAGE", "build_parser", "main", "parse"]

EXIT_USAGE = 125


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv[:1]
    try:
        args = parse(argv)
        if getattr(args, "cmd", "help") == "help":
            args.help_parser.print_help()
            return 0
        from isobox.cli import commands

        return commands.dispatch(args)
    except UsageError as exc:
        print(f"Error: {exc.message} (see '{exc.prog} --help')", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        from isobox.errors import EXIT_ISOBOX_ERROR, IsoboxError

        if isinstance(exc, IsoboxError):
            print(f"Error: {exc.message}", file=sys.stderr)
            if exc.hint:
                print(f"hint: {exc.hint}", file=sys.stderr)
            return EXIT_ISOBOX_ERROR
        if debug:
            raise
        print(f"Error: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("hint: run with --debug for the traceback", file=sys.stderr)
        return EXIT_ISOBOX_ERROR


if __name__ == "__main__":
    sys.exit(main())
