"""The field reference and the JSON Schema of the study protocol, both generated from the schema
(securefed.protocol.schema: each field's docstring is its description, the one source).
protocols/README.md embeds the reference and protocols/schema.json is the exported JSON
Schema; a test checks that both are current. Regenerate them with
``python -m securefed.protocol.reference``.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path

from pydantic import BaseModel

from securefed.protocol.schema import Protocol

__all__ = [
    "BEGIN_MARK",
    "END_MARK",
    "JSON_SCHEMA_FILE",
    "all_field_paths",
    "describe",
    "json_schema",
    "reference_markdown",
]

JSON_SCHEMA_FILE = "protocols/schema.json"
BEGIN_MARK = "<!-- BEGIN GENERATED FIELD REFERENCE -->"
END_MARK = "<!-- END GENERATED FIELD REFERENCE -->"


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(table)"
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("'", '"')


def describe(path: str) -> str:
    """The description of the field at ``path`` (e.g. ``release.epsilon``), from the schema."""
    model: type[BaseModel] = Protocol
    parts = path.replace("[]", "").split(".")
    for i, name in enumerate(parts):
        field = model.model_fields[name]
        if i == len(parts) - 1:
            return " ".join((field.description or "").split())
        model = _submodel(field.annotation) or model
    return ""


def _text(field: typing.Any) -> str:
    return " ".join((field.description or "").split())


def _submodel(annotation: object) -> type[BaseModel] | None:
    cand = [annotation, *typing.get_args(annotation)]
    return next((a for a in cand if isinstance(a, type) and issubclass(a, BaseModel)), None)


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in typing.get_args(ann)] or [ann]
        sub = next(
            (a for a in [ann, *inner] if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        path = f"{prefix}{name}"
        if sub is not None and typing.get_origin(ann) is not tuple:
            if not field.is_required() and field.default is None:  # an optional table
                rows.append((path, "table (optional)", "unset", _text(field)))
            nested.append((path, sub))
            continue
        if sub is not None:  # a list of tables, e.g. [[sites]]
            rows.append((path, f"list of [[{name}]] tables", _default(field), _text(field)))
            nested.append((f"{path}[]", sub))
            continue
        rows.append((path, _type_name(ann), _default(field), _text(field)))
    for path, sub in nested:
        rows.extend(_rows(sub, f"{path}."))
    return rows


def all_field_paths() -> list[str]:
    return [row[0] for row in _rows(Protocol, "")]


def reference_markdown() -> str:
    """Markdown tables of every field, one per section."""
    out: list[str] = []
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in _rows(Protocol, ""):
        head = row[0].split(".")[0].removesuffix("[]")
        section = head if "." in row[0] else "(top level)"
        sections.setdefault(section, []).append(row)
    for section, rows in sections.items():
        title = section if section == "(top level)" else f"[{section}]"
        model_field = Protocol.model_fields.get(section)
        doc = ""
        if model_field is not None:
            ann = model_field.annotation
            cand = [ann, *typing.get_args(ann)]
            sub = next((a for a in cand if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is not None and sub.__doc__:
                doc = " ".join(sub.__doc__.split())
        out.append(f"### {title}\n")
        if doc:
            out.append(doc + "\n")
        out.append("| field | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, typ, default, desc in rows:
            out.append(f"| `{name}` | {typ} | {default} | {desc} |")
        out.append("")
    return "\n".join(out)


def json_schema() -> str:
    """The JSON Schema of a protocol (draft 2020-12, pydantic's), as stable, indented JSON."""
    schema = Protocol.model_json_schema(mode="validation")
    schema["$id"] = "https://securefed.invalid/schema/protocol-v1.json"
    schema["title"] = "securefed study protocol (schema_version 1)"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def rewrite_readme(path: str = "protocols/README.md") -> None:
    """Replace the generated section of protocols/README.md in place."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN_MARK, 1)
    tail = rest.split(END_MARK, 1)[1]
    p.write_text(f"{head}{BEGIN_MARK}\n{reference_markdown()}\n{END_MARK}{tail}", encoding="utf-8")


def write_json_schema(path: str = JSON_SCHEMA_FILE) -> None:
    """Write the exported JSON Schema (protocols/schema.json)."""
    Path(path).write_text(json_schema(), encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - documentation helper
    rewrite_readme()
    write_json_schema()
