"""``python -m fastswitch ...`` is the ``fastswitch`` command."""

from fastswitch.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
