"""``fastswitch-bench``: ``compare`` starts deployments, so it runs from here (the launcher's
floor); every other command is the load generator's own (``client.loadgen.cli``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from client.loadgen import cli
from servekit.config import package_version


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fastswitch-bench`` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        print(f"{cli.PROG} {package_version()}")
        return 0
    if args and args[0] == "compare":
        from fastswitch.deploy.compare import compare_main

        try:
            return compare_main(args[1:])
        except KeyboardInterrupt:
            print(f"\n{cli.PROG}: interrupted", file=sys.stderr)
            return cli.EXIT_INTERRUPTED
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
