"""The user's own augmentation spec, read from a YAML or JSON file (``--spec FILE``), and the JSON
record of a spec that results carry.

    train:
      - RandomResizedCrop: {size: 224, scale: [0.08, 1.0]}
      - HorizontalFlip: {p: 0.5}
      - ColorJitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4}
      - Normalize: {}
    eval:
      - Resize: {size: 256}
      - CenterCrop: {size: 224}
      - Normalize: {}

Each item names an op by its class (any op in ``Op.registry``) and gives its dataclass fields;
a bare name (``- HorizontalFlip``) takes the defaults. ``eval`` may be left out: it is then
the deterministic ``eval_spec`` at the train section's output size, with its Normalize. Every
problem is a one-line ``SpecFileError`` naming the file, the section, the item and the op or
field. The same item list is the record (``spec_record``), so a result's spec loads back
(``spec_from_record``).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from feeding.io import display_path
from feeding.ops import Normalize, Op, Resize
from feeding.spec import AugSpec

SECTIONS = ("train", "eval")
SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}


class SpecFileError(ValueError):
    """A spec file that cannot be used, said in one line naming where in it the problem is."""


@dataclass(frozen=True)
class SpecFile:
    """The two specs a file gives: ``train`` for training feeds and benchmarks, ``eval`` for
    validation and prediction. ``name``: the file as results show it (no machine's directories)."""

    train: AugSpec
    eval: AugSpec
    name: str = "<spec>"

    def __post_init__(self) -> None:
        for section in SECTIONS:
            if not isinstance(getattr(self, section), AugSpec):
                raise TypeError(f"SpecFile.{section} must be an AugSpec, got {type(getattr(self, section)).__name__}")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SpecFile.name must be a non-empty string, got {self.name!r}")

    def record(self) -> dict:
        """Both sections as JSON-safe item lists (``spec_record``)."""
        return {section: spec_record(getattr(self, section)) for section in SECTIONS}


# ---------------------------------------------------------------- reading a file


def load_spec_file(path) -> SpecFile:
    """The specs in the YAML (.yaml, .yml) or JSON (.json) file at ``path``; SpecFileError (one line) if unusable."""
    given = str(path)  # messages name the file as the user typed it
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise SpecFileError(f"{given}: a spec file must end in {', '.join(SUFFIXES)} (YAML or JSON)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecFileError(f"{given}: no such spec file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecFileError(f"{given}: cannot read it: {_one_line(error)}") from None
    return spec_file_from_document(_parse(text, kind, given), shown_name(path), given)


def shown_name(path: Path) -> str:
    """``path`` as results and messages show it: as given where relative; else under ``<cache>`` or
    ``~`` (``display_path``); else the file name alone (results are committed; they carry no machine's
    directories)."""
    if not path.is_absolute():
        return path.as_posix()
    shown = display_path(path)
    return shown if shown.startswith(("<cache>", "~")) else path.name


def _parse(text: str, kind: str, name: str):
    """The document in ``text``; a syntax error as one line with its line number."""
    if kind == "json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecFileError(f"{name}: line {error.lineno}: JSON syntax error: {error.msg}") from None
    import yaml  # albumentations' dependency; only a YAML spec needs it

    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        raise SpecFileError(f"{name}: {_yaml_problem(error)}") from None
    except yaml.YAMLError as error:
        raise SpecFileError(f"{name}: YAML syntax error: {_one_line(error)}") from None


def _yaml_problem(error) -> str:
    """'line 2: YAML syntax error: while parsing a flow mapping: expected ',' or '}' (at line 4)':
    where the construct that failed began, where it failed."""
    problem, mark, context = _one_line(error.problem or error), error.problem_mark, error.context_mark
    if context is not None and error.context:
        at = f" (at line {mark.line + 1})" if mark is not None and mark.line != context.line else ""
        return f"line {context.line + 1}: YAML syntax error: {error.context}: {problem}{at}"
    return f"{f'line {mark.line + 1}: ' if mark is not None else ''}YAML syntax error: {problem}"


def spec_file_from_document(document, name: str = "<spec>", source: str | None = None) -> SpecFile:
    """The specs of a parsed file: a mapping with a ``train`` list and, optionally, an ``eval`` list.
    ``name``: the file as results show it; ``source``: as messages name it (default ``name``)."""
    name, shown = source or name, name
    if not isinstance(document, dict):
        got = "an empty file" if document is None else f"a {type(document).__name__}"
        raise SpecFileError(f"{name}: expected a mapping with a train: section (and optionally eval:), got {got}")
    unknown = [str(key) for key in document if key not in SECTIONS]
    if unknown:
        raise SpecFileError(f"{name}: unknown section(s) {', '.join(map(repr, unknown))} (sections: "
                            f"{', '.join(SECTIONS)})")
    if "train" not in document:
        raise SpecFileError(f"{name}: no train: section (it is required; eval: may be left out)")
    train = spec_from_record(document["train"], f"{name}: train")
    if "eval" not in document:
        return SpecFile(train, default_eval(train), shown)
    return SpecFile(train, spec_from_record(document["eval"], f"{name}: eval"), shown)


def train_and_eval(spec: "SpecFile | None", size) -> tuple[AugSpec, AugSpec]:
    """The train and eval specs a run uses: the spec file's sections, else the project's at ``size``."""
    from feeding.spec import eval_spec, train_spec

    return (spec.train, spec.eval) if spec is not None else (train_spec(size), eval_spec(size))


def default_eval(train: AugSpec) -> AugSpec:
    """Deterministic evaluation at ``train``'s output size, normalized as ``train`` is (the model
    must see the same statistics it was trained on)."""
    return AugSpec((Resize(train.output_size), train.normalize or Normalize()))


# ---------------------------------------------------------------- items and ops


def spec_from_record(items, where: str = "spec") -> AugSpec:
    """The AugSpec an item list gives (a file's section, or ``spec_record``'s output); ``where``
    starts every error message (e.g. 'spec.yaml: train')."""
    if not isinstance(items, list):
        raise SpecFileError(f"{where}: expected a list of ops, got {_kind(items)}")
    ops = tuple(op_from_item(item, f"{where}[{index}]") for index, item in enumerate(items))
    try:
        return AugSpec(ops)
    except (ValueError, TypeError) as error:
        raise SpecFileError(f"{where}: {_one_line(error)}") from None


def op_from_item(item, where: str) -> Op:
    """One op from ``Name``, ``{Name: null}`` or ``{Name: {field: value, ...}}``."""
    if isinstance(item, str):
        name, given = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, given = next(iter(item.items()))
        given = {} if given is None else given
    else:
        raise SpecFileError(f"{where}: expected an op name or a one-entry mapping {{Name: {{field: value}}}}, "
                            f"got {_kind(item)}")
    cls = _op_class(name, where)
    if not isinstance(given, dict):
        raise SpecFileError(f"{where} {name}: its fields must be a mapping (e.g. {{field: value}}), got {given!r}")
    return _build(cls, given, where)


def _op_class(name, where: str) -> type[Op]:
    by_name = {cls.__name__: cls for cls in Op.registry}
    if name not in by_name:
        raise SpecFileError(f"{where}: unknown op {name!r} (known: {', '.join(by_name)})")
    return by_name[name]


def _build(cls: type[Op], given: dict, where: str) -> Op:
    """``cls(**given)``, lists made tuples; an unknown or missing field, or the op's own complaint,
    as one line naming ``where`` and the op."""
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    listed = f"(fields: {', '.join(names) or 'none'})"
    for key in given:
        if key not in names:
            raise SpecFileError(f"{where} {cls.__name__}: unknown field {key!r} {listed}")
    missing = [f.name for f in fields if f.name not in given and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SpecFileError(f"{where} {cls.__name__}: missing field(s) {', '.join(map(repr, missing))} {listed}")
    kwargs = {key: _tuples(value) for key, value in given.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as error:
        message = _one_line(error)
        if message.startswith(cls.__name__ + "."):  # the op named its field already ("Resize.size must ...")
            raise SpecFileError(f"{where}: {message}") from None
        shown = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        raise SpecFileError(f"{where} {cls.__name__}({shown}): {message}") from None


def _tuples(value):
    """YAML and JSON lists as tuples, as the ops' pair fields (and a frozen op's hash) want."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


# ---------------------------------------------------------------- the record


def spec_record(spec: AugSpec) -> list[dict]:
    """``spec`` as JSON-safe items, every field given: ``[{"Resize": {"size": [224, 224]}}, ...]``;
    ``spec_from_record`` reads it back to an equal spec."""
    return [{type(op).__name__: {f.name: _lists(getattr(op, f.name)) for f in dataclasses.fields(op) if f.init}}
            for op in spec.ops]


def _lists(value):
    return [_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def spec_provenance(train: AugSpec | None = None, eval: AugSpec | None = None, spec_file: str | None = None) -> dict:
    """What a result records of its augmentation: ``{"spec": {"train": [...], "eval": [...]},
    "spec_file": the file's name, or None for the built-in spec}``, with the sections the command used."""
    sections = {name: spec_record(spec) for name, spec in (("train", train), ("eval", eval)) if spec is not None}
    return {"spec": sections, "spec_file": spec_file}


def describe_spec(spec: AugSpec) -> str:
    """'RandomResizedCrop(size=(64, 64)) -> HorizontalFlip() -> Normalize()': each op with the fields
    that differ from its defaults."""
    def shown(op: Op) -> str:
        changed = [f"{f.name}={getattr(op, f.name)!r}" for f in dataclasses.fields(op)
                   if f.init and (f.default is dataclasses.MISSING or getattr(op, f.name) != f.default)]
        return f"{type(op).__name__}({', '.join(changed)})"

    return " -> ".join(shown(op) for op in spec.ops)


def _kind(value) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"


def _one_line(error) -> str:
    """An exception's message on one line (a message of several lines joined with '; ')."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


__all__ = [
    "SECTIONS", "SpecFile", "SpecFileError", "default_eval", "describe_spec", "load_spec_file", "op_from_item",
    "shown_name", "spec_file_from_document", "spec_from_record", "spec_provenance", "spec_record",
]
