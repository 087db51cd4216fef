"""YAML files in: PyYAML's safe loader, refusing duplicate keys and documents that expand beyond a small budget,
and every failure as one SdakdError naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sdakd.errors import SdakdError, cut, shown

# Bounds on what a YAML document may expand to, checked before anything is built from it: anchors and aliases are
# welcome, an alias bomb (a few hundred bytes naming a billion values) is not. Configs hold a few hundred values
# and nest five deep.
MAX_VALUES = 10_000  # mappings, lists and scalars, every alias counted as the values it repeats
MAX_DEPTH = 32  # mappings and lists inside each other


class DuplicateKey(yaml.YAMLError):
    pass


class TooLarge(yaml.YAMLError):
    pass


def check_expansion(root: yaml.Node) -> None:
    """Refuse a document that holds more than MAX_VALUES values once its aliases are expanded, nests deeper than
    MAX_DEPTH, or has an alias inside the node it names; linear in the document's distinct nodes."""
    values: dict[int, int] = {}  # id(node) -> the values it expands to
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # the node being counted and the ones containing it
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, counted_children = stack.pop()
        key = id(node)
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])  # fmt: skip
        if counted_children:
            open_nodes.discard(key)
            values[key] = 1 + sum(values[id(child)] for child in children)
            depth[key] = 1 + max((depth[id(child)] for child in children), default=0)
            line = node.start_mark.line + 1
            if values[key] > MAX_VALUES:
                raise TooLarge(f"the value on line {line} expands to more than {MAX_VALUES:,} values (aliases "
                               "repeat what they name): refused as an alias bomb")
            if depth[key] > MAX_DEPTH:
                raise TooLarge(f"the value on line {line} nests more than {MAX_DEPTH} levels deep")
        elif key in open_nodes:
            raise TooLarge(f"an alias on line {node.start_mark.line + 1} names a value that contains it")
        elif key not in values:
            open_nodes.add(key)
            stack += [(node, True), *((child, False) for child in children)]


class UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # libyaml's parser: 100x faster on long text
    """yaml.safe_load that refuses a mapping naming one key twice (PyYAML silently keeps the last one) and a
    document beyond MAX_VALUES / MAX_DEPTH (check_expansion)."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            check_expansion(node)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<:` merges may be overridden on purpose; non-scalar keys fail in PyYAML itself
            key, line = self.construct_object(key_node), key_node.start_mark.line + 1
            if key in first_line:
                raise DuplicateKey(f"key {shown(key)} appears twice, on line {first_line[key]} and line {line}")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a (C)SafeLoader subclass
    except RecursionError:  # the pure-Python parser composes nested values recursively, before check_expansion
        raise TooLarge(f"a value nests more than {MAX_DEPTH} levels deep") from None
    except ValueError as err:  # a scalar PyYAML resolves but cannot convert, e.g. an integer of 5000 digits
        raise yaml.YAMLError(f"a value cannot be read ({cut(str(err))})") from None


def read_yaml(path: Path | str, text: str | None = None, kind: str = "config file") -> dict[str, Any]:
    """The mapping a YAML file (or `text`, read from `path`) holds; `kind` names the file in errors."""
    try:
        data = load_yaml(text if text is not None else Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SdakdError(f"{kind} {path} does not exist") from None
    except IsADirectoryError:
        raise SdakdError(f"{kind} {path} is a folder; name a YAML file") from None
    except UnicodeDecodeError as err:
        raise SdakdError(f"{kind} {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise SdakdError(f"{kind} {path} is unreadable ({err.strerror or err})") from None
    except DuplicateKey as err:
        raise SdakdError(f"{kind} {path}: {err}; name each key once") from None
    except TooLarge as err:
        raise SdakdError(f"{kind} {path}: {err}") from None
    except yaml.YAMLError as err:
        raise SdakdError(f"{kind} {path} is not valid YAML: {err}") from None
    if data is None or data == {}:
        raise SdakdError(f"{kind} {path} is empty (or holds only comments): it sets nothing")
    if not isinstance(data, dict):
        raise SdakdError(f"{kind} {path} must hold a mapping at the top level, found {type(data).__name__}")
    return data
