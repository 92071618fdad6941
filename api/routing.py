"""The route table: which module version answers a method and path.

Precedence (documented in README): a path without regex metacharacters is
matched exactly by dictionary lookup and always wins; otherwise regex paths
(POSIX extended syntax, matched by RE2 in linear time: api/route_regex.py)
are tried in the order their modules were deployed, then in the order the
module declares them, and the first full match wins.

Tables are immutable: a deploy builds a new one and swaps the reference, so
a request sees either the old table or the new one, never a mixture.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from api.errors import Conflict, Invalid
from api.route_regex import MAX_PATH, RoutePattern, RouteRegexError
from runtime.protocol import METHODS

# Paths owned by the server; no module route or socket may live under them.
RESERVED_PREFIXES = (
    "/jobs",
    "/mgnt",
    "/modules",
    "/docs",
    "/redoc",
    "/openapi.json",
    "/metrics",
    "/healthz",
    "/sdk",
    "/sdk.tar.gz",
    "/artifacts",
    "/builds",
    "/ui",
    "/_cweb",
)
_META = set(".^$*+?()[]{}|\\")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def is_reserved(path: str) -> bool:
    for prefix in RESERVED_PREFIXES:
        if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
            return True
    return False


def is_literal(path: str) -> bool:
    return not (set(path) & _META)


def _shadows_reserved(pattern: RoutePattern) -> str | None:
    for prefix in RESERVED_PREFIXES:
        if pattern.fullmatch(prefix) or pattern.fullmatch(prefix + "/x"):
            return prefix
    return None


@functools.lru_cache(maxsize=4096)
def _pattern(path: str) -> RoutePattern:
    # Every deploy builds a whole new table: the patterns of the modules it
    # did not touch are not compiled again.
    return RoutePattern(path)


def compile_path(path: str, what: str = "route") -> RoutePattern | None:
    """None for a literal path; the compiled pattern otherwise (Invalid if bad)."""
    if is_literal(path):
        return None
    try:
        return _pattern(path)
    except RouteRegexError as exc:
        raise Invalid(
            f"{what} path {path!r} is not a POSIX extended regular expression cweb can match: {exc}",
            code="invalid_regex", path=path,
        ) from exc


# A path segment written in another framework's placeholder syntax
# (Express ":id", Flask "<id>", OpenAPI "{id}"): cweb has none.
_PLACEHOLDER = re.compile(r"(?<=/)(:[A-Za-z_][A-Za-z0-9_]*|<[A-Za-z_][A-Za-z0-9_:]*>|\{[A-Za-z_][A-Za-z0-9_]*\})(?=/|$)")


def _refuse_placeholders(path: str, what: str) -> None:
    """Refused, not translated: a placeholder deploys as a literal path that
    404s forever, and a silent translation would hide which requests match
    (and cweb hands no named segments to the handler; it reads req->path)."""
    found = _PLACEHOLDER.findall(path)
    if found:
        regex = _PLACEHOLDER.sub("[^/]+", path)
        raise Invalid(
            f"{what} path {path} uses the placeholder {found[0]}; cweb routes are exact paths or regular "
            f"expressions matched in full: declare {regex!r} and read the segment from req->path",
            code="route_placeholder", path=path, suggestion=regex,
        )


def check_path(path: Any, what: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise Invalid(f"{what} path {path!r} must be a string starting with '/'", code="invalid_module")
    if len(path) > 1024 or any(ord(c) < 0x20 for c in path):
        raise Invalid(f"{what} path {path[:64]!r} is too long or has control characters", code="invalid_module")
    _refuse_placeholders(path, what)
    if is_reserved(path):
        raise Invalid(f"{what} path {path} is under a reserved prefix ({', '.join(RESERVED_PREFIXES)})", code="reserved_path")
    pattern = compile_path(path, what)
    if pattern is not None:
        owner = _shadows_reserved(pattern)
        if owner:
            raise Invalid(f"{what} path {path} would match the reserved path {owner}", code="reserved_path")
    return path


def validate_declaration(desc: dict) -> dict:
    """Check a module's declaration (from the glue) and return it normalised.

    Raises Invalid naming the first problem found.
    """
    name = desc.get("name") or ""
    if not _NAME.match(name):
        raise Invalid(
            f"module name {name!r} must be 1-128 characters of letters, digits, '_', '.', '-'",
            code="invalid_module",
        )
    for field, limit_key, what in (("size", "max_routes", "routes"), ("ws_size", "max_websockets", "websockets"), ("job_size", "max_jobs", "jobs")):
        count = desc.get(field, 0)
        if count < 0 or count > desc.get(limit_key, 0):
            raise Invalid(f".{field} = {count}, but a module may declare 0..{desc.get(limit_key)} {what}", code="invalid_module")
    # Slots filled past .size are never served: with .size left out (0)
    # the module would deploy with nothing, so that is refused; a short
    # .size is a warning below.
    for field, key, what in (("size", "unsized_routes", "routes"), ("ws_size", "unsized_websockets", "websockets"),
                             ("job_size", "unsized_jobs", "jobs")):
        extra = desc.get(key, 0)
        if extra and desc.get(field, 0) == 0:
            raise Invalid(f"the module declares {extra} {what} but .{field} is 0 (left out?): "
                          f"add .{field} = {extra} to its module_t config", code="missing_size")
    # c-web-modules skips a slot below .size that declares no path or no
    # method (or job name, or socket path): so does cweb, with a warning.
    warnings: list[str] = []
    for field, key, what in (("size", "unsized_routes", "routes"), ("ws_size", "unsized_websockets", "websockets"),
                             ("job_size", "unsized_jobs", "jobs")):
        if desc.get(key, 0):
            warnings.append(f".{field} = {desc.get(field)}, but {desc[key]} more {what} are declared after that "
                            f"and are not served")
    routes = []
    seen: set[tuple[str, str]] = set()
    for i, r in enumerate(desc.get("routes", [])):
        if r.get("path") is None or r.get("method") is None:
            warnings.append(f"route {i} declares no {'path' if r.get('path') is None else 'method'} and is skipped "
                            f"(.size = {desc.get('size')}, but only the routes with a path and a method are served)")
            continue
        method = (r.get("method") or "").upper()
        if method not in METHODS:
            raise Invalid(f"route {i} has method {r.get('method')!r}; use one of {', '.join(METHODS)}", code="invalid_module")
        path = check_path(r.get("path"), f"route {i}")
        if not r.get("has_handler"):
            raise Invalid(f"route {i} ({method} {path}) has a NULL handler", code="invalid_module")
        if (method, path) in seen:
            raise Invalid(f"route {method} {path} is declared twice", code="duplicate_route")
        seen.add((method, path))
        routes.append({"method": method, "path": path, "index": i})
    sockets = []
    seen_ws: set[str] = set()
    for i, w in enumerate(desc.get("websockets", [])):
        if w.get("path") is None:
            warnings.append(f"websocket {i} declares no path and is skipped (.ws_size = {desc.get('ws_size')})")
            continue
        path = check_path(w.get("path"), f"websocket {i}")
        if path in seen_ws:
            raise Invalid(f"websocket {path} is declared twice", code="duplicate_route")
        seen_ws.add(path)
        sockets.append({"path": path, "index": i})
    jobs = []
    seen_jobs: set[str] = set()
    for i, j in enumerate(desc.get("jobs", [])):
        jname = j.get("name")
        if jname is None:
            warnings.append(f"job {i} declares no name and is skipped (.job_size = {desc.get('job_size')})")
            continue
        if not jname or not isinstance(jname, str):
            raise Invalid(f"job {i} has no name", code="invalid_module")
        if not j.get("has_run"):
            raise Invalid(f"job {jname!r} has a NULL run function", code="invalid_module")
        if jname in seen_jobs:
            raise Invalid(f"job {jname!r} is declared twice", code="duplicate_job")
        seen_jobs.add(jname)
        jobs.append({"name": jname, "index": i})
    docs = _docs(desc.get("docs") or [], routes, sockets, jobs, warnings)
    return {"name": name, "author": desc.get("author", ""), "routes": routes, "websockets": sockets, "jobs": jobs,
            "warnings": warnings, "docs": docs}


_DOC_TEXTS = {"summary": 200, "description": 4096, "example": 4096}
_PARAM_PLACES = ("path", "query", "header")


def _docs(entries: list, routes: list, sockets: list, jobs: list, warnings: list[str]) -> dict[str, dict]:
    """The module's cweb_docs table, keyed "METHOD path" ("WS path", "JOB name"),
    kept only for what the module declares (a warning names the rest)."""
    known = {f"{r['method']} {r['path']}" for r in routes} | {f"WS {w['path']}" for w in sockets} | {f"JOB {j['name']}" for j in jobs}
    out: dict[str, dict] = {}
    for i, d in enumerate(entries[:256]):
        if not isinstance(d, dict) or not isinstance(d.get("method"), str) or not isinstance(d.get("path"), str):
            warnings.append(f"cweb_docs entry {i} has no method or path and is ignored")
            continue
        key = f"{d['method'].upper()} {d['path']}"
        if key not in known:
            warnings.append(f"cweb_docs entry {i} ({key}) names no route, socket or job of this module and is ignored")
            continue
        doc: dict = {k: d[k][:n] for k, n in _DOC_TEXTS.items() if isinstance(d.get(k), str) and d[k]}
        params = []
        for p in d.get("params") or []:
            if isinstance(p, dict) and isinstance(p.get("name"), str) and p["name"] and p.get("in") in _PARAM_PLACES:
                params.append({"name": p["name"][:64], "in": p["in"], "description": str(p.get("description") or "")[:1024],
                               "required": bool(p.get("required")) or p["in"] == "path"})
            else:
                warnings.append(f"cweb_docs entry {i} ({key}): a parameter needs a name and \"in\" of {', '.join(_PARAM_PLACES)}")
        doc["params"] = params
        out[key] = doc
    return out


@dataclass(frozen=True)
class Entry:
    version: Any  # api.modules.version.Version
    index: int
    path: str
    method: str


class RouteTable:
    """Immutable lookup from (method, path) to an Entry."""

    def __init__(self, versions: list[Any] = ()) -> None:
        # path -> {method: Entry}
        self.exact: dict[str, dict[str, Entry]] = {}
        self.patterns: list[tuple[RoutePattern, dict[str, Entry]]] = []
        self.sockets: dict[str, Entry] = {}
        self.socket_patterns: list[tuple[RoutePattern, Entry]] = []
        by_pattern: dict[str, dict[str, Entry]] = {}
        for v in versions:
            for r in v.decl["routes"]:
                entry = Entry(v, r["index"], r["path"], r["method"])
                if is_literal(r["path"]):
                    self.exact.setdefault(r["path"], {})[r["method"]] = entry
                else:
                    methods = by_pattern.get(r["path"])
                    if methods is None:
                        methods = by_pattern[r["path"]] = {}
                        self.patterns.append((_pattern(r["path"]), methods))
                    methods[r["method"]] = entry
            for w in v.decl["websockets"]:
                entry = Entry(v, w["index"], w["path"], "GET")
                if is_literal(w["path"]):
                    self.sockets[w["path"]] = entry
                else:
                    self.socket_patterns.append((_pattern(w["path"]), entry))

    def match(self, method: str, path: str) -> tuple[Entry | None, tuple[str, ...]]:
        """The entry for method+path, else (None, methods allowed on path)."""
        methods = self.exact.get(path)
        if methods is None:
            if len(path) > MAX_PATH:
                return None, ()
            for pattern, candidate in self.patterns:
                if pattern.fullmatch(path):
                    methods = candidate
                    break
            else:
                return None, ()
        entry = methods.get(method)
        if entry is None:
            return None, tuple(methods)
        return entry, ()

    def match_socket(self, path: str) -> Entry | None:
        entry = self.sockets.get(path)
        if entry is not None:
            return entry
        if len(path) > MAX_PATH:
            return None
        for pattern, e in self.socket_patterns:
            if pattern.fullmatch(path):
                return e
        return None


def check_conflicts(decl: dict, others: list[Any]) -> None:
    """Raise Conflict if decl claims a route or socket another module owns."""
    for v in others:
        if v.name == decl["name"]:
            continue
        owned = {(r["method"], r["path"]) for r in v.decl["routes"]}
        for r in decl["routes"]:
            if (r["method"], r["path"]) in owned:
                raise Conflict(
                    f"route {r['method']} {r['path']} is already served by module {v.name!r}",
                    code="route_conflict",
                    owner=v.name,
                )
        owned_ws = {w["path"] for w in v.decl["websockets"]}
        for w in decl["websockets"]:
            if w["path"] in owned_ws:
                raise Conflict(f"websocket {w['path']} is already served by module {v.name!r}", code="route_conflict", owner=v.name)
