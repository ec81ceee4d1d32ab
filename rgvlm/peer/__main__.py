"""``python -m rgvlm.peer install``: install d3rlpy beside the project (``make setup`` runs it).

d3rlpy pins an old gymnasium; installing it with its pins would downgrade the project's. The
exact commands (``INSTALL_COMMANDS``) install it and what it really imports without them.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

from rgvlm.peer.d3rlpy_baseline import INSTALL_COMMANDS


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["install"]:
        print("usage: python -m rgvlm.peer install", file=sys.stderr)
        return 2
    for command in INSTALL_COMMANDS:
        words = shlex.split(command)
        subprocess.run([sys.executable, *words[1:], "-q"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
