"""``yolodist train|val|detect|export ...``: one console command for every script."""

from __future__ import annotations

import sys

COMMANDS = ("train", "val", "detect", "export")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: yolodist {{{','.join(COMMANDS)}}} [flags]\n\nRun 'yolodist COMMAND --help' for its flags.")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"yolodist: error: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = __import__(f"yolodist.cli.{command}", fromlist=["main"])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
