"""The `tlpipe` command: the verbs that are not pipeline stages."""

import argparse
import sys

from tlpipe import params
from tlpipe.errors import TlpipeError


def check(args: argparse.Namespace) -> None:
    loaded = params.load(args.params)
    print(f"{args.params}: ok (data.source = {loaded['data']['source']}, backbone = {loaded['backbone']['name']})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tlpipe", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    check_parser = verbs.add_parser("check", help="validate params.yaml without running anything")
    check_parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    check_parser.set_defaults(func=check)
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
