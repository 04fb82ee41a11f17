"""The configuration reference, read from the pydantic models themselves: every field of
``FlywheelConfig`` with its dotted path, type, default, range and description.

``flywheel config --describe`` prints it; ``docs/configuration.md`` is ``reference_markdown()``
(``make docs`` writes it; a test fails when the file and the models disagree).

    for section in config_sections():   # one per model: '' (the top level), 'model', 'generate.openai', ...
        for field in section.fields:    # its own leaves: FieldDoc(path='train.beta', type='list[float]', ...)
"""

from __future__ import annotations

import json
import textwrap
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

from infra.settings.root import FlywheelConfig

REGENERATE = "`make docs` (or `flywheel config --describe --markdown > docs/configuration.md`)"


@dataclass(frozen=True)
class FieldDoc:
    path: str  # as --set and the YAML file name it: train.beta
    type: str
    default: str  # JSON, as YAML reads it; 'required' when there is none
    constraints: str  # '>= 0, < 1', 'one of ...', '' when any value of the type goes
    description: str


@dataclass(frozen=True)
class SectionDoc:
    path: str  # '' for the top level
    description: str
    fields: list[FieldDoc]


def config_sections(model: type[BaseModel] = FlywheelConfig, path: str = "", description: str = "") -> list[SectionDoc]:
    """``model``'s own leaf fields as one section, then each nested model's sections, in declaration order."""
    leaves, nested = [], []
    for name, info in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        if _is_model(info.annotation):
            nested += config_sections(info.annotation, dotted, info.description or "")
        else:
            leaves.append(_field_doc(dotted, info))
    own_doc = (model.__dict__.get("__doc__") or "").strip()  # a section's docstring says more than its one-line field
    return [SectionDoc(path, own_doc or description, leaves), *nested]


def leaf_paths(model: type[BaseModel] = FlywheelConfig, path: str = "") -> list[str]:
    """Every leaf field's dotted path, straight from ``model_fields`` (what the reference must cover)."""
    out = []
    for name, info in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        out += leaf_paths(info.annotation, dotted) if _is_model(info.annotation) else [dotted]
    return out


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_doc(path: str, info: FieldInfo) -> FieldDoc:
    constraints = _constraints(info.metadata)
    if typing.get_origin(info.annotation) is typing.Literal:
        constraints.append("one of " + ", ".join(repr(v) for v in typing.get_args(info.annotation)))
    constraints += _value_constraints(info.annotation)
    type_name = "str" if typing.get_origin(info.annotation) is typing.Literal else _type_name(info.annotation)
    return FieldDoc(path, type_name, _default(info), ", ".join(constraints), info.description or "")


def _default(info: FieldInfo) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "required"
    return json.dumps(to_jsonable_python(info.get_default(call_default_factory=True)), ensure_ascii=False)


_BOUNDS = {annotated_types.Ge: (">=", "ge"), annotated_types.Gt: (">", "gt"), annotated_types.Le: ("<=", "le"),
           annotated_types.Lt: ("<", "lt")}


def _constraints(metadata: list) -> list[str]:
    """pydantic's metadata (Field(ge=..., min_length=..., pattern=...)) as readable bounds."""
    out = []
    for item in metadata:
        for kind, (sign, attribute) in _BOUNDS.items():
            if isinstance(item, kind):
                out.append(f"{sign} {getattr(item, attribute)}")
        if isinstance(item, annotated_types.MinLen):
            out.append(f"at least {item.min_length} item{'s' if item.min_length > 1 else ''}")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length} items")
        if getattr(item, "pattern", None):
            out.append(f"matches `{item.pattern}`")
    return out


def _value_constraints(annotation) -> list[str]:
    """Bounds on a dict's values (dict[str, Annotated[float, Field(ge=0)]])."""
    if typing.get_origin(annotation) is not dict:
        return []
    value = typing.get_args(annotation)[1]
    if typing.get_origin(value) is not typing.Annotated:
        return []
    bounds = [c for meta in typing.get_args(value)[1:] for c in _constraints(getattr(meta, "metadata", [meta]))]
    return [f"each value {bound}" for bound in bounds]


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:  # a whole field's choices go to its constraints; in a union they are the type
        return " | ".join(repr(v) for v in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in args)}]"
    if annotation is typing.Any:
        return "any"
    return "path" if annotation is Path else getattr(annotation, "__name__", str(annotation))


def reference_text(width: int = 100) -> str:
    """The reference for a terminal: each field on one line, its description wrapped under it."""
    lines = []
    for section in config_sections():
        for field in section.fields:
            bounds = f"  ({field.constraints})" if field.constraints else ""
            lines.append(f"{field.path}: {field.type} = {field.default}{bounds}")
            lines += textwrap.wrap(field.description, width, initial_indent="    ", subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """``docs/configuration.md``: one heading per section, one entry per field."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from infra/settings/ by {REGENERATE}: do not edit by hand. -->",
        "",
        "Every field of Flywheel's configuration, read from the pydantic models in `infra/settings/`.",
        "Set a field in a YAML file (`--config FILE`, sections as mappings) or on the command line",
        "(`--set 'train.beta=[0.1]'`, the value read as YAML; quote it so the shell leaves brackets alone).",
        "An unknown key or a value out of range stops the command with exit code 2 before anything runs.",
        "`flywheel config` prints the merged configuration; `flywheel config --describe` prints this reference.",
    ]
    for section in config_sections():
        lines += ["", f"## `{section.path}`" if section.path else "## Top level", ""]
        lines += [section.description.replace("<", "&lt;"), ""] if section.description else []
        lines += [_markdown_entry(field) for field in section.fields]
    return "\n".join(lines) + "\n"


def _markdown_entry(field: FieldDoc) -> str:
    facts = [f"`{field.type}`", f"default `{field.default}`", *([field.constraints] if field.constraints else [])]
    text = field.description.replace("<", "&lt;").replace(">", "&gt;")  # '<loop>' is no HTML tag
    return f"- **`{field.path}`** ({'; '.join(facts)})  \n  {text}"
