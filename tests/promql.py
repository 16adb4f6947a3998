"""The metric and label names a PromQL expression uses: enough to check dashboards and alert rules
against what the daemon exports (not a full PromQL parser: no evaluation, no syntax errors)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_STRING = r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`'
_TOKEN = re.compile(rf"""
    (?P<string>{_STRING})
  | (?P<matchers>\{{(?:{_STRING}|[^{{}}"'`])*\}})        # {{label op "value", ...}}: strings may hold braces
  | (?P<range>\[[^\]]*\])                                 # [5m], [$__rate_interval], [1h:5m]
  | (?P<variable>\$\{{?\w+\}}?)                           # a Grafana variable outside a string
  | (?P<number>(?:\d+(?:ms|[smhdwy]))+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>[^\s])
""", re.VERBOSE)
_MATCHER = re.compile(rf"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})")

# Words that take a parenthesised list of label names.
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
AGGREGATIONS = frozenset({"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"})
KEYWORDS = LABEL_LIST_KEYWORDS | AGGREGATIONS | frozenset({"bool", "and", "or", "unless", "offset", "atan2",
                                                          "inf", "nan"})


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...] = ()


@dataclass
class Query:
    selectors: list[Selector] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)  # labels named in by/without/on/ignoring/group_*

    @property
    def metrics(self) -> set[str]:
        return {selector.metric for selector in self.selectors}


def parse(expr: str) -> Query:
    """The selectors and grouping labels of a PromQL expression."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    query = Query()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][0] if i + 1 < len(tokens) else None
        if kind == "name" and text.lower() in LABEL_LIST_KEYWORDS and following == "open":
            end = next(j for j in range(i + 2, len(tokens)) if tokens[j][0] == "close")
            query.grouping |= {name for k, name in tokens[i + 2:end] if k == "name"}
            i = end
        elif kind == "name" and text.lower() not in KEYWORDS and following != "open":
            matchers = _matchers(tokens[i + 1][1]) if following == "matchers" else ()
            query.selectors.append(Selector(text, matchers))
            i += 1 if following == "matchers" else 0
        elif kind == "matchers":  # a selector without a name before its braces: {__name__="..."}
            matchers = _matchers(text)
            names = [m.value for m in matchers if m.label == "__name__" and m.op == "="]
            query.selectors += [Selector(name, tuple(m for m in matchers if m.label != "__name__")) for name in names]
        i += 1
    return query


def _matchers(text: str) -> tuple[Matcher, ...]:
    return tuple(Matcher(label, op, value[1:-1]) for label, op, value in _MATCHER.findall(text))
