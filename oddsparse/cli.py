"""The ``oddsparse`` command line.

Subcommands are registered in :data:`SUBCOMMANDS`: each entry maps a name to ``(add_arguments, run)``,
where ``add_arguments(parser)`` declares its options and ``run(args) -> int`` executes it. Another
module adds a subcommand with :func:`register` (imports stay inside ``run`` so ``--help`` is fast).

Example:
    $ oddsparse generate --out data/toys --family toys --scenes 100 --seed 0 --workers 2
    $ oddsparse show data/toys/duck_0003 --out duck_0003.png
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from oddsparse.utils.errors import InputError

__all__ = ["SUBCOMMANDS", "register", "build_parser", "main", "report_bad_input"]

SUBCOMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {}


def register(name: str, add_arguments: Callable[[argparse.ArgumentParser], None],
             run: Callable[[argparse.Namespace], int], help: str = "") -> None:
    """Add (or replace) subcommand ``name``."""
    SUBCOMMANDS[name] = (add_arguments, run, help)


def _object_range(text: str) -> tuple[int, int]:
    """``"3-12"`` -> (3, 12); ``"6"`` -> (6, 6)."""
    try:
        parts = [int(p) for p in text.split("-")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--objects must look like 3-12 or 6, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not 1 <= parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"--objects must be LOW-HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return parts[0], parts[1]


# ------------------------------------------------------------------------------------- generate
def _generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="dataset folder (created; finished scenes are kept)")
    parser.add_argument("--family", required=True, choices=("parts", "toys"), help="object family")
    parser.add_argument("--scenes", required=True, type=int, help="number of scenes")
    parser.add_argument("--seed", required=True, type=int, help="dataset seed (same seed, same bytes)")
    parser.add_argument("--objects", default=(3, 12), type=_object_range, help="objects per scene, LOW-HIGH (default 3-12)")
    parser.add_argument("--views", default=20, type=int, help="views per scene (default 20)")
    parser.add_argument("--size", default=256, type=int, help="image height = width in pixels (default 256)")
    parser.add_argument("--workers", default=1, type=int, help="parallel processes (default 1)")
    parser.add_argument("--min-anomaly-pixels", default=0, type=int,
                        help="keep only anomalies that change at least this many pixels of their scene's views "
                             "(by 32 of 255 levels; 0, the default: not checked)")
    parser.add_argument("--background", default="gradient", choices=("gradient", "environment"),
                        help="behind the floor: the sky gradient (default) or a structured horizon (trees, buildings)")
    parser.add_argument("--categories", default="",
                        help="toys: the categories to draw, comma-separated; a leading + adds them to the default ten "
                             "(+banana,turtle,skateboard: the flat ones too); default: the ten of TOY_CATEGORIES")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _generate_run(args: argparse.Namespace) -> int:
    from oddsparse.data.synth import generate_dataset

    try:
        folders = generate_dataset(args.out, args.family, args.scenes, args.seed, objects=args.objects,
                                   views=args.views, size=args.size, workers=args.workers, progress=not args.quiet,
                                   min_anomaly_pixels=args.min_anomaly_pixels, background=args.background,
                                   categories=args.categories or None)
    except ValueError as error:  # bad arguments or a folder generated with other settings: no traceback
        raise InputError(str(error)) from error
    print(f"{len(folders)} scenes in {args.out} (splits in {args.out / 'splits.json'})")
    return 0


# ----------------------------------------------------------------------------------------- show
def _int_list(text: str) -> list[int]:
    """argparse type: ``"0,3"`` -> [0, 3], a usage error otherwise (:func:`~oddsparse.eval.evaluate.parse_int_list`,
    imported when an option is parsed, not when the command line is built)."""
    from oddsparse.eval.evaluate import parse_int_list

    return parse_int_list(text)


_int_list.__name__ = "int list"  # argparse names the expected type after it


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scene", type=Path, nargs="+", help="scene folder(s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="PNG to write (default ./<first scene name>_contact_sheet.png)")
    parser.add_argument("--views", type=_int_list, default=None, help="comma-separated view indices (default: all)")
    parser.add_argument("--columns", type=int, default=5, help="images per row (default 5)")


def _show_run(args: argparse.Namespace) -> int:
    from oddsparse.data.synth import write_contact_sheet

    views = args.views
    out = args.out if args.out is not None else Path(f"{args.scene[0].resolve().name}_contact_sheet.png")
    path = write_contact_sheet(args.scene if len(args.scene) > 1 else args.scene[0], out, views=views,
                               columns=args.columns)
    print(path)
    return 0


register("generate", _generate_arguments, _generate_run, "generate a synthetic odd-one-out dataset")
register("show", _show_arguments, _show_run, "write a contact sheet PNG of a scene (anomalies outlined in red)")


def _lazy(module: str, name: str) -> Callable:
    """``module.name``, imported when first called."""
    def call(*args):
        import importlib

        return getattr(importlib.import_module(module), name)(*args)
    return call


register("eval", _lazy("oddsparse.eval.evaluate", "add_eval_arguments"), _lazy("oddsparse.eval.evaluate", "run_eval"),
         "evaluate a detector checkpoint: object_AUROC / object_accuracy report (JSON) and figures")
register("predict", _lazy("oddsparse.predict", "add_predict_arguments"), _lazy("oddsparse.predict", "run_predict"),
         "detect odd-one-out anomalies in a scene or capture folder: JSON and box overlays")
register("compare", _lazy("oddsparse.eval.compare", "add_compare_arguments"),
         _lazy("oddsparse.eval.compare", "run_compare"),
         "compare two eval reports of the same scenes: object_AUROC with paired bootstrap intervals")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oddsparse", description="Odd-one-out anomaly detection on sparse voxels.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, run, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(_run=run)
    return parser


def report_bad_input(name: str, run: Callable[[], object]) -> int:
    """Call ``run()``; bad input (a missing file or folder, a path without permission, a scene folder not in the
    published format, a file that is not an oddsparse checkpoint, a failed write, an :class:`InputError`) ends it with
    ``NAME: error: MESSAGE`` on stderr and returns 2, without a traceback (``ODDSPARSE_TRACEBACK=1`` raises
    instead). Otherwise returns 0, or ``run()``'s int. The console script and the recipes' ``__main__`` use it."""
    import os

    from oddsparse.data.scene_io import SceneFormatError
    from oddsparse.utils.checkpoint import CheckpointError, WriteError

    # what bad input raises; any other OSError (too many open files, a broken pipe to a worker) is a fault
    # of the run, not of its input, and keeps its traceback
    bad_input = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError,
                 WriteError, SceneFormatError, CheckpointError, InputError)
    try:
        result = run()
    except bad_input as error:
        if os.environ.get("ODDSPARSE_TRACEBACK"):
            raise
        message = error.args[0] if isinstance(error, FileNotFoundError) and len(error.args) == 1 else error
        print(f"{name}: error: {message}", file=sys.stderr)
        return 2
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``oddsparse`` console script.

    Bad input (a missing file or folder, a scene folder not in the published format, a file that is not an
    oddsparse checkpoint, a failed write) ends the command with ``oddsparse COMMAND: error: MESSAGE`` (the
    message names the file and the field) and exit status 2, without a traceback; ``ODDSPARSE_TRACEBACK=1``
    raises it instead.
    """
    args = build_parser().parse_args(argv)
    return report_bad_input(f"oddsparse {args.command}", lambda: int(args._run(args) or 0))


if __name__ == "__main__":
    sys.exit(main())
