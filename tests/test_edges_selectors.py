"""Edges of the selector grammar: the maximum length exactly, the error texts a person reads, the word
characters, and label values that are not strings.

Written from mutation testing (`make mutation`): each test pins a behaviour a one-token change to
``fleet/selectors.py`` would otherwise alter silently. Pure: no database.
"""

import pytest

from fleet import selectors
from fleet.selectors import Requirement, Selector, SelectorError, parse, predicate


def test_policy_constants() -> None:
    assert selectors.MAX_LENGTH == 500
    assert (selectors.EXISTS, selectors.NOT_EXISTS, selectors.EQ, selectors.NE) == ("exists", "!exists", "=", "!=")
    assert (selectors.IN, selectors.NOTIN) == ("in", "notin")


def test_a_selector_of_exactly_the_maximum_length_parses() -> None:
    text = "k=" + "v" * (selectors.MAX_LENGTH - 2)
    assert len(text) == selectors.MAX_LENGTH
    assert parse(text) == Selector((Requirement("k", "=", ("v" * 498,)),))


def test_one_character_more_is_refused_at_that_character() -> None:
    text = "k=" + "v" * (selectors.MAX_LENGTH - 1)
    with pytest.raises(SelectorError) as info:
        parse(text)
    assert info.value.position == 500
    assert info.value.message == "a selector is at most 500 characters"
    assert str(info.value) == "a selector is at most 500 characters (at character 501)"


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("region=", "expected a value, found the end", 7),
        ("region=@", "expected a value, found '@'", 7),
        ("@", "expected a label key, found '@'", 0),
        ("!", "expected a label key after '!', found the end", 1),
        ("!=eu", "expected a label key, found '!'", 0),
        ("hw in (rpi4", "expected ')', found the end", 11),
        ("hw in (rpi4;", "expected ')', found ';'", 11),
        ("hw in", "expected '(', found the end", 5),
        ("hw in rpi4", "expected '(', found 'r'", 6),
        ("hw in (a,)", "expected a value, found ')'", 9),
        ("hw in ()", "expected a value, found ')'", 7),
        ("region eu", "expected '=', '!=', 'in', 'notin' or ','", 7),
        ("hw inside (a)", "expected '=', '!=', 'in', 'notin' or ','", 3),
        ("a=b c", "expected ',', found 'c'", 4),
        ("_a=b", "expected a label key, found '_'", 0),
    ],
)
def test_errors_say_what_was_expected_and_where(text: str, message: str, position: int) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)
    assert (info.value.message, info.value.position) == (message, position)
    assert str(info.value) == f"{message} (at character {position + 1})"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", ()),
        ("   ", ()),
        ("Region=EU", (Requirement("Region", "=", ("EU",)),)),
        ("a==b", (Requirement("a", "=", ("b",)),)),
        ("a!=b", (Requirement("a", "!=", ("b",)),)),
        ("fw=v1.2_rc-3/x", (Requirement("fw", "=", ("v1.2_rc-3/x",)),)),
        ("9lives", (Requirement("9lives", "exists"),)),
        ("hw in(rpi4,rpi4 , x86)", (Requirement("hw", "in", ("rpi4", "x86")),)),
        ("hw notin(a)", (Requirement("hw", "notin", ("a",)),)),
        ("!beta,alpha", (Requirement("beta", "!exists"), Requirement("alpha", "exists"))),
        ("alpha ,!beta", (Requirement("alpha", "exists"), Requirement("beta", "!exists"))),
        ("in=notin", (Requirement("in", "=", ("notin",)),)),
    ],
)
def test_parsed_structure(text: str, parsed: tuple) -> None:
    assert parse(text) == Selector(parsed)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a", "a"),
        ("!a", "!a"),
        ("a==b", "a=b"),
        ("a != b", "a!=b"),
        ("a in (x,y)", "a in (x, y)"),
        ("a notin (x)", "a notin (x)"),
        ("", ""),
    ],
)
def test_normal_form(text: str, shown: str) -> None:
    assert str(parse(text)) == shown


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("beta=1", {"beta": 1}, True),
        ("beta!=1", {"beta": 1}, False),
        ("beta in (1, 2)", {"beta": 2}, True),
        ("beta notin (1, 2)", {"beta": 2}, False),
        ("beta notin (1, 2)", {"beta": 3}, True),
        ("beta=1", {}, False),
        ("beta in (1)", {}, False),
        ("beta", {"beta": ""}, True),
        ("!beta", {"beta": None}, False),
        ("a=1, b=2", {"a": "1", "b": "2"}, True),
        ("a=1, b=2", {"a": "1", "b": "3"}, False),
        ("a=1, b=2", {"a": "0", "b": "2"}, False),
    ],
)
def test_predicate_edges(text: str, labels: dict, matches: bool) -> None:
    assert predicate(parse(text))(labels) is matches
