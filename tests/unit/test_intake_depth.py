"""How deep data may nest at the ingest: what a type allows (so typed decoding needs no measuring) and how decoded
data is measured (without recursion, however deep it is)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Annotated, Any

import msgspec
import pytest

from streamproc import App, Event, Outgoing
from streamproc.http.intake import JSON, MAX_DEPTH, FastIntake, Problem, decode_body, static_depth, too_deep


class Node(msgspec.Struct):
    children: list[Node] = msgspec.field(default_factory=list)


class Flat(Event, tag="flat"):
    n: int
    tags: list[str] = msgspec.field(default_factory=list)


class Nested(Event, tag="nested"):
    grid: list[list[dict[str, Annotated[int, msgspec.Meta(ge=0)]]]] = msgspec.field(default_factory=list)
    when: tuple[int, str] | None = None


class FreeForm(Event, tag="free"):
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class Tree(Event, tag="tree"):
    root: Node | None = None


def nest(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_static_depth_counts_container_levels_and_knows_unbounded_types() -> None:
    assert static_depth(int) == 0
    assert static_depth(list[int]) == 1
    assert static_depth(Flat) == 2  # the event object, and its list of tags
    assert static_depth(Nested) == 4
    assert static_depth(Flat | Nested) == 4  # a union is one of its types: no level of its own
    assert static_depth(FreeForm) is None  # Any holds anything
    assert static_depth(Tree) is None  # Node recurses
    assert static_depth(msgspec.Raw) is None


@pytest.mark.parametrize(("value", "level"), [
    (1, 0), ("s", 0), ([], 1), ({}, 1), ([1, {"a": 2}], 2), ({"a": [[], [[]]]}, 4), (nest(5), 5), ((1, (2,)), 2),
])
def test_too_deep_measures_levels(value: Any, level: int) -> None:
    assert not too_deep(value, level)
    assert too_deep(value, level - 1) or level == 0


@dataclasses.dataclass
class Box:
    inside: Any


def test_too_deep_counts_structs_and_dataclasses_as_objects() -> None:
    for value in (Node(children=[Node()]), Box([Box(1)])):  # object > list > object (> list)
        assert not too_deep(value, 4)
        assert too_deep(value, 2)
    assert not too_deep(datetime.now(), 0), "a scalar of another type"


def test_too_deep_measures_past_python_recursion_limit() -> None:
    assert too_deep(nest(100_000), MAX_DEPTH)
    assert not too_deep(nest(100_000), 100_000)


def test_fast_path_measures_only_free_form_data() -> None:
    app = App("depth")
    app.register(Flat, FreeForm)
    fast = FastIntake(app.topology)
    ok = msgspec.json.encode({"type": "free", "data": {"x": nest(MAX_DEPTH - 2)}})  # event 1 + data 1 + 62
    too_deep_body = msgspec.json.encode({"type": "free", "data": {"x": nest(MAX_DEPTH - 1)}})
    assert fast.outgoing(ok, JSON, 10) == [Outgoing(FreeForm(data={"x": nest(MAX_DEPTH - 2)}))]
    assert fast.outgoing(too_deep_body, JSON, 10) is None, "left to the general path, which names the field"
    # Fields a type does not have are skipped, however deep (up to what the decoder can take at all).
    junk = msgspec.json.encode({"type": "flat", "n": 1, "junk": nest(3 * MAX_DEPTH)})
    assert fast.outgoing(junk, JSON, 10) == [Outgoing(Flat(n=1))]
    assert fast.outgoing(b'{"type": "flat", "n": 1, "junk": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", JSON,
                         10) is None


def test_general_path_says_a_body_too_deep_to_decode_is_malformed() -> None:
    with pytest.raises(Problem) as refused:
        decode_body(b"[" * 100_000 + b"]" * 100_000, JSON)
    assert refused.value.status == 400
    assert "nests too deeply" in refused.value.detail


def level(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(level, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(level, value), default=0)
    return 0


def test_fast_path_measures_recursive_structs_and_data_without_json() -> None:
    app = App("depth")
    app.register(Tree, FreeForm)
    fast = FastIntake(app.topology)
    for nodes in range(25, 40):
        root: dict[str, Any] = {"children": []}
        for _ in range(nodes - 1):
            root = {"children": [root]}
        item = {"type": "tree", "root": root}
        for encode, content_type in ((msgspec.json.encode, JSON), (msgspec.msgpack.encode, "application/msgpack")):
            accepted = fast.outgoing(encode(item), content_type, 10)
            assert (accepted is None) == (level(item) > MAX_DEPTH), (nodes, level(item))
    # A msgpack map with tuple keys has no JSON: such data is walked instead.
    ok = {"type": "free", "data": {"x": {(1, 2): nest(MAX_DEPTH - 3)}}}
    too_deep_body = {"type": "free", "data": {"x": {(1, 2): nest(MAX_DEPTH - 2)}}}
    assert fast.outgoing(msgspec.msgpack.encode(ok), "application/msgpack", 10) is not None
    assert fast.outgoing(msgspec.msgpack.encode(too_deep_body), "application/msgpack", 10) is None
