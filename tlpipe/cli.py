"""The `tlpipe` command: the verbs that are not pipeline stages."""

import argparse
import sys

from tlpipe import params, presets
from tlpipe.errors import TlpipeError


def check(args: argparse.Namespace) -> None:
    loaded = params.load(args.params)
    print(f"{args.params}: ok (data.source = {loaded['data']['source']}, backbone = {loaded['backbone']['name']})")


def preset(args: argparse.Namespace) -> None:
    if args.name is None:
        print("\n\n".join(presets.describe(name) for name in presets.names()))
        return
    if args.set_args:
        print("dvc exp run " + " ".join(presets.set_args(args.name, args.source)))
        return
    changes = presets.apply(args.name, args.params, args.source)
    for key, (old, new) in changes.items():
        print(f"{key}: {old!r} -> {new!r}")
    print(f"{args.params}: preset '{args.name}' applied ({len(changes)} changes); run `dvc repro`.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    check_parser = verbs.add_parser("check", help="validate params.yaml without running anything")
    check_parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    check_parser.set_defaults(func=check)

    preset_parser = verbs.add_parser(
        "preset", help="apply a named data set preset to params.yaml (no NAME: list them)",
        description="Merge a preset's params into params.yaml, keeping its comments. Without NAME, "
                    "list the presets with their sources and the published figures they compete with.")
    preset_parser.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(presets.names())}")
    preset_parser.add_argument("--source", help="data.source to use instead of the preset's Kaggle one, "
                                                "e.g. path:/data/chest-xray-pneumonia.zip")
    preset_parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    preset_parser.add_argument("--set-args", action="store_true",
                               help="print `dvc exp run -S ...` for the preset instead of editing params.yaml")
    preset_parser.set_defaults(func=preset)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except TlpipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
