"""The Helm chart's PrometheusRule template, generated from alerts/rules.py with the thresholds as Helm values.

Nothing here knows what a rule says. Every threshold of alerts/thresholds.py's SCHEMA is replaced by a sentinel
value, the rules are built, and wherever the sentinel comes out in one of the ways rules.py prints a value (as
is, `:g`, as a percentage, a duration in seconds) the template gets the Helm expression that prints the user's value
the same way. A threshold is offered as a value only when putting its default back where its sentinel came out
gives the default rules again, byte for byte; one that rules.py computes with (a window minus a horizon) or that
changes a rule's shape (an empty selector, a list of ports) stays fixed at alerts/thresholds.yaml (listed in
FIXED). A nullable threshold guards the rules its sentinel appears in (null drops them, as in the Python build); a
map of named entries (budgets.namespaces) becomes a `range` over the rules one entry makes. So when rules.py
changes, `gaudi-exporter rules build` regenerates this template and nothing else needs to.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from alerts import rules, thresholds
from alerts.thresholds import duration_seconds, format_duration

VALUES_ROOT = "$.Values.prometheusRule.thresholds"
SECONDS_HELPER = "gaudi-exporter.durationSeconds"
ENTRY_NAMES = ("zz-sentinel-a", "zz-sentinel-b")  # sorted, as rules.py and Helm's range both iterate maps


# ---------------------------------------------------------------------------------------------- leaves and forms

@dataclass(frozen=True)
class Form:
    """One way rules.py prints a value, and the Helm expression that prints it the same way."""

    name: str
    python: Callable[[Any], str]
    helm: Callable[[str], str]


_STR = Form("str", str, lambda ref: f"(toString {ref})")
_NUM = Form("num", lambda x: f"{x:g}", lambda ref: f'(printf "%.6g" (float64 {ref}))')
_PCT = Form("pct", lambda x: f"{x * 100:g}", lambda ref: f'(printf "%.6g" (mulf {ref} 100))')
_SECONDS = Form("seconds", lambda d: f"{duration_seconds(d):g}", lambda ref: f'(include "{SECONDS_HELPER}" {ref})')

_KINDS: dict[int, tuple[str, tuple[Form, ...]]] = {
    id(thresholds.DURATION): ("duration", (_STR, _SECONDS)),
    id(thresholds.USD): ("number", (_NUM,)),
    id(thresholds.USD_OR_NULL): ("number", (_NUM,)),
    id(thresholds.NUMBER): ("number", (_NUM,)),
    id(thresholds.RATIO): ("ratio", (_NUM, _PCT)),
    id(thresholds.SELECTOR): ("selector", (_STR,)),
    id(thresholds.URL): ("url", (_STR,)),
}

_MATCHER = r'[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"'
# JSON Schema (values.schema.json) for each kind; the template needs a non-empty selector (it sits inside {...}).
_SCHEMAS: dict[str, dict] = {
    "duration": {"type": "string", "pattern": r"^([0-9]+(ms|s|m|h|d|w|y))+$",
                 "description": "a Prometheus duration such as 30s, 5m, 1h, 1d"},
    "number": {"type": "number", "minimum": 0},
    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
    "selector": {"type": "string", "pattern": rf"^\s*{_MATCHER}\s*(,\s*{_MATCHER}\s*)*$",
                 "description": 'PromQL label matchers such as job="gaudi-exporter"'},
    "url": {"type": "string", "pattern": "^https?://"},
}


@dataclass(frozen=True)
class Leaf:
    """One threshold: its path in thresholds.yaml, what it is, and its sentinel."""

    path: tuple[str, ...]
    kind: str
    forms: tuple[Form, ...]
    nullable: bool
    sentinel: Any

    @property
    def key(self) -> str:
        return ".".join(self.path)

    def renderings(self) -> list[tuple[str, Form]]:
        return [(f.python(self.sentinel), f) for f in self.forms]


def _walk_schema(schema: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(schema, dict):
        for k, sub in schema.items():
            yield from _walk_schema(sub, (*path, k))
    else:
        yield path, schema


def _get(d: dict, path: tuple[str, ...]) -> Any:
    for k in path:
        d = d[k]
    return d


def _set(d: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


class _Sentinels:
    """Distinct sentinel values, none of whose printed forms occurs in the default rules."""

    def __init__(self, baseline_text: str) -> None:
        self.text, self.n, self.used = baseline_text, 0, set()

    def _free(self, forms: tuple[Form, ...], value: Any) -> bool:
        try:
            shown = [f.python(value) for f in forms]
        except ValueError:
            return False
        return not any(s in self.used or _occurrences(self.text, s) for s in shown)

    def take(self, kind: str, forms: tuple[Form, ...], default: Any) -> Any:
        while True:
            self.n += 1
            i = self.n
            if kind == "number":
                value: Any = 700000 + 37 * i
            elif kind == "ratio":
                value = (612000 + 1013 * i) / 1e6
            elif kind == "duration":
                value = format_duration(duration_seconds(default) + i % 59 + 1) if default else f"{i}s"
            elif kind == "selector":
                value = f'zz_sentinel_{i}="{i}"'
            elif kind == "url":
                value = f"https://zz-sentinel-{i}.invalid/runbook"
            else:
                raise ValueError(kind)
            if self._free(forms, value):
                self.used |= {f.python(value) for f in forms}
                return value
            if i > 5000:
                raise RuntimeError(f"no free sentinel for a {kind}")


def _occurrences(text: str, shown: str) -> list[int]:
    """Where ``shown`` stands on its own in ``text`` (not inside a longer number or name)."""
    return [m.start() for m in re.finditer(rf"(?<![\w.]){re.escape(shown)}(?![\w])", text)]


# ---------------------------------------------------------------------------------------------- building rules

def _spec_groups(t: dict) -> list[dict]:
    """The PrometheusRule's groups, in the order alerts/build.py writes them."""
    by_file = rules.groups(t)
    return [g for name in sorted(by_file) for g in by_file[name]]


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


def _map_strings(node: Any, fn: Callable[[str], Any]) -> Any:
    if isinstance(node, str):
        return fn(node)
    if isinstance(node, dict):
        return {k: _map_strings(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [_map_strings(v, fn) for v in node]
    return node


def _replace(text: str, pairs: list[tuple[str, str]]) -> str:
    for old, new in pairs:
        text = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w])", lambda _m, n=new: n, text)
    return text


def _text(groups: list[dict]) -> str:
    return "\n".join(_strings(groups))


# ---------------------------------------------------------------------------------------------- analysis

@dataclass
class Ref:
    """A Helm expression in a string: a value printed in one form."""

    ref: str
    form: Form

    def helm(self) -> str:
        return self.form.helm(self.ref)


@dataclass
class Item:
    """One rule of a group, maybe under guards (values that must be non-null) or inside a range over a map."""

    rule: dict
    guards: list[str] = field(default_factory=list)
    range_over: str | None = None
    block: int = 0                  # items of one range block; a new block starts where Python starts over


@dataclass
class Analysis:
    groups: list[dict]              # name (+ other keys) of each group, rules replaced by items
    items: list[list[Item]]
    values: dict                    # the settable thresholds with their defaults (values.yaml)
    schema: dict                    # their JSON schema (values.schema.json)
    fixed: list[str]                # thresholds that stay at alerts/thresholds.yaml
    maps: list[str] = field(default_factory=list)


def analyse(t: dict | None = None) -> Analysis:
    """Find which thresholds the template can take from values, and where each comes out in the rules."""
    t = thresholds.validate(copy.deepcopy(t)) if t is not None else thresholds.load()
    baseline = _spec_groups(t)
    sentinels = _Sentinels(_text(baseline))
    leaves: list[Leaf] = []
    maps: list[tuple[tuple[str, ...], dict]] = []
    fixed: list[str] = []
    for path, typ in _walk_schema(thresholds.SCHEMA):
        if isinstance(typ, thresholds._MapOf):
            maps.append((path, typ.schema))
            continue
        kind = _KINDS.get(id(typ))
        if kind is None:
            fixed.append(".".join(path))
            continue
        default = _get(t, path)
        leaves.append(Leaf(path, kind[0], kind[1], typ.nullable,
                           sentinels.take(kind[0], kind[1], default if default is not None else None)))

    # The context the leaves are probed in: the defaults, with every null (an alert turned off) given a sentinel
    # value, so that the thresholds of the rules a null turns off are found too.
    ctx = copy.deepcopy(t)
    for leaf in leaves:
        if leaf.nullable and _get(t, leaf.path) is None:
            _set(ctx, leaf.path, leaf.sentinel)
    try:
        reference = _spec_groups(thresholds.validate(copy.deepcopy(ctx)))
    except (ValueError, KeyError):
        ctx, reference = copy.deepcopy(t), baseline

    def default_of(leaf: Leaf) -> Any:
        return _get(ctx, leaf.path)

    # one at a time: does putting the default back where the sentinel came out give the reference rules?
    settable: list[Leaf] = []
    for leaf in leaves:
        probe = copy.deepcopy(ctx)
        _set(probe, leaf.path, leaf.sentinel)
        try:
            out = _spec_groups(thresholds.validate(probe))
        except (ValueError, KeyError):
            fixed.append(leaf.key)
            continue
        shown = [s for s, _ in leaf.renderings()]
        if not any(_occurrences(s_text, s) for s_text in _strings(out) for s in shown):
            fixed.append(leaf.key)
            continue
        if default_of(leaf) == leaf.sentinel:
            settable.append(leaf)  # a null default: its rules appear only with a value; they get a guard
            continue
        d = default_of(leaf)
        back = _map_strings(out, lambda s, lf=leaf, d=d: _replace(s, [(r, f.python(d)) for r, f in lf.renderings()]))
        if back == reference:
            settable.append(leaf)
        else:
            fixed.append(leaf.key)

    probe = copy.deepcopy(ctx)
    for leaf in settable:
        _set(probe, leaf.path, leaf.sentinel)
    together = _spec_groups(thresholds.validate(copy.deepcopy(probe)))
    back = _map_strings(together, lambda s: _replace(s, [(r, f.python(default_of(lf))) for lf in settable
                                                         if default_of(lf) != lf.sentinel
                                                         for r, f in lf.renderings()]))
    if back != reference:
        raise RuntimeError("thresholds that pass alone do not pass together; alerts/helm_template.py needs a look")
    entry_leaves: dict[str, list[tuple[str, Leaf]]] = {}
    for path, entry_schema in maps:
        entries = {}
        entry_leaves[".".join(path)] = []
        for name in ENTRY_NAMES:
            entry = {}
            for k, typ in entry_schema.items():
                kind = _KINDS[id(typ)]
                leaf = Leaf((*path, name, k), kind[0], kind[1], typ.nullable, sentinels.take(kind[0], kind[1], None))
                entry[k] = leaf.sentinel
                entry_leaves[".".join(path)].append((name, leaf))
            entries[name] = entry
        _set(probe, path, entries)
    out = _spec_groups(thresholds.validate(probe))

    subs: list[tuple[str, Ref]] = [(r, Ref(f"{VALUES_ROOT}.{lf.key}", f)) for lf in settable
                                   for r, f in lf.renderings()]
    groups_meta, items = [], []
    for g in out:
        groups_meta.append({k: v for k, v in g.items() if k != "rules"})
        gi: list[Item] = []
        pending: list[tuple[str, dict]] = []   # rules of entry A awaiting their entry-B twins
        block, last = 0, None
        for rule in g["rules"]:
            text = _text([rule])
            owner = next(((mp, name, [lf for n, lf in lv if n == name]) for mp, lv in entry_leaves.items()
                          for name in ENTRY_NAMES if _occurrences(text, name)), None)
            if owner is None:
                if pending:
                    raise RuntimeError("rules of a map entry are not followed by those of the next entry")
                guards = [f"{VALUES_ROOT}.{lf.key}" for lf in settable if lf.nullable
                          and any(_occurrences(text, r) for r, _ in lf.renderings())]
                gi.append(Item(_parts(rule, subs), guards))
                last = None
                continue
            mp, name, own = owner
            if name == ENTRY_NAMES[0]:
                if last != ENTRY_NAMES[0]:
                    block += 1
                pending.append((mp, rule))
                last = name
                continue
            last = name
            a_mp, a_rule = pending.pop(0)
            a_leaves = [lf for n, lf in entry_leaves[mp] if n == ENTRY_NAMES[0]]
            swap = [(ENTRY_NAMES[0], ENTRY_NAMES[1])] + [
                (ra, rb) for la, lb in zip(a_leaves, own, strict=True)
                for (ra, _), (rb, _) in zip(la.renderings(), lb.renderings(), strict=True)]
            if a_mp != mp or _map_strings(a_rule, lambda s, sw=swap: _replace(s, sw)) != rule:
                raise RuntimeError(f"the rules of map {mp} differ between entries other than by their values")
            entry_subs = [(ENTRY_NAMES[0], Ref("$name", _STR))] + [
                (r, Ref(f"$entry.{la.path[-1]}", f)) for la in a_leaves for r, f in la.renderings()]
            guards = [f"$entry.{la.path[-1]}" for la in a_leaves if la.nullable
                      and any(_occurrences(_text([a_rule]), r) for r, _ in la.renderings())]
            gi.append(Item(_parts(a_rule, entry_subs + subs), guards, f"{VALUES_ROOT}.{mp}", block))
        if pending:
            raise RuntimeError("a map entry's rules have no twin for the next entry")
        items.append(gi)

    values: dict = {}
    schema: dict = {"type": "object", "additionalProperties": False, "properties": {}}
    for lf in settable:
        _nest_value(values, lf.path, _get(t, lf.path))
        _nest_schema(schema, lf.path, _leaf_schema(lf))
    for path, entry_schema in maps:
        _nest_value(values, path, {})
        entry = {"type": ["object", "null"], "additionalProperties": False,
                 "properties": {k: _leaf_schema(Leaf((), _KINDS[id(typ)][0], (), typ.nullable, None))
                                for k, typ in entry_schema.items()}}
        _nest_schema(schema, path, {"type": "object", "propertyNames": {"pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                    "additionalProperties": entry})
    return Analysis(groups_meta, items, values, schema, sorted(fixed), [".".join(p) for p, _ in maps])


def _leaf_schema(leaf: Leaf) -> dict:
    s = dict(_SCHEMAS[leaf.kind])
    if leaf.nullable:
        s["type"] = [s["type"], "null"]
    return s


def _nest_value(values: dict, path: tuple[str, ...], value: Any) -> None:
    for k in path[:-1]:
        values = values.setdefault(k, {})
    values[path[-1]] = value


def _nest_schema(schema: dict, path: tuple[str, ...], leaf: dict) -> None:
    for k in path[:-1]:
        schema = schema["properties"].setdefault(k, {"type": "object", "additionalProperties": False,
                                                     "properties": {}})
    schema["properties"][path[-1]] = leaf


def _parts(rule: dict, subs: list[tuple[str, Ref]]) -> dict:
    """The rule with each string split into literal text and Refs where a sentinel came out."""
    if not subs:
        return rule
    pattern = re.compile("|".join(rf"(?<![\w.]){re.escape(r)}(?![\w])"
                                  for r, _ in sorted(subs, key=lambda s: -len(s[0]))))
    lookup = {r: ref for r, ref in subs}

    def split(s: str) -> Any:
        parts: list[str | Ref] = []
        pos = 0
        for m in pattern.finditer(s):
            if m.start() > pos:
                parts.append(s[pos:m.start()])
            parts.append(lookup[m.group(0)])
            pos = m.end()
        if not any(isinstance(p, Ref) for p in parts):
            return s
        if pos < len(s):
            parts.append(s[pos:])
        return parts
    return _map_strings(rule, split)


# ---------------------------------------------------------------------------------------------- emitting

_PLAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./-]*$")


def _helm_string(parts: list) -> str:
    """A Helm action printing the concatenation; Prometheus' own {{ }} stay inside Go string literals."""
    args = [json.dumps(p, ensure_ascii=False) if isinstance(p, str) else p.helm() for p in parts]
    return "print " + " ".join(args)


def _scalar(value: Any, col: int) -> tuple[str, str | None]:
    """(text after `key: `, block body or None) for one scalar at indentation ``col``."""
    if isinstance(value, list):  # parts
        expr = _helm_string(value)
        if any("\n" in p for p in value if isinstance(p, str)):
            return f"|{2}-", f"{{{{ {expr} | indent {col + 2} }}}}"
        return f"{{{{ {expr} | quote }}}}", None
    if isinstance(value, str):
        if "{{" in value or "}}" in value:
            return _scalar([value], col)
        if "\n" in value:
            body = "\n".join((" " * (col + 2) + line) if line else "" for line in value.split("\n"))
            return "|2-", body
        if _PLAIN.match(value) and value not in ("true", "false", "null", "yes", "no", "on", "off", "~"):
            return value, None
        return json.dumps(value, ensure_ascii=False), None
    return json.dumps(value), None


def _emit_map(d: dict, col: int, first_prefix: str | None = None) -> list[str]:
    lines = []
    for i, (k, v) in enumerate(d.items()):
        lead = first_prefix if (i == 0 and first_prefix is not None) else " " * col
        if isinstance(v, dict):
            lines.append(f"{lead}{k}:")
            lines += _emit_map(v, col + 2)
        else:
            head, body = _scalar(v, col)
            lines.append(f"{lead}{k}: {head}")
            if body is not None:
                lines.append(body)
    return lines


def template(a: Analysis) -> str:
    """The text of templates/prometheusrule.yaml."""
    out = [
        "{{- /* Generated by `gaudi-exporter rules build` (alerts/helm_template.py) from alerts/rules.py."
        " Do not edit. */ -}}",
        "{{- if .Values.prometheusRule.enabled }}",
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PrometheusRule",
        "metadata:",
        "  name: {{ include \"gaudi-exporter.fullname\" . }}",
        "  namespace: {{ include \"gaudi-exporter.namespace\" . }}",
        "  labels:",
        "    {{- include \"gaudi-exporter.labels\" . | nindent 4 }}",
        "    {{- with .Values.prometheusRule.labels }}",
        "    {{- toYaml . | nindent 4 }}",
        "    {{- end }}",
        "  {{- with .Values.prometheusRule.annotations }}",
        "  annotations:",
        "    {{- toYaml . | nindent 4 }}",
        "  {{- end }}",
        "spec:",
        "  groups:",
    ]
    for meta, items in zip(a.groups, a.items, strict=True):
        out += _emit_map(meta, 4, "  - ")
        conditional = [i for i in items if i.guards or i.range_over]
        if items and len(conditional) == len(items):
            conds = [f"(not (kindIs \"invalid\" {g}))" for i in items if not i.range_over for g in i.guards[:1]]
            conds += [f"(gt (len {i.range_over}) 0)" for i in items if i.range_over]
            conds = list(dict.fromkeys(conds))
            out.append(f"    rules:{{{{ if not (or {' '.join(conds)} false) }}}} []{{{{ end }}}}")
        else:
            out.append("    rules:" + ("" if items else " []"))
        current_range = None
        for item in items:
            if (item.range_over, item.block) != current_range:
                if current_range is not None:
                    out.append("    {{- end }}")
                if item.range_over is not None:
                    out.append(f"    {{{{- range $name, $entry := {item.range_over} }}}}")
                    out.append("    {{- $entry = $entry | default dict }}")
                current_range = (item.range_over, item.block) if item.range_over is not None else None
            for g in item.guards:
                out.append(f"    {{{{- if not (kindIs \"invalid\" {g}) }}}}")
            out += _emit_map(item.rule, 6, "    - ")
            for _ in item.guards:
                out.append("    {{- end }}")
        if current_range is not None:
            out.append("    {{- end }}")
    out.append("{{- end }}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------- chart files

VALUES_BEGIN = "  # BEGIN GENERATED thresholds"
VALUES_END = "# END GENERATED thresholds"


def values_block(a: Analysis) -> str:
    """The `prometheusRule.thresholds:` block of values.yaml (between the markers), indented for its place."""
    import yaml

    body = yaml.safe_dump({"thresholds": a.values}, sort_keys=False, width=1000, default_flow_style=False)
    import textwrap

    lines = [VALUES_BEGIN + " (alerts/helm_template.py; do not edit between the markers)",
             "  # The settable thresholds of alerts/thresholds.yaml, with its defaults (its comments say what each "
             "means).",
             "  # Fixed at alerts/thresholds.yaml (rules.py computes with them or they change a rule's shape; change "
             "them there"]
    lines += textwrap.wrap(f"and run `gaudi-exporter rules build`): {', '.join(a.fixed)}.", 110,
                           initial_indent="  # ", subsequent_indent="  # ")
    lines += ["  " + line if line else "" for line in body.splitlines()]
    lines.append(VALUES_END)
    return "\n".join(lines) + "\n"


def splice_values(text: str, a: Analysis) -> str:
    """values.yaml with its generated block replaced."""
    start, end = text.index(VALUES_BEGIN), text.index(VALUES_END)
    end = text.index("\n", end) + 1
    return text[:start] + values_block(a) + text[end:]


def splice_schema(text: str, a: Analysis) -> str:
    """values.schema.json with prometheusRule.thresholds set to the generated schema."""
    schema = json.loads(text)
    schema["properties"]["prometheusRule"]["properties"]["thresholds"] = a.schema
    return json.dumps(schema, indent=2) + "\n"
