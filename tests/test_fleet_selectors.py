"""The selector parser (pure) and its two compilations agree: Python predicate and database query."""

import pytest

from fleet import selectors
from fleet.selectors import SelectorError, parse, predicate

DEVICES = [
    {"region": "eu", "hw": "rpi4"},
    {"region": "eu", "hw": "jetson", "beta": "1"},
    {"region": "us", "hw": "rpi4"},
    {"region": "eu", "hw": "x86"},
    {},
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [0, 1, 2, 3, 4]),
        ("region=eu", [0, 1, 3]),
        ("region==eu", [0, 1, 3]),
        ("region!=eu", [2, 4]),
        ("region=eu, hw in (rpi4, jetson), !beta", [0]),
        ("hw notin (rpi4, x86)", [1, 4]),
        ("beta", [1]),
        ("!beta", [0, 2, 3, 4]),
        ("  region = eu ,hw=rpi4 ", [0]),
    ],
)
def test_predicate(text: str, expected: list[int]) -> None:
    match = predicate(parse(text))
    assert [i for i, d in enumerate(DEVICES) if match(d)] == expected


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("region=", 7),
        ("region=eu,", 10),
        ("hw in rpi4", 6),
        ("hw in (rpi4", 11),
        ("hw in ()", 7),
        ("region eu", 7),
        ("=eu", 0),
        ("region=eu; hw=x", 9),
        ("!", 1),
    ],
)
def test_parse_errors_name_the_position(text: str, position: int) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    assert info.value.position == position
    assert f"character {position + 1}" in str(info.value)


def test_normalized_text_round_trips() -> None:
    sel = parse("region=eu,hw in (rpi4,jetson, rpi4),!beta, k!=v, z notin (a)")
    assert str(sel) == "region=eu, hw in (rpi4, jetson), !beta, k!=v, z notin (a)"
    assert parse(str(sel)) == sel


def test_too_long() -> None:
    with pytest.raises(SelectorError):
        parse("a=b," * 200)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "text",
    ["", "region=eu", "region!=eu", "region=eu, hw in (rpi4, jetson), !beta", "hw notin (rpi4, x86)", "beta", "!beta"],
)
def test_database_query_agrees_with_predicate(text: str) -> None:
    from fleet.models import Device
    from fleet.services import selector_q

    for i, labels in enumerate(DEVICES):
        Device.objects.create(name=f"d{i}", labels=labels, token_hash=f"{i:064x}")
    sel = selectors.parse(text)
    in_db = set(Device.objects.filter(selector_q(sel)).values_list("name", flat=True))
    assert in_db == {f"d{i}" for i, d in enumerate(DEVICES) if predicate(sel)(d)}
