"""Reading a config file: its text, refused from its size before it is read, and its YAML, through
a SafeLoader that reads ``1e-1`` as a float, refuses duplicate keys and bounds nesting, list length
and the node count with every alias expanded. Validation against a model is :mod:`cvlth.config`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cvlth.errors import ConfigError
from cvlth.input_files import read_bounded

#: Bounds on what a config file may hold, far above any real study (the packaged ones are < 5 kB and
#: < 500 nodes). A few lines of YAML aliases ("billion laughs") or a list of a million seeds would
#: otherwise be expanded in memory before validation could say anything.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_NODES = 10_000
MAX_CONFIG_DEPTH = 50
#: Seeds multiply every run of a study: 9,500 seeds (within the node bound) take ~2 min to plan.
MAX_LIST_ITEMS = 1_000


def read_config_text(file: Path, what: str, hint: str | None = None) -> str:
    """A config file's text, read only from a regular file (not ``/dev/zero``, not a FIFO); one that
    is too large is refused from its size before it is read, and the read itself is bounded."""
    try:
        return read_bounded(file, f"a {what}", MAX_CONFIG_BYTES, ConfigError).decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {file}: {exc.strerror}", hint=hint) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not a text file ({exc.reason})", hint="is this the right file?") from exc


class _Refused(yaml.YAMLError):
    """A config file is valid YAML but exceeds a bound, or repeats a key."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint or (
            f"a config may hold at most {MAX_CONFIG_NODES:,} values with every alias expanded "
            f"and {MAX_CONFIG_DEPTH} levels of nesting; is this the right file?"
        )


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-1`` as a float (YAML 1.2), not as a string, refuses duplicate
    keys, and bounds nesting depth and the node count with every alias expanded."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._composed += 1
        if self._composed > MAX_CONFIG_NODES:
            raise _Refused(f"more than {MAX_CONFIG_NODES:,} YAML nodes (values, keys, lists, mappings)")
        self._depth += 1
        try:
            if self._depth > MAX_CONFIG_DEPTH:
                raise _Refused(f"nested deeper than {MAX_CONFIG_DEPTH} levels ({_line(self.peek_event())})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_sequence_node(self, anchor: Any) -> yaml.SequenceNode:
        node = super().compose_sequence_node(anchor)
        if len(node.value) > MAX_LIST_ITEMS:
            raise _Refused(
                f"the list at {_line(node)} has {len(node.value):,} items, more than {MAX_LIST_ITEMS:,}",
                hint=f"a config list (seeds, levels, finders, ...) may hold at most {MAX_LIST_ITEMS:,} items",
            )
        return node

    def construct_document(self, node: yaml.Node) -> Any:
        # Aliases share one node, so the file's own size says nothing about what they expand to.
        _expanded_size(node, {}, set())
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise _Refused(
                    f"duplicate key {key!r} at line {line} (first at line {first_line[key]})",
                    hint="YAML would keep only the last value silently; delete or merge one of them",
                )
            first_line[key] = line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _line(item: Any) -> str:
    return f"line {item.start_mark.line + 1}"


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded; refuses past MAX_CONFIG_NODES or a cycle."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Refused(f"an alias refers to a mapping or list that contains it ({_line(node)})")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, (yaml.SequenceNode, yaml.MappingNode)):
        children = (
            node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
        )
        for child in children:
            size += _expanded_size(child, sizes, open_nodes)
            if size > MAX_CONFIG_NODES:
                raise _Refused(
                    f"its aliases expand to more than {MAX_CONFIG_NODES:,} YAML nodes "
                    f"(a mapping or list at {_line(node)} is repeated too often)"
                )
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def parse_yaml(text: str, where: str) -> dict[str, Any]:
    """A config's YAML as a mapping; a ConfigError naming ``where`` past a bound, on bad YAML or a non-mapping."""
    size = len(text.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{where}: refused: {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config may have",
            hint="a study or run config is a few kilobytes; is this the right file?",
        )
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigError(f"{where}: refused: {exc}", hint=exc.hint) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: a config must be a YAML mapping, got {type(data).__name__}")
    return data
