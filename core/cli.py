"""The ``mixq`` command line: ``mixq <command> [<subcommand>] ...`` (``python -m core`` runs it too).

Each command registers itself in ``build_parser`` with a handler ``(args) -> int``; mixq's own
errors become one line on stderr and exit status 1, usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import sys

from core.errors import MixqError


def _zoo_list(args: argparse.Namespace) -> int:
    from core import zoo

    rows = [("NAME", "SOURCE PACKAGE", "INSTALLED", "CACHED")]
    for name in zoo.list_models():
        model = zoo.get(name)
        installed = model.installed()
        cached = installed and zoo.cached_path(name).is_file()
        rows.append((name, f"{model.package}=={model.version}", "yes" if installed else "no",
                     "yes" if cached else "no"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    missing = [zoo.get(n) for n in zoo.list_models() if not zoo.get(n).installed()]
    for model in missing:
        print(f"to install {model.name}: {model.install_command}")
    return 0


def _zoo_build(args: argparse.Namespace) -> int:
    from core import zoo

    if args.all == bool(args.names):
        args.parser.error(f"give model names or --all (not both); models: {', '.join(zoo.list_models())}")
    names = zoo.list_models() if args.all else args.names
    for name in names:
        zoo.get(name)  # unknown names fail before anything is built
    for name in names:
        print(zoo.build(name, force=args.force))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixq", description="mixq: post-training quantization workbench")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    zoo_parser = commands.add_parser("zoo", help="real pretrained models from registry packages")
    zoo_commands = zoo_parser.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    zoo_commands.add_parser("list", help="list zoo models: source package, installed?, cached?") \
        .set_defaults(handler=_zoo_list)
    build = zoo_commands.add_parser("build", help="build zoo models as ONNX (cached) and print their paths")
    build.add_argument("names", nargs="*", metavar="NAME", help="model name (see `mixq zoo list`)")
    build.add_argument("--all", action="store_true", help="build every zoo model")
    build.add_argument("--force", action="store_true", help="rebuild even if a cached file exists")
    build.set_defaults(handler=_zoo_build, parser=build)
    zoo_parser.set_defaults(handler=lambda args: _usage(zoo_parser))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage(sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (argparse's usage errors and --help included)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            return _usage(parser)
        return handler(args)
    except MixqError as exc:
        print(f"mixq: error: {exc}", file=sys.stderr)
        return 1
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
