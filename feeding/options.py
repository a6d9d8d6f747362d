"""argparse types shared by the feedbench commands: each turns bad text into a clear message."""
from __future__ import annotations

import argparse

from feeding.checks import Shape, parse_size


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def size(text: str) -> Shape:
    try:
        return parse_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every command's help: defaults shown after each option's text, descriptions kept as written.

    A default that says nothing (None, False, an empty list) is not shown: "(default: None)"
    next to ``--data`` would hide what the help text says happens without it.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], ()) or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def listed(convert=str):
    """An argparse ``type`` for one token of a list option: ``a,b`` (commas), or several tokens.

    Use with ``nargs="+"`` and ``action=FlattenList``, so that ``--sizes 224,192``,
    ``--sizes 224 192`` and ``--sizes 224, 192`` mean the same in every command.
    """
    def parse(text: str) -> tuple:
        values = []
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                values.append(convert(part))
            except (argparse.ArgumentTypeError, ValueError) as error:
                raise argparse.ArgumentTypeError(str(error)) from None
        return tuple(values)

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse names the type in its errors
    return parse


class FlattenList(argparse.Action):
    """Joins the tuples that ``listed`` parsed from each token into one tuple."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        flat = tuple(item for chunk in values for item in chunk)
        if not flat:
            parser.error(f"{option_string} needs at least one value")
        setattr(namespace, self.dest, flat)


def plain_text(docstring: str) -> str:
    """A docstring as help text: RST's ``literal`` markup dropped (a terminal shows it verbatim)."""
    return docstring.replace("``", "")


SPEC_HELP = ("augmentation spec, YAML or JSON, with train: and eval: sections (see README); default: the "
             "benchmark spec")


def add_spec_argument(parser: argparse.ArgumentParser, help_text: str = SPEC_HELP) -> None:
    parser.add_argument("--spec", metavar="FILE", help=help_text)


def spec_from_args(parser: argparse.ArgumentParser, argv: list[str], fixed: tuple[str, ...] = ()):
    """The ``--spec`` file of ``argv``, loaded (``feeding.spec_file.SpecFile``), or None without one.

    ``fixed``: the destinations of the options a spec decides (``--size``, ``--rotate``): given
    as well, they are a ValueError, not silently ignored. To tell an option given from one left at
    its default, ``argv`` is parsed again into a namespace that already holds a marker for each:
    argparse fills in only the defaults a namespace lacks.
    """
    unset = object()
    given = parser.parse_args(argv, argparse.Namespace(**dict.fromkeys(fixed, unset)))
    if given.spec is None:
        return None
    from feeding.spec_file import load_spec_file

    clashing = ["--" + dest.replace("_", "-") for dest in fixed if getattr(given, dest) is not unset]
    if clashing:
        raise ValueError(f"--spec {given.spec} sets the augmentation and its output size: drop "
                         f"{' and '.join(clashing)}")
    return load_spec_file(given.spec)
