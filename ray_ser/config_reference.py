"""The config's documentation, made from the pydantic model itself so it cannot drift: ``configs/example.yaml``
(every key, its default and its docstring as a comment) and the README's configuration reference.

    python -m ray_ser.config_reference      rewrites both (a test fails while either is stale)
"""

from __future__ import annotations

import json
import re
import textwrap
import types
import typing
from typing import Any, Iterator

from pydantic import BaseModel

from ray_ser.config import ExperimentConfig
from ray_ser.settings import PROJECT_DIR

FOLLOWS = {("train", "store"), ("train", "model"), ("train", "corpora")}
"""Keys that take another section's value unless set: shown commented out in the example."""
BEGIN, END = "<!-- BEGIN config-reference -->", "<!-- END config-reference -->"
EXAMPLE = PROJECT_DIR / "configs" / "example.yaml"
README = PROJECT_DIR / "README.md"


def fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, str, Any]]:
    """(path, default, description, annotation) of every key, sections first-class (default = the section)."""
    for name, info in model.model_fields.items():
        default = info.get_default(call_default_factory=True)
        yield (*prefix, name), default, (info.description or "").strip(), info.annotation
        if isinstance(default, BaseModel):
            yield from fields(type(default), (*prefix, name))


def _type(annotation: Any) -> str:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list[{_type(typing.get_args(annotation)[0])}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _one_line(doc: str) -> str:
    return " ".join(doc.split())


def example_yaml() -> str:
    """configs/example.yaml: every section and key with its default, each preceded by its documentation."""
    out = ["# Every key of the experiment config with its default value; each comment is the key's documentation.",
           "# Copy what you change into your own file: keys you leave out keep these defaults.",
           "# Made by `python -m ray_ser.config_reference` from ray_ser/config.py (a test checks it is current).",
           ""]
    for path, default, doc, _ in fields(ExperimentConfig):
        pad = "  " * (len(path) - 1)
        if len(path) == 1 and out[-1] != "":
            out.append("")
        for line in textwrap.wrap(_one_line(doc), 110 - len(pad)):
            out.append(f"{pad}# {line}")
        if isinstance(default, BaseModel):
            out.append(f"{pad}{path[-1]}:")
            continue
        value = json.dumps(default.model_dump(mode="json") if isinstance(default, BaseModel) else default)
        comment = "# " if path in FOLLOWS else ""
        out.append(f"{pad}{comment}{path[-1]}: {value}")
    return "\n".join(out) + "\n"


def reference_markdown() -> str:
    """The README's reference: one table per section (key, type, default, what it does)."""
    out: list[str] = []
    sections: dict[tuple[str, ...], list[str]] = {(): []}
    order: list[tuple[str, ...]] = [()]
    for path, default, doc, annotation in fields(ExperimentConfig):
        if isinstance(default, BaseModel):
            sections[path] = []
            order.append(path)
            continue
        shown = "(follows)" if path in FOLLOWS else f"`{json.dumps(default)}`"
        meaning = _one_line(doc).replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        sections[path[:-1]].append(f"| `{path[-1]}` | {_type(annotation)} | {shown} | {meaning} |")
    for section in order:
        if not sections[section]:
            continue
        title = ".".join(section) if section else "top level"
        out += [f"**{title}**", "", "| key | type | default | meaning |", "|---|---|---|---|", *sections[section], ""]
    return "\n".join(out).rstrip() + "\n"


def readme_with_reference(text: str) -> str:
    """``text`` (the README) with the block between the reference markers replaced by :func:`reference_markdown`."""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {BEGIN} ... {END} block")
    return pattern.sub(lambda _: f"{BEGIN}\n{reference_markdown()}{END}", text)


def main() -> None:
    EXAMPLE.write_text(example_yaml(), encoding="utf-8")
    README.write_text(readme_with_reference(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"wrote {EXAMPLE} and the reference in {README}")


if __name__ == "__main__":
    main()
