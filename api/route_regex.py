"""Route paths as POSIX extended regular expressions, matched in linear time.

c-web-modules compiles route paths with regcomp(REG_EXTENDED) and requires a
full match; cweb reads the same syntax, but matches with RE2 (an automaton,
no backtracking), so no path can make a match take more than time linear in
its length: `/r/(a+)+b` against a long run of `a`s costs what any other
pattern does.

RE2's own syntax is close to ERE but not the same, so a path is translated
first, and what RE2 cannot match as ERE means is refused at deploy time with
a reason (RouteRegexError) instead of being matched differently:

    ERE                          here
    [[:digit:]] and the classes  same (RE2 speaks them inside brackets)
    [\\d] (backslash in brackets) a literal backslash, as POSIX says
    []a] [^]a] (']' first)       a literal ']'
    [[.c.]] [[=c=]]              the single character c; longer names refused
    {n} {n,} {n,m} {,m}          same; {,m} is {0,m} (glibc); n, m <= 1000
    { not starting an interval   a literal '{'
    a** a+? (stacked quantifiers) refused: write one quantifier
    \\1 .. \\9 (backreferences)    refused: not ERE, and not linear-time
    \\< \\> \\` \\'                 refused (GNU word/buffer anchors)
    \\w \\W \\s \\S \\b \\B (GNU)      same
    \\d \\D                        a digit / non-digit (glibc reads the letter d)
    (?...) (Perl groups, flags)  refused: not ERE
    \\n, \\x41 and other escapes  refused: undefined in ERE
    .                            any character, newline included

Paths are matched as bytes (the UTF-8 of the decoded path), as regexec does
in the C locale the original runs in: '.' is one byte.

A compiled program is bounded (MAX_PROGRAM) so a deploy cannot build a huge
automaton, matching memory is bounded by RE2 (MAX_MEM), and a path only
reaches a pattern when it is short enough for the match to stay within
STEP_BUDGET (MAX_PATH bytes at most).
"""

from __future__ import annotations

from re2 import _re2

# Matching is linear in the path. Ordinary patterns run on RE2's DFA, kept
# warm per pattern: microseconds per request. A pattern crafted to defeat the
# DFA (`.*a.{1000}`: more states than its cache holds) falls back to RE2's NFA
# at ~30 ns per path byte per program instruction, so a pattern is only tried
# on paths up to STEP_BUDGET / its program size bytes (and MAX_PATH): no
# pattern can cost a request more than ~30 ms, whatever the path. Ordinary
# routes are 10-1,300 instructions (`/kv/[A-Za-z0-9_.-]{1,128}` is 647, so it
# is tried on paths up to 1,545 bytes; it matches 132 at most).
STEP_BUDGET = 1_000_000
MAX_PATH = 4096
# Larger programs are refused at deploy.
MAX_PROGRAM = 5000
# Bytes RE2 may use for one pattern's program and DFA cache.
MAX_MEM = 8 << 20
MAX_REPEAT = 1000

_ANCHOR_BOTH = _re2.RE2.Anchor.ANCHOR_BOTH
_CLASSES = frozenset({"alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct", "space", "upper", "xdigit"})
# Escapes that mean the same in glibc's ERE and RE2 (plus \d, \D: see above).
_CLASS_ESCAPES = frozenset("wWsSbBdD")
_QUANTIFIERS = frozenset("*+?")


class RouteRegexError(ValueError):
    """A route path that is not a POSIX ERE cweb can match in linear time."""


def _options() -> _re2.RE2.Options:
    o = _re2.RE2.Options()
    o.posix_syntax = True
    o.perl_classes = True  # \d \s \w: GNU (and cweb before) spoke them
    o.word_boundary = True  # \b \B
    o.one_line = True  # ^ and $ at the ends of the path only, as regcomp without REG_NEWLINE
    o.dot_nl = True  # '.' matches any character, as in POSIX
    o.never_capture = True  # routes only ask "does it match": no group bookkeeping
    o.longest_match = True
    o.log_errors = False
    o.max_mem = MAX_MEM
    o.encoding = _re2.RE2.Options.Encoding.LATIN1
    return o


_OPTIONS = _options()


def _escape(c: str) -> str:
    return "\\" + c if not c.isalnum() and c.isascii() else c


def _bracket(path: str, i: int) -> tuple[str, int]:
    """Translate the bracket expression opening at path[i] == '['; returns
    the RE2 class and the index after its closing ']'."""
    n = len(path)
    j = i + 1
    out = ["["]
    if j < n and path[j] == "^":
        out.append("^")
        j += 1
    first = True
    items: list[str] = []  # translated single characters or classes, '-' as a marker
    while True:
        if j >= n:
            raise RouteRegexError("a '[' bracket expression is not closed with ']'")
        c = path[j]
        if c == "]" and not first:
            j += 1
            break
        first = False
        if c == "[" and j + 1 < n and path[j + 1] in ":.=":
            kind = path[j + 1]
            end = path.find(kind + "]", j + 2)
            if end < 0:
                raise RouteRegexError(f"'[{kind}' inside a bracket expression is not closed with '{kind}]'")
            name = path[j + 2:end]
            j = end + 2
            if kind == ":":
                if name not in _CLASSES:
                    raise RouteRegexError(f"[:{name}:] is not a POSIX character class ({', '.join(sorted(_CLASSES))})")
                items.append(f"[:{name}:]")
            elif len(name) == 1:
                items.append(_escape(name))
            else:
                raise RouteRegexError(
                    f"[{kind}{name}{kind}] names a collating element or equivalence class, which cweb cannot match; "
                    "list the characters instead"
                )
            continue
        items.append("-" if c == "-" else _escape(c))
        j += 1
    # '-' between two single characters is a range; anywhere else a literal.
    k = 0
    while k < len(items):
        item = items[k]
        if item == "-":
            prev_ok = k > 0 and not items[k - 1].startswith("[:") and items[k - 1] != "-"
            next_ok = k + 1 < len(items) and not items[k + 1].startswith("[:") and items[k + 1] != "-"
            out.append("-" if prev_ok and next_ok and len(out) > 1 and out[-1] != "^" else "\\-")
        else:
            out.append(item)
        k += 1
    out.append("]")
    return "".join(out), j


def _interval(path: str, i: int) -> tuple[str, int] | None:
    """An ERE interval {n}, {n,}, {n,m} or {,m} at path[i] == '{', as RE2
    syntax, or None when the '{' does not open one (then it is literal)."""
    end = path.find("}", i)
    if end < 0:
        return None
    body = path[i + 1:end]
    lo, comma, hi = body.partition(",")
    if not (lo.isdigit() or (comma and not lo and hi.isdigit())) or (hi and not hi.isdigit()):
        return None
    low = int(lo) if lo else 0
    high = int(hi) if hi else None
    if low > MAX_REPEAT or (high is not None and high > MAX_REPEAT):
        raise RouteRegexError(f"the repetition {{{body}}} is larger than {MAX_REPEAT}")
    if high is not None and high < low:
        raise RouteRegexError(f"the repetition {{{body}}} has its maximum below its minimum")
    if not comma:
        return f"{{{low}}}", end + 1
    return (f"{{{low},}}" if high is None else f"{{{low},{high}}}"), end + 1


def translate(path: str) -> str:
    """The RE2 pattern that matches what the ERE path matches."""
    out: list[str] = []
    i, n = 0, len(path)
    quantified = False  # the last thing emitted was a quantifier
    while i < n:
        c = path[i]
        if c == "\\":
            if i + 1 >= n:
                raise RouteRegexError("the path ends with a lone backslash")
            e = path[i + 1]
            i += 2
            quantified = False
            if e.isdigit() and e != "0":
                raise RouteRegexError(
                    f"\\{e} is a backreference: not part of POSIX extended syntax, and no linear-time engine matches it"
                )
            if e in "<>`'":
                raise RouteRegexError(f"\\{e} (a GNU word or buffer anchor) is not supported; use \\b or ^ and $")
            if e in _CLASS_ESCAPES:
                out.append("\\" + e)
            elif e.isalnum():
                raise RouteRegexError(f"\\{e} is not defined in POSIX extended syntax; write the character itself")
            else:
                out.append(_escape(e))
            continue
        if c == "[":
            cls, i = _bracket(path, i)
            out.append(cls)
            quantified = False
            continue
        if c in _QUANTIFIERS or (c == "{" and _interval(path, i) is not None):
            if quantified:
                raise RouteRegexError(f"a quantifier follows another one at {path[max(0, i - 3):i + 1]!r}; write a single quantifier")
            if c == "{":
                text, i = _interval(path, i)  # type: ignore[misc]
                out.append(text)
            else:
                out.append(c)
                i += 1
            quantified = True
            continue
        quantified = False
        if c == "(" and i + 1 < n and path[i + 1] == "?":
            raise RouteRegexError("'(?' starts a Perl group or flag, which is not POSIX extended syntax")
        if c in "{}]":
            out.append("\\" + c)
        else:
            out.append(c)
        i += 1
    return "".join(out)


class RoutePattern:
    """A compiled route path; fullmatch() says whether a whole path matches."""

    __slots__ = ("pattern", "_re", "max_path")

    def __init__(self, path: str) -> None:
        self.pattern = path
        regexp = _re2.RE2(translate(path).encode("utf-8"), _OPTIONS)
        if not regexp.ok():
            raise RouteRegexError(regexp.error().decode("utf-8", "replace"))
        if regexp.ProgramSize() > MAX_PROGRAM:
            raise RouteRegexError(f"the pattern compiles to {regexp.ProgramSize()} instructions; the limit is {MAX_PROGRAM}")
        self._re = regexp
        # The longest path this pattern is tried on (see STEP_BUDGET).
        self.max_path = min(MAX_PATH, STEP_BUDGET // regexp.ProgramSize())

    def fullmatch(self, path: str) -> bool:
        data = path.encode("utf-8", "surrogateescape")
        if len(data) > self.max_path:
            return False
        return self._re.Match(_ANCHOR_BOTH, data, 0, len(data))[0][0] >= 0
