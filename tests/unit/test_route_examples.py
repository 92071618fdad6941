"""Regex routes as OpenAPI path templates (api/route_examples.py): every
template, filled with its examples, is a path the route's own pattern matches."""

from __future__ import annotations

import pytest

from api.route_examples import template
from api.route_regex import RoutePattern

PATTERNS = [
    ("/items/([0-9]+)", "/items/{p1}"),
    ("/u/[a-z]+/posts/([[:digit:]]{2,4})", "/u/{p1}/posts/{p2}"),
    ("/files/.*", "/files/{p1}"),
    ("/f-([0-9]+)[.]json", "/f-{p1}.json"),
    ("^/x/(foo|bar)$", "/x/{p1}"),
    ("/(a+)+b", "/{p1}b"),
    ("/w/\\w+/\\d{3}", "/w/{p1}/{p2}"),
    ("/opt(/page/[0-9]+)?", "/opt{p1}"),
    ("/[^/]+/z", "/{p1}/z"),
    ("/k/[A-Za-z0-9_.-]{1,128}", "/k/{p1}"),
    ("/r/x{100}", "/r/{p1}"),
]


@pytest.mark.parametrize(("path", "expected"), PATTERNS)
def test_template_filled_with_its_examples_matches_the_route(path: str, expected: str) -> None:
    t = template(path)
    assert t is not None and expected == t.path
    filled = t.path
    for p in t.params:
        assert p.example, "an empty path parameter cannot be sent"
        filled = filled.replace("{" + p.name + "}", p.example)
    assert t.example == filled
    assert RoutePattern(path).fullmatch(filled)


def test_a_top_level_alternation_gives_one_example_path_without_parameters() -> None:
    t = template("/a/[0-9]+|/b")
    assert t is not None and [] == t.params and t.path == t.example and RoutePattern("/a/[0-9]+|/b").fullmatch(t.example)


def test_the_modules_names_and_example_are_used_when_the_route_matches_it() -> None:
    t = template("/items/([0-9]+)/([a-z]+)", ["id", "part"], "/items/42/body")
    assert t is not None and "/items/{id}/{part}" == t.path
    assert [("id", "42"), ("part", "body")] == [(p.name, p.example) for p in t.params]
    # An example the route does not match is not used.
    t = template("/items/([0-9]+)", ["id"], "/items/abc")
    assert t is not None and "1" == t.params[0].example


def test_a_pattern_without_a_findable_example_gives_none() -> None:
    # Only characters outside every candidate the generator tries.
    assert template("/[\x01\x02]") is None
