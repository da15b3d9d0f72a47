"""Flag groups shared by the commands, with upstream YOLOv5's names and aliases."""

from __future__ import annotations

import argparse


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", default="", help="cuda device, i.e. 0 or 0,1,2,3 or cpu (default: first GPU, else CPU)"
    )


def add_image_size(parser: argparse.ArgumentParser, default: int | None) -> None:
    parser.add_argument(
        "--imgsz",
        "--img",
        "--img-size",
        dest="imgsz",
        type=int,
        default=default,
        help="train, val image size (pixels)",
    )


def add_run_dir(parser: argparse.ArgumentParser, project: str) -> None:
    parser.add_argument("--project", default=project, help="save to project/name")
    parser.add_argument("--name", default="exp", help="save to project/name")
    parser.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")


def add_local_rank(parser: argparse.ArgumentParser) -> None:
    # The legacy `python -m torch.distributed.launch` passes --local-rank=N (older torch: --local_rank).
    parser.add_argument(
        "--local-rank", "--local_rank", dest="local_rank", type=int, default=None, help=argparse.SUPPRESS
    )


class Refused(argparse.Action):
    """An upstream flag yolodist does not offer: using it stops with one line saying why and what instead."""

    def __init__(self, option_strings: list[str], dest: str, why: str, **kwargs: object) -> None:
        kwargs.pop("nargs", None)
        kwargs["default"] = argparse.SUPPRESS  # never in the parsed namespace
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.why = why

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string} {self.why}")


def add_refused(parser: argparse.ArgumentParser, refused: dict[tuple[str, ...], str]) -> None:
    """``{(flag, alias...): why}``: upstream flags that fail in one line instead of "unrecognized arguments"."""
    for flags, why in refused.items():
        parser.add_argument(*flags, action=Refused, why=why, dest=f"refused_{flags[0].lstrip('-')}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line plus a pointer to --help, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
