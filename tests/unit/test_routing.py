"""api.routing: the route table, declaration checks and conflicts.

Versions are stood in for by ``V`` — plain data with the two attributes the
routing code reads (``name`` and ``decl``), as api.modules.version.Version has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from api.errors import Conflict, Invalid
from api.routing import RouteTable, check_conflicts, validate_declaration


@dataclass(eq=False)
class V:
    """A module version as the route table sees it."""

    name: str
    decl: dict = field(default_factory=dict)


def version(name: str, *routes: tuple[str, str], sockets: tuple[str, ...] = ()) -> V:
    """A version declaring (method, path) routes in this order."""
    return V(
        name,
        {
            "name": name,
            "routes": [{"method": m, "path": p, "index": i} for i, (m, p) in enumerate(routes)],
            "websockets": [{"path": p, "index": i} for i, p in enumerate(sockets)],
            "jobs": [],
        },
    )


def desc(name: str = "mod", routes: list[dict] | None = None, **over: object) -> dict:
    """A declaration as the glue's cweb_abi_describe() reports it."""
    routes = [{"path": "/a", "method": "GET", "has_handler": True, "flags": 0}] if routes is None else routes
    d = {
        "name": name,
        "author": "tests",
        "size": len(routes),
        "ws_size": 0,
        "job_size": 0,
        "max_routes": 64,
        "max_websockets": 32,
        "max_jobs": 32,
        "routes": routes,
        "websockets": [],
        "jobs": [],
        "has_onload": False,
        "has_unload": False,
    }
    d.update(over)
    return d


def route(path: str, method: str = "GET", has_handler: bool = True) -> dict:
    return {"path": path, "method": method, "has_handler": has_handler, "flags": 0}


def served_by(table: RouteTable, method: str, path: str) -> tuple[str, int] | None:
    entry, _ = table.match(method, path)
    return None if entry is None else (entry.version.name, entry.index)


# ---------------------------------------------------------------- RouteTable


def test_exact_path_beats_an_earlier_regex() -> None:
    """A literal path wins over a regex that also matches, whatever the deploy order."""
    regex = version("regex", ("GET", "/a/.*"))
    exact = version("exact", ("GET", "/a/b"))
    table = RouteTable([regex, exact])
    assert ("exact", 0) == served_by(table, "GET", "/a/b")
    assert ("regex", 0) == served_by(table, "GET", "/a/c")


def test_regexes_are_tried_in_deploy_order() -> None:
    """Of two modules' matching regexes, the earlier-deployed one answers."""
    first = version("first", ("GET", "/x/[a-z]+"))
    second = version("second", ("GET", "/x/.+"))
    assert ("first", 0) == served_by(RouteTable([first, second]), "GET", "/x/abc")
    assert ("second", 0) == served_by(RouteTable([second, first]), "GET", "/x/abc")


def test_regexes_within_a_module_are_tried_in_declaration_order() -> None:
    """Within one module, the first declared matching regex answers."""
    v = version("m", ("GET", "/y/[0-9]+"), ("GET", "/y/.+"))
    table = RouteTable([v])
    assert ("m", 0) == served_by(table, "GET", "/y/12")
    assert ("m", 1) == served_by(table, "GET", "/y/ab")


def test_regex_must_match_the_whole_path() -> None:
    """'/a/[0-9]+' serves '/a/12' but neither '/a/12x' nor '/x/a/12'."""
    table = RouteTable([version("m", ("GET", "/a/[0-9]+"))])
    assert ("m", 0) == served_by(table, "GET", "/a/12")
    assert (None, ()) == table.match("GET", "/a/12x")
    assert (None, ()) == table.match("GET", "/x/a/12")


def test_other_method_on_known_path_reports_allowed_methods() -> None:
    """A known path with another method gives no entry and the methods it does allow."""
    table = RouteTable([version("m", ("GET", "/p"), ("POST", "/p"), ("GET", "/r/[0-9]+"))])
    entry, allowed = table.match("DELETE", "/p")
    assert entry is None
    assert ["GET", "POST"] == sorted(allowed)
    assert (None, ("GET",)) == table.match("PUT", "/r/7")


def test_unknown_path_is_none_and_no_methods() -> None:
    """A path no module serves gives (None, ())."""
    table = RouteTable([version("m", ("GET", "/p"))])
    assert (None, ()) == table.match("GET", "/q")
    assert (None, ()) == RouteTable().match("GET", "/p")


def test_methods_of_one_path_can_come_from_two_modules() -> None:
    """GET /p from one module and POST /p from another both resolve."""
    table = RouteTable([version("getter", ("GET", "/p")), version("poster", ("POST", "/p"))])
    assert ("getter", 0) == served_by(table, "GET", "/p")
    assert ("poster", 0) == served_by(table, "POST", "/p")


def test_sockets_exact_and_regex() -> None:
    """Socket paths resolve exactly first, then by full regex match."""
    table = RouteTable([version("m", sockets=("/ws/[a-z]+", "/ws/chat"))])
    exact = table.match_socket("/ws/chat")
    pattern = table.match_socket("/ws/room")
    assert (1, 0) == (exact.index if exact else None, pattern.index if pattern else None)
    assert None is table.match_socket("/ws/room1")


# ------------------------------------------------------ validate_declaration


def test_valid_declaration_is_normalised() -> None:
    """A good declaration comes back with upper-case methods and route indexes."""
    decl = validate_declaration(desc("hello", [route("/a", "get"), route("/b/[0-9]+", "POST")]))
    assert {
        "name": "hello",
        "author": "tests",
        "routes": [{"method": "GET", "path": "/a", "index": 0}, {"method": "POST", "path": "/b/[0-9]+", "index": 1}],
        "websockets": [],
        "jobs": [],
        "warnings": [],
        "docs": {},
    } == decl


def test_slots_without_path_method_or_name_are_skipped_with_a_warning() -> None:
    """As c-web-modules: a .size above the routes filled in serves the ones
    that have a path and a method (keeping their indexes), and says so."""
    d = desc("hello", [{"path": None, "method": None, "has_handler": False}, route("/a"),
                       {"path": "/b", "method": None, "has_handler": True}])
    d["websockets"] = [{"path": None}]
    d["jobs"] = [{"name": None, "has_run": False}]
    decl = validate_declaration(d)
    assert [{"method": "GET", "path": "/a", "index": 1}] == decl["routes"]
    assert [] == decl["websockets"] and [] == decl["jobs"]
    assert ["route 0 declares no path", "route 2 declares no method", "websocket 0 declares no path", "job 0 declares no name"] == [
        w.split(" and ")[0] for w in decl["warnings"]]


REJECTED = [
    ("empty name", desc(""), "invalid_module"),
    ("name with a slash", desc("a/b"), "invalid_module"),
    ("name with a space", desc("a b"), "invalid_module"),
    ("name too long", desc("n" * 129), "invalid_module"),
    ("size above max", desc(size=65), "invalid_module"),
    ("negative size", desc(size=-1), "invalid_module"),
    ("negative ws_size", desc(ws_size=-1), "invalid_module"),
    ("job_size above max", desc(job_size=33), "invalid_module"),
    ("NULL handler", desc(routes=[route("/a", has_handler=False)]), "invalid_module"),
    ("bad method", desc(routes=[route("/a", "FETCH")]), "invalid_module"),
    ("empty method", desc(routes=[{"path": "/a", "method": "", "has_handler": True}]), "invalid_module"),
    ("relative path", desc(routes=[route("a")]), "invalid_module"),
    ("duplicate route", desc(routes=[route("/a"), route("/a")]), "duplicate_route"),
    ("duplicate route, method case", desc(routes=[route("/a", "GET"), route("/a", "get")]), "duplicate_route"),
    ("/jobs", desc(routes=[route("/jobs")]), "reserved_path"),
    ("/mgnt/x", desc(routes=[route("/mgnt/x")]), "reserved_path"),
    ("/modules", desc(routes=[route("/modules")]), "reserved_path"),
    ("/modules/x", desc(routes=[route("/modules/x")]), "reserved_path"),
    ("/docs", desc(routes=[route("/docs")]), "reserved_path"),
    ("/metrics", desc(routes=[route("/metrics")]), "reserved_path"),
    ("/healthz", desc(routes=[route("/healthz")]), "reserved_path"),
    ("/openapi.json", desc(routes=[route("/openapi.json")]), "reserved_path"),
    ("regex matching everything", desc(routes=[route("/.*")]), "reserved_path"),
    ("regex matching /jobs", desc(routes=[route("/jo[b]s")]), "reserved_path"),
    ("regex matching /healthz", desc(routes=[route("/(healthz|x)")]), "reserved_path"),
    ("regex matching under /modules", desc(routes=[route("/modules/.+")]), "reserved_path"),
    ("invalid regex", desc(routes=[route("/a/[0-9")]), "invalid_regex"),
    ("invalid regex group", desc(routes=[route("/a/(x")]), "invalid_regex"),
]


@pytest.mark.parametrize("what, declaration, code", REJECTED, ids=[r[0] for r in REJECTED])
def test_bad_declarations_are_rejected(what: str, declaration: dict, code: str) -> None:
    """Each bad declaration raises Invalid (422) with a stable error code."""
    with pytest.raises(Invalid) as info:
        validate_declaration(declaration)
    assert (422, code) == (info.value.status, info.value.code)


def test_reserved_socket_path_is_rejected() -> None:
    """A websocket under a reserved prefix is refused like a route."""
    with pytest.raises(Invalid) as info:
        validate_declaration(desc(ws_size=1, websockets=[{"path": "/jobs/ws"}]))
    assert "reserved_path" == info.value.code


def test_same_path_with_two_methods_is_not_a_duplicate() -> None:
    """GET /a and POST /a in one module are two routes."""
    decl = validate_declaration(desc(routes=[route("/a", "GET"), route("/a", "POST")]))
    assert [("GET", "/a"), ("POST", "/a")] == [(r["method"], r["path"]) for r in decl["routes"]]


def test_path_merely_starting_with_a_reserved_word_is_allowed() -> None:
    """'/jobsearch' is not under '/jobs': prefixes end at a '/'."""
    decl = validate_declaration(desc(routes=[route("/jobsearch")]))
    assert ["/jobsearch"] == [r["path"] for r in decl["routes"]]


# ------------------------------------------------------------ check_conflicts


def test_conflict_names_the_owner() -> None:
    """Claiming another module's method+path raises Conflict (409) naming that module."""
    owner = version("owner", ("GET", "/shared"))
    decl = validate_declaration(desc("newcomer", [route("/shared")]))
    with pytest.raises(Conflict) as info:
        check_conflicts(decl, [owner])
    assert (409, "route_conflict", "owner") == (info.value.status, info.value.code, info.value.extra["owner"])
    assert "'owner'" in info.value.message


def test_socket_conflict_names_the_owner() -> None:
    """Claiming another module's socket path raises Conflict naming that module."""
    owner = version("owner", sockets=("/chat",))
    decl = validate_declaration(desc("newcomer", [], ws_size=1, websockets=[{"path": "/chat"}]))
    with pytest.raises(Conflict) as info:
        check_conflicts(decl, [owner])
    assert "owner" == info.value.extra["owner"]


def test_same_module_name_is_not_a_conflict() -> None:
    """A new version of a module may keep its own routes."""
    old = version("m", ("GET", "/p"))
    check_conflicts(validate_declaration(desc("m", [route("/p")])), [old])


def test_other_method_on_same_path_is_not_a_conflict() -> None:
    """POST /p does not conflict with another module's GET /p."""
    other = version("other", ("GET", "/p"))
    check_conflicts(validate_declaration(desc("m", [route("/p", "POST")])), [other])


# ------------------------------------------- POSIX extended syntax, via RE2

ERE_MATCHES = [
    # (pattern, path, matches) — what regcomp(REG_EXTENDED) plus a full match answers.
    ("/r/[[:digit:]]+", "/r/123", True),
    ("/r/[[:digit:]]+", "/r/12a", False),
    ("/r/[[:alpha:]][[:alnum:]_]*", "/r/a1_b", True),
    ("/r/[[:alpha:]][[:alnum:]_]*", "/r/1a", False),
    ("/u/[^/]+/p", "/u/bob/p", True),
    ("/u/[^/]+/p", "/u/a/b/p", False),
    ("/b/[]x]", "/b/]", True),  # ']' first in a bracket is literal
    ("/b/[^]x]", "/b/]", False),
    ("/b/[\\d]", "/b/\\", True),  # a backslash in a bracket is literal in POSIX
    ("/b/[\\d]", "/b/1", False),
    ("/b/[a-c-]", "/b/-", True),
    ("/b/[[.-.]]", "/b/-", True),
    ("/n/a{2}", "/n/aa", True),
    ("/n/a{2}", "/n/aaa", False),
    ("/n/a{,2}", "/n/", True),  # glibc: {,m} is {0,m}
    ("/n/a{1,}", "/n/aaaa", True),
    ("/n/x{y", "/n/x{y", True),  # a '{' that opens no interval is literal
    ("/e/a\\.b", "/e/a.b", True),
    ("/e/a\\.b", "/e/axb", False),
    ("/v/(one|two)", "/v/two", True),
    ("/v/(one|two)", "/v/onetwo", False),
    ("/w/\\w+", "/w/ab_1", True),
    ("/d/\\d+", "/d/42", True),
    ("/any/.*", "/any/a\nb", True),  # '.' matches a newline, as in POSIX
    ("/r/(a+)+b", "/r/" + "a" * 30, False),
    ("/r/(a+)+b", "/r/aaab", True),
]


@pytest.mark.parametrize("pattern, path, matches", ERE_MATCHES)
def test_route_paths_are_posix_extended_regexes(pattern: str, path: str, matches: bool) -> None:
    """Route paths match as regcomp(REG_EXTENDED) with a full match does."""
    table = RouteTable([version("m", ("GET", validate_declaration(desc(routes=[route(pattern)]))["routes"][0]["path"]))])
    assert (("m", 0) if matches else None) == served_by(table, "GET", path)


REFUSED_SYNTAX = [
    ("/x/(a)\\1", "backreference"),
    ("/x/a**", "single quantifier"),
    ("/x/a+?", "single quantifier"),
    ("/x/(?i)abc", "Perl group"),
    ("/x/(?P<id>[0-9]+)", "Perl group"),
    ("/x/[[:digits:]]", "not a POSIX character class"),
    ("/x/[[.ab.]]", "collating element"),
    ("/x/\\<a", "GNU word"),
    ("/x/\\n", "not defined in POSIX"),
    ("/x/a{1001}", "larger than 1000"),
    ("/x/a{3,2}", "maximum below its minimum"),
    ("/x/[ab", "not closed"),
    ("/x/" + ".{1000}" * 6, "instructions"),
]


@pytest.mark.parametrize("pattern, reason", REFUSED_SYNTAX)
def test_syntax_re2_cannot_match_as_ere_is_refused_with_the_reason(pattern: str, reason: str) -> None:
    """What RE2 cannot match as ERE means is refused at deploy time, naming
    the route, the path and why, never matched differently."""
    with pytest.raises(Invalid) as info:
        validate_declaration(desc(routes=[route("/ok"), route(pattern)]))
    assert "invalid_regex" == info.value.code
    assert "route 1" in info.value.message and repr(pattern) in info.value.message
    assert reason in info.value.message


def test_dfa_defeating_pattern_is_only_tried_on_paths_within_its_budget() -> None:
    """`.*a.{600}` may need more DFA states than RE2 caches: it is only tried on
    paths short enough for the NFA fallback to stay within the step budget,
    so the worst match stays bounded (one long path cannot cost seconds)."""
    import time

    from api.route_regex import STEP_BUDGET, RoutePattern

    pattern = RoutePattern("/x/.*a.{600}")
    assert pattern.max_path == STEP_BUDGET // pattern._re.ProgramSize() < 4096
    worst = 0.0
    for n in (pattern.max_path - 3, pattern.max_path + 100, 4000):
        t0 = time.perf_counter()
        pattern.fullmatch("/x/" + "a" * n)
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.25, f"worst match {worst * 1000:.0f} ms"
    assert pattern.fullmatch("/x/" + "a" * 601)
    assert not pattern.fullmatch("/x/" + "b" * 601)
    assert not pattern.fullmatch("/x/" + "a" * (pattern.max_path + 1))  # would match: past the budget


def test_pathological_pattern_matches_in_linear_time() -> None:
    """Nested quantifiers cannot make a match backtrack: long non-matching
    paths cost microseconds, not seconds."""
    import time

    table = RouteTable([version("m", ("GET", "/r/(a+)+b"), ("GET", "/s/(.*a){20}x"))])
    worst = 0.0
    for path in ("/r/" + "a" * 30, "/r/" + "a" * 4000, "/s/" + "a" * 4000):
        t0 = time.perf_counter()
        assert served_by(table, "GET", path) is None
        worst = max(worst, time.perf_counter() - t0)
    assert worst < 0.05, f"a pattern match took {worst * 1000:.1f} ms"


def test_paths_longer_than_the_pattern_limit_only_match_exact_routes() -> None:
    """A path past MAX_PATH never reaches a pattern (bounded work per request)."""
    from api.route_regex import MAX_PATH

    long = "/a/" + "x" * MAX_PATH
    table = RouteTable([version("m", ("GET", "/a/.*"), ("GET", long))])
    assert ("m", 1) == served_by(table, "GET", long)
    assert None is served_by(table, "GET", long + "y")
    assert ("m", 0) == served_by(table, "GET", "/a/" + "x" * 100)


def test_deploy_time_regex_checks_are_bounded() -> None:
    """The largest path a module may declare compiles (or is refused) fast."""
    import time

    t0 = time.perf_counter()
    for pattern in ("/" + "(a|b)*" * 170, "/" + "[[:alpha:]]{1000}", "/" + "((a{30}){30}){30}", "/" + "(.*a){20}" * 50):
        try:
            validate_declaration(desc(routes=[route(pattern[:1024])]))
        except Invalid as exc:
            assert "invalid_regex" == exc.code
    assert time.perf_counter() - t0 < 1.0


def test_docs_entries_are_kept_for_what_the_module_declares_and_clipped() -> None:
    """cweb_docs entries: kept by "METHOD path" for declared routes, sockets and
    jobs, texts clipped, path parameters required; the rest are warnings."""
    d = desc("hello", [route("/a/([0-9]+)", "get")])
    d["docs"] = [
        {"method": "get", "path": "/a/([0-9]+)", "summary": "s" * 500, "example": "/a/1",
         "params": [{"name": "id", "in": "path", "required": False}, {"name": "q", "in": "query", "description": "d"},
                    {"name": "bad", "in": "cookie"}]},
        {"method": "GET", "path": "/nope"},
        {"method": None, "path": "/a"},
    ]
    decl = validate_declaration(d)
    doc = decl["docs"]["GET /a/([0-9]+)"]
    assert 200 == len(doc["summary"]) and "/a/1" == doc["example"]
    assert [("id", "path", True), ("q", "query", False)] == [(p["name"], p["in"], p["required"]) for p in doc["params"]]
    assert ["GET /a/([0-9]+)"] == list(decl["docs"])
    assert 3 == sum("cweb_docs entry" in w for w in decl["warnings"])
