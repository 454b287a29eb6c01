"""Validating YAML configuration with every error's file, line and key path.

Policies and the daemon's configuration are read the same way: compose the
document into nodes (only nodes know their line), walk them with a
:class:`NodeReader` that records an :class:`Issue` for each problem instead
of raising, and refuse the whole file if any was found. An admin fixing a
file sees every mistake at once, each as ``FILE:LINE: key.path: message``.
"""

from __future__ import annotations

import difflib
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import yaml
from yaml.constructor import SafeConstructor

T = TypeVar("T")

_TAG = "tag:yaml.org,2002:"
_MERGE_TAG = _TAG + "merge"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem in a file. ``line`` is 1-based (0: the file as a whole)."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(ValueError):
    """A file was refused; ``errors`` lists every problem found."""

    def __init__(self, errors: list[Issue]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def kind(node: yaml.Node) -> str:
    """How a node reads to a person, for "expected X, got Y" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    names = {"null": "nothing", "bool": "true/false", "int": "a number", "float": "a number",
             "timestamp": "a date", "str": f"text {node.value!r}"}
    return names.get(node.tag.removeprefix(_TAG), f"a value tagged {node.tag}")


def suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class NodeReader:
    """Walks a composed node tree, recording issues instead of raising.

    Nodes rather than constructed Python values, because only nodes know their
    line; and because a value is read from the scalar's text, so that an
    unquoted ``NO`` (Norway) is not turned into ``False`` by YAML 1.1.
    """

    def __init__(self, source: str):
        self.source = source
        self.issues: list[Issue] = []
        self._ctor = SafeConstructor()

    def error(self, node: yaml.Node | None, key: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.issues.append(Issue(self.source, line, key, message))

    def wrong_type(self, node: yaml.Node, key: str, expected: str) -> None:
        self.error(node, key, f"expected {expected}, got {kind(node)}")

    def mapping(self, node: yaml.Node, path: str,
                keys: tuple[tuple[str, ...], tuple[str, ...]]) -> dict[str, yaml.Node] | None:
        """The mapping's values by key; unknown, duplicate and missing keys reported."""
        if not isinstance(node, yaml.MappingNode):
            self.wrong_type(node, path or "(document)", "a mapping")
            return None
        required, optional = keys
        out: dict[str, yaml.Node] = {}
        for name, (key_node, value) in self.entries(node, path).items():
            if name in required or name in optional:
                out[name] = value
            else:
                self.error(key_node, join_path(path, name),
                           f"unknown key {name!r}{suggest(name, required + optional)}")
        for name in required:
            if name not in out:
                self.error(node, join_path(path, name), f"missing required key {name!r}")
        return out

    def entries(self, node: yaml.MappingNode,
                path: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key -> (key node, value node), YAML merge keys (``<<``) applied, duplicates reported.

        Keys brought in by a merge may be overridden by the mapping's own keys (that is what
        merging is for); the mapping's own keys may not repeat.
        """
        pairs = list(node.value)
        own = {id(k) for k, _ in pairs if k.tag != _MERGE_TAG}
        if len(own) != len(pairs):
            try:
                self._ctor.flatten_mapping(node)
                pairs = list(node.value)
            except yaml.MarkedYAMLError as exc:
                self.error(node, path, f"bad merge key: {exc.problem}")
                pairs = [(k, v) for k, v in pairs if id(k) in own]
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        seen_own: set[str] = set()
        for key_node, value in pairs:
            if not isinstance(key_node, yaml.ScalarNode):
                self.wrong_type(key_node, path, "a key name")
                continue
            name = key_node.value
            if id(key_node) in own:
                if name in seen_own:
                    self.error(key_node, join_path(path, name), f"duplicate key {name!r}")
                    continue
                seen_own.add(name)
            out[name] = (key_node, value)
        return out

    def seq(self, node: yaml.Node, path: str, nonempty: bool = False) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.wrong_type(node, path, "a list")
            return None
        if nonempty and not node.value:
            self.error(node, path, "must not be empty")
            return None
        return list(node.value)

    def each(self, node: yaml.Node, path: str, read: Callable[[yaml.Node, str], T | None],
             nonempty: bool = False) -> list[T | None] | None:
        """Every item read with ``read(item, path)`` (None for an item that failed)."""
        nodes = self.seq(node, path, nonempty)
        if nodes is None:
            return None
        return [read(item, f"{path}[{i}]") for i, item in enumerate(nodes)]

    def items(self, node: yaml.Node, path: str, read: Callable[[yaml.Node, str], T | None],
              nonempty: bool = False) -> list[T] | None:
        """Every item read with ``read(item, path)``; None if the list or any item failed."""
        values = self.each(node, path, read, nonempty)
        if values is None or None in values:
            return None
        return [v for v in values if v is not None]

    def scalar(self, node: yaml.Node, path: str, expected: str) -> str | None:
        """The scalar's source text; lists, mappings and empty values are wrong types."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == _TAG + "null":
            self.wrong_type(node, path, expected)
            return None
        return node.value

    def text(self, node: yaml.Node, path: str) -> str | None:
        value = self.scalar(node, path, "text")
        if value is not None and not value.strip():
            self.error(node, path, "must not be empty")
            return None
        return value.strip() if value is not None else None

    def choice(self, node: yaml.Node, path: str, choices: Sequence[str]) -> str | None:
        value = self.scalar(node, path, "one of " + ", ".join(choices))
        if value is not None and value not in choices:
            self.error(node, path, f"expected one of {', '.join(choices)}, got {value!r}")
            return None
        return value

    def network(self, node: yaml.Node, path: str) -> str | None:
        raw = self.scalar(node, path, "a network (CIDR)")
        if raw is None:
            return None
        try:
            return str(ipaddress.ip_network(raw, strict=True))
        except ValueError as exc:
            try:
                loose = ipaddress.ip_network(raw, strict=False)
                message = f"bad CIDR {raw!r}: host bits set (the network is {loose})"
            except ValueError:
                message = f"bad CIDR {raw!r}: {exc}"
        self.error(node, path, message)
        return None

    def number(self, node: yaml.Node, path: str, low: float | None = None,
               high: float | None = None) -> float | None:
        """A number (int or float), within [low, high] when given."""
        raw = self.scalar(node, path, "a number")
        if raw is None:
            return None
        if node.tag not in (_TAG + "int", _TAG + "float"):
            self.wrong_type(node, path, "a number")
            return None
        value = float(raw.replace("_", ""))
        if (low is not None and value < low) or (high is not None and value > high):
            lo = "-inf" if low is None else f"{low:g}"
            hi = "inf" if high is None else f"{high:g}"
            self.error(node, path, f"{raw} out of range ({lo} to {hi})")
            return None
        return value

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        raw = self.scalar(node, path, "true or false")
        if raw is None:
            return None
        if node.tag != _TAG + "bool":
            self.wrong_type(node, path, "true or false")
            return None
        return bool(self._ctor.construct_yaml_bool(node))


def compose(r: NodeReader, text: str, empty_hint: str) -> yaml.Node | None:
    """The document's node tree (for line numbers), or None with the syntax error recorded."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        r.issues.append(Issue(r.source, line, "", f"YAML syntax error: {problem}"))
        return None
    except yaml.YAMLError as exc:
        r.issues.append(Issue(r.source, 0, "", f"YAML syntax error: {exc}"))
        return None
    except RecursionError:
        r.issues.append(Issue(r.source, 0, "", "YAML nested too deeply"))
        return None
    if root is None:
        r.issues.append(Issue(r.source, 0, "", f"empty file: {empty_hint}"))
    return root
