"""The ``hevitpose`` command: a thin dispatcher to each package's subcommand.

It lives at the top of the tree, outside model/, service/ and training/, because it names commands of
all three: the bottom layer (model/) must not know the layers built on it. Subcommands are imported only
when called, so a serving install without ``training/`` still runs ``hevitpose serve``.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, function, one-line help); each function takes argv and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "profile": ("model.profile", "main", "params and GFLOPs of every model against the paper"),
    "serve": ("service.cli", "main", "run the pose service"),
    "train": ("training.cli", "train_main", "train a model from a YAML recipe"),
    "eval": ("training.cli", "eval_main", "evaluate a checkpoint"),
    "export": ("training.cli", "export_main", "write a serving bundle and an ONNX file"),
    "average": ("training.average", "main", "average fine-tunes' weights into one checkpoint (a model soup)"),
    "synth": ("training.synth.cli", "main", "render a synthetic COCO-format people dataset"),
    "label": ("training.label", "main", "label images and videos with teacher models (COCO keypoints)"),
    "occluders": ("training.occluders", "main", "cut labelled people out with a teacher's mask (training occluders)"),
    "composite": ("training.composite", "main", "paste labelled cutouts onto people-free photos (a COCO set)"),
    "teacher-heatmaps": ("training.distill", "main", "BlazePose's heatmaps of a COCO set's people (distillation)"),
}


def usage() -> str:
    lines = ["usage: hevitpose COMMAND [ARGS...]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "Run 'hevitpose COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hevitpose: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"hevitpose {name}: not available in this install ({exc}); install the project's extras", file=sys.stderr)
        return 2
    return int(getattr(module, func_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
