"""The ``weldfilm`` command line: one subcommand per workflow step.

Each subcommand lives in the module that does the work; that module defines
``add_cli_arguments(parser)`` and ``cli(args) -> int | None``. Only the chosen module is imported,
so ``weldfilm --help`` stays fast. A WeldfilmError prints its message (no traceback) and exits 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from weldfilm.errors import WeldfilmError

COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("weldfilm.data.synthetic", "write a synthetic dataset in the real on-disk layout"),
    "manifest": ("weldfilm.data.manifest", "scan a data root (or read the paper's manifest) and write manifest.csv"),
    "validate": ("weldfilm.data.validate", "open every file of every run and report what is missing or broken"),
    "card": ("weldfilm.data.card", "write the dataset card (counts per class and split, modality figure)"),
    "tiny-backbones": ("weldfilm.models.tiny", "write tiny random-init backbones of the paper's model classes"),
    "features": ("weldfilm.features", "compute and cache frozen-backbone features of one split"),
    "train": ("weldfilm.runner", "train one method (or ablation) with one seed"),
    "evaluate": ("weldfilm.evaluation", "score a trained run on a split; write scores.csv and metrics.json"),
    "score": ("weldfilm.scoring", "score new weld run folders with a trained run; decision, threshold, explanation"),
    "tables": ("weldfilm.paper.tables", "build the paper's tables from results files"),
    "figures": ("weldfilm.paper.figures", "build the paper's figures from results files"),
    "paper": ("weldfilm.paper.render", "render the paper (Markdown/HTML, PDF when LaTeX is present)"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weldfilm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"weldfilm {name}", description=help_text)
    module.add_cli_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.cli(args) or 0)
    except WeldfilmError as exc:
        print(f"weldfilm {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
