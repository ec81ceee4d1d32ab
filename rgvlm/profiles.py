"""``python -m rgvlm.profiles NAME [-S KEY=VALUE ...] [--out FILE]``: a profile (an overlay of
params.yaml, ``profiles/NAME.yaml``) written out merged and checked, for DVC, which reads
``params.yaml`` itself. E.g. ``python -m rgvlm.profiles gpu --out params.yaml`` (``make profile
PROFILE=gpu``). The loader and the overlay rules are in :mod:`rgvlm.params` (the one loader of
parameters files, which every stage imports); the checks are :mod:`rgvlm.sections`'.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rgvlm.params import ParamError, apply_overrides, dump, load_profile, profile_path, write_params
from rgvlm.sections import check_params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rgvlm.profiles",
        description="Write a profile (an overlay of params.yaml) out merged, checked by every section's checker. "
                    "E.g. `python -m rgvlm.profiles gpu --out params.yaml`, then `make data && dvc repro`.")
    parser.add_argument("profile", help="a profile's name (tiny, gpu: profiles/NAME.yaml) or a parameters file")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="an override as `dvc exp run -S` takes it (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: standard output)")
    parser.add_argument("--no-check", action="store_true", help="skip the section checkers")
    args = parser.parse_args(argv)
    try:
        params = apply_overrides(load_profile(args.profile), args.overrides)
        if not args.no_check:
            check_params(params)
    except ParamError as error:
        print(f"{args.profile}: {error}", file=sys.stderr)
        return 2
    header = (f"Written by `python -m rgvlm.profiles {' '.join(argv if argv is not None else sys.argv[1:])}`: "
              f"{profile_path(args.profile)} merged onto the file it extends. Edit the profile, not this.")
    if args.out is None:
        sys.stdout.write(dump(params))
    else:
        write_params(params, args.out, header)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
