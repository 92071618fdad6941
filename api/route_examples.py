"""Regex routes as OpenAPI paths that "Try it out" can call.

A route path like `/items/([0-9]+)` is a POSIX ERE (api/route_regex.py);
sent verbatim it matches nothing. Here it becomes a path template,
`/items/{p1}`, whose parameters are the route's capture groups and its other
non-literal runs, each with an example value, so Swagger UI fills in a path
the route really matches: every template is checked by substituting its
examples and matching the result with the route's own compiled pattern.

    template(path, names, example) -> Template | None

Only the top level of the expression is split; a top-level `|` (or
anything the small parser below does not follow) falls back to one
example path without parameters, and to None when no example is found.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import re2

from api.route_regex import RoutePattern, RouteRegexError, translate

# Characters tried, in order, for '.', a bracket expression or a class escape.
_CANDIDATES = "a1xz0A-_.~b9Z"
_ESCAPE_SAMPLES = {"d": "1", "D": "a", "w": "a", "W": "-", "s": " ", "S": "a"}


class _Unsupported(Exception):
    pass


@dataclass
class _Atom:
    kind: str  # lit | any | class | esc | group | anchor
    text: str  # the ERE source of the atom (for a literal: the character itself)
    lo: int = 1
    hi: int | None = 1
    branches: list[list[_Atom]] = field(default_factory=list)  # group only

    @property
    def source(self) -> str:
        return self.text + self.quantifier

    quantifier: str = ""


def _parse(path: str, i: int = 0, depth: int = 0) -> tuple[list[list[_Atom]], int]:
    """Branches of the expression from path[i] up to an unmatched ')' or the end."""
    if depth > 20:
        raise _Unsupported
    branches: list[list[_Atom]] = [[]]
    n = len(path)
    while i < n:
        c = path[i]
        if c == ")":
            return branches, i
        if c == "|":
            branches.append([])
            i += 1
            continue
        start = i
        if c == "(":
            inner, j = _parse(path, i + 1, depth + 1)
            if j >= n or path[j] != ")":
                raise _Unsupported
            atom = _Atom("group", path[start:j + 1], branches=inner)
            i = j + 1
        elif c == "[":
            j = i + 1
            if j < n and path[j] == "^":
                j += 1
            if j < n and path[j] == "]":
                j += 1
            while j < n and path[j] != "]":
                if path[j] == "[" and j + 1 < n and path[j + 1] in ":.=":
                    end = path.find(path[j + 1] + "]", j + 2)
                    if end < 0:
                        raise _Unsupported
                    j = end + 2
                else:
                    j += 1
            if j >= n:
                raise _Unsupported
            text = path[start:j + 1]
            # A one-character bracket ([.], [?]) is how ERE writes a literal: keep it literal.
            atom = _Atom("lit", text[1]) if len(text) == 3 and text[1] != "^" else _Atom("class", text)
            i = j + 1
        elif c == "\\":
            if i + 1 >= n:
                raise _Unsupported
            e = path[i + 1]
            atom = _Atom("esc", path[i:i + 2]) if e.isalnum() else _Atom("lit", e)
            i += 2
        elif c == ".":
            atom = _Atom("any", ".")
            i += 1
        elif c in "^$":
            atom = _Atom("anchor", c)
            i += 1
        elif c in "*+?":
            raise _Unsupported  # a quantifier with nothing before it
        else:
            atom = _Atom("lit", c)
            i += 1
        # Its quantifier, if any.
        if i < n and path[i] in "*+?":
            atom.lo, atom.hi = {"*": (0, None), "+": (1, None), "?": (0, 1)}[path[i]]
            atom.quantifier = path[i]
            i += 1
        elif i < n and path[i] == "{":
            end = path.find("}", i)
            body = path[i + 1:end] if end > 0 else ""
            lo, comma, hi = body.partition(",")
            if end > 0 and (lo.isdigit() or (comma and not lo and hi.isdigit())) and (not hi or hi.isdigit()):
                atom.lo = int(lo) if lo else 0
                atom.hi = (int(hi) if hi else None) if comma else atom.lo
                atom.quantifier = path[i:end + 1]
                i = end + 1
        branches[-1].append(atom)
    return branches, i


@functools.lru_cache(maxsize=1024)
def _sample_char(ere: str) -> str:
    """A character the one-character expression ere matches ('' if none of the candidates)."""
    try:
        pattern = RoutePattern(ere)
    except RouteRegexError:
        return ""
    for c in _CANDIDATES:
        if pattern.fullmatch(c):
            return c
    return ""


def _gen(branches: list[list[_Atom]]) -> str:
    for branch in branches:
        try:
            return "".join(_gen_atom(a) for a in branch)
        except _Unsupported:
            continue
    raise _Unsupported


def _gen_atom(a: _Atom) -> str:
    if a.kind == "anchor":
        return ""
    if a.kind == "lit":
        one = a.text
    elif a.kind == "group":
        one = _gen(a.branches)
    elif a.kind == "esc":
        letter = a.text[1]
        if letter in "bB":
            return ""
        one = _ESCAPE_SAMPLES.get(letter, "")
    else:
        one = _sample_char(a.text)
    if not one and a.kind != "group":
        raise _Unsupported
    # One repetition where the quantifier allows it: an empty path parameter cannot be sent.
    count = a.lo if a.lo > 0 else (1 if a.hi is None or a.hi >= 1 else 0)
    return one * count


@dataclass(frozen=True)
class Param:
    name: str
    ere: str  # what it must match
    example: str
    group: bool  # a capture group of the route (else a run of other non-literal syntax)


@dataclass(frozen=True)
class Template:
    path: str  # an OpenAPI path: literal text with {name} parameters
    example: str  # the whole example path
    params: list[Param]


def _options() -> re2.Options:
    o = re2.Options()
    o.posix_syntax = True
    o.perl_classes = True
    o.word_boundary = True
    o.one_line = True
    o.dot_nl = True
    o.longest_match = True
    o.log_errors = False
    o.encoding = re2.Options.Encoding.LATIN1
    return o


def _split_example(pieces: list[tuple[str, str | None]], example: str) -> list[str] | None:
    """The parameter values of an example path, by matching it against the template's pieces (RE2: linear)."""
    pattern = "".join(re2.escape(text) if kind is None else "(" + translate(text) + ")" for text, kind in pieces)
    try:
        m = re2.compile(pattern.encode("utf-8"), _options()).fullmatch(example.encode("utf-8", "surrogateescape"))
    except re2.error:
        return None
    return [g.decode("utf-8", "surrogateescape") if g is not None else "" for g in m.groups()] if m else None


def template(path: str, names: list[str] | None = None, example: str | None = None) -> Template | None:
    """The template for regex route path, or None when no example path was found.

    names: parameter names for the varying parts, in order (from the
    module's cweb_docs); example: the module's own example path, used when
    the route matches it. Cached: /openapi.json asks again on every call."""
    return _template(path, tuple(names or ()), example)


@functools.lru_cache(maxsize=4096)
def _template(path: str, names: tuple[str, ...], example: str | None) -> Template | None:
    try:
        full = RoutePattern(path)
    except RouteRegexError:
        return None
    if example is not None and not full.fullmatch(example):
        example = None
    try:
        branches, end = _parse(path)
        if end != len(path):
            raise _Unsupported
    except _Unsupported:
        return None
    try:
        generated = _gen(branches)
    except _Unsupported:
        generated = None
    if generated is not None and not full.fullmatch(generated):
        generated = None
    whole = example or generated
    if whole is None:
        return None
    if len(branches) != 1:
        return Template(whole, whole, [])
    # Pieces: (literal text, None) or (ERE source, "group" | "run").
    pieces: list[tuple[str, str | None]] = []
    for a in branches[0]:
        if a.kind == "anchor":
            continue
        if a.kind == "lit" and not a.quantifier and a.text not in "{}":
            if pieces and pieces[-1][1] is None:
                pieces[-1] = (pieces[-1][0] + a.text, None)
            else:
                pieces.append((a.text, None))
        elif a.kind == "group" and not a.quantifier:
            pieces.append((a.text[1:-1], "group"))
        elif pieces and pieces[-1][1] == "run":
            pieces[-1] = (pieces[-1][0] + a.source, "run")
        else:
            pieces.append((a.source, "run"))
    try:
        values = _split_example(pieces, whole)
    except RouteRegexError:
        values = None
    if values is None or any(v == "" for v in values):
        return Template(whole, whole, [])
    wanted = list(names or [])
    params: list[Param] = []
    out: list[str] = []
    k = 0
    for text, kind in pieces:
        if kind is None:
            out.append(text)
            continue
        name = wanted.pop(0) if wanted else f"p{len(params) + 1}"
        params.append(Param(name, text, values[k], kind == "group"))
        out.append("{" + name + "}")
        k += 1
    if len({p.name for p in params}) != len(params):
        return Template(whole, whole, [])
    return Template("".join(out), whole, params)
