"""Our one layer over grafanalib 0.7.1: every dashboard builds panels here, so its defects are fixed in one place.

grafanalib still emits Grafana-6/7-era JSON (schemaVersion 12, Graph-style threshold steps with ``"value": "null"``,
GaugePanel options under fieldConfig, BarGauge ``options.fieldOptions``, ``maxDataPoints: 100``, targets with
``intervalFactor: 2`` and ``datasource: null``). We let grafanalib build the panel and dashboard objects, then
``_modernise`` rewrites the few parts it gets wrong into the schemaVersion 39 shape Grafana 10/11 loads without
migrations. Dashboards never touch raw JSON themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from grafanalib import core as G
from grafanalib._gen import DashboardEncoder

from exporter import catalogue

SCHEMA_VERSION = 39
GRID_COLUMNS = 24
TAG = "gaudi-exporter"

# Every panel, target, variable and annotation queries the datasource the user picks.
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}

# What a panel may need beyond a plain node agent; a panel marked so may be empty (never an error) without it.
KUBERNETES = "kubernetes"  # pod-resources attribution (namespace/pod labels, gaudi_namespace_cost_usd_total)
SPOT = "spot"  # a spot node: spot savings, IMDS interruption and rebalance notices
TRAINING = "training"  # a training job exporting gaudi_training_* metrics
NEEDS = frozenset({KUBERNETES, SPOT, TRAINING})
_NEEDS_TEXT = {
    KUBERNETES: "Needs Kubernetes attribution (the kubernetes collector); empty on nodes without it.",
    SPOT: "Needs spot nodes (price lifecycle spot, IMDS notices); empty or zero on on-demand/static-priced nodes.",
    TRAINING: "Needs a training job exporting gaudi_training_* metrics to the same Prometheus.",
}

# Label selectors the variables feed, from the node down to the device.
NODE_SEL = 'cluster=~"$cluster", job=~"$job", instance=~"$node"'
DEVICE_SEL = NODE_SEL + ', namespace=~"$namespace", hpu=~"$hpu"'
CLUSTER_SEL = 'cluster=~"$cluster"'

# The chained template variables, in order; links carry them all.
VARIABLES = ("datasource", "cluster", "job", "node", "namespace", "hpu")

# Grafana unit ids used here; a panel without one of these is a bug the structure test catches.
USD = "currencyUSD"
RATIO = "percentunit"
WATT = "watt"
BYTES = "bytes"
CELSIUS = "celsius"
KWH = "kwatth"
SECONDS = "s"
HOURS = "h"
COUNT = "short"
BOOL = "bool_yes_no"


def metric(name: str) -> str:
    """A metric or recording-rule name, checked against the catalogue so a rename breaks the build, not a panel."""
    if name not in catalogue.all_names():
        raise KeyError(f"{name!r} is neither a catalogue metric nor a recording rule in catalogue.RECORDED")
    return name


@dataclass(frozen=True)
class Q:
    """One PromQL target; ``instant`` for stats/tables, ``table`` to get labels as columns."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    needs: frozenset[str] = frozenset()  # this target only; a panel's own needs apply to all its targets


@dataclass
class Panel:
    """A built panel (modern JSON), its size, and what it needs to show data."""

    json: dict[str, Any]
    w: int
    h: int
    needs: frozenset[str] = frozenset()  # of any target
    target_needs: dict[str, frozenset[str]] = field(default_factory=dict)  # refId -> needs


def steps(*pairs: tuple[str, float | None]) -> list[dict[str, Any]]:
    """Plain-dict threshold steps (Grafana >= 7); the first is the base colour with value None."""
    out = [{"color": c, "value": v} for c, v in pairs]
    if not out or out[0]["value"] is not None:
        raise ValueError("the first threshold step is the base colour and must have value None")
    return out


GREEN_ONLY = steps(("green", None))


def link(title: str, uid: str, **vars_: str) -> dict[str, Any]:
    """A data link to another dashboard (or this one) that keeps the time range and every variable."""
    kept = "".join(f"&${{{v}:queryparam}}" for v in VARIABLES if v not in vars_)
    extra = "".join(f"&var-{k}={v}" for k, v in vars_.items())
    url = f"/d/{uid}?${{__url_time_range}}{kept}{extra}"
    return {"title": title, "url": url}


def _targets(queries: Sequence[Q]) -> list[dict[str, Any]]:
    out = []
    for i, q in enumerate(queries):
        out.append({
            "datasource": DS,
            "editorMode": "code",
            "expr": q.expr,
            "format": "table" if q.table else "time_series",
            "instant": q.instant,
            "range": not q.instant,
            "legendFormat": q.legend or "__auto",
            "refId": chr(ord("A") + i),
        })
    return out


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


_LEGACY_PANEL_KEYS = ("cacheTimeout", "error", "height", "span", "minSpan", "editable", "columns", "fontSize",
                      "color", "mappings", "cards", "dataFormat", "heatmap", "hideZeroBuckets", "highlightCards",
                      "legend", "reverseYBuckets", "tooltip", "xAxis", "yAxis", "xBucketNumber", "xBucketSize",
                      "yBucketBound", "yBucketNumber", "yBucketSize", "maxDataPoints", "hideTimeOverride")


def _modernise(obj: G.Panel, unit: str, queries: Sequence[Q], *, thresholds: list[dict[str, Any]] | None,
               min_: float | None, max_: float | None, decimals: int | None,
               options: dict[str, Any] | None, custom: dict[str, Any] | None,
               links: list[dict[str, Any]] | None, time_from: str | None, description: str,
               overrides: list[dict[str, Any]] | None, mappings: list[dict[str, Any]] | None,
               transformations: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Turn grafanalib's panel JSON into schemaVersion 39 JSON; the single place its defects are handled."""
    j = obj.to_json_data()
    # Encode nested grafanalib objects (GridPos etc.) to plain data first.
    import json as _json

    j = _json.loads(_json.dumps(j, cls=DashboardEncoder))
    for k in _LEGACY_PANEL_KEYS:
        j.pop(k, None)
    fc = j.get("fieldConfig") or {}
    defaults = fc.get("defaults") or {}
    # GaugePanel/BarGauge put reduce settings under fieldConfig.defaults or options.fieldOptions (Grafana 6):
    for k in ("calcs", "limit", "override", "values", "title", "links", "showThresholdLabels",
              "showThresholdMarkers", "noValue"):
        defaults.pop(k, None)
        fc.pop(k, None)
    defaults["unit"] = unit
    defaults["thresholds"] = {"mode": "absolute", "steps": thresholds or GREEN_ONLY}
    defaults["mappings"] = mappings or []
    if min_ is not None:
        defaults["min"] = min_
    else:
        defaults.pop("min", None)
    if max_ is not None:
        defaults["max"] = max_
    else:
        defaults.pop("max", None)
    if decimals is not None:
        defaults["decimals"] = decimals
    else:
        defaults.pop("decimals", None)
    if links:
        defaults["links"] = links
    if custom:
        defaults.setdefault("custom", {}).update(custom)
    if "custom" in defaults:
        defaults["custom"] = _drop_none(defaults["custom"])
    defaults.setdefault("color", {"mode": "palette-classic" if j["type"] == "timeseries" else "thresholds"})
    if defaults.get("color") is None:
        defaults["color"] = {"mode": "thresholds"}
    j["fieldConfig"] = {"defaults": _drop_none(defaults), "overrides": overrides or []}
    opts = j.get("options")
    if not isinstance(opts, dict):  # Heatmap emits options: []
        opts = {}
    opts.pop("fieldOptions", None)
    if options:
        opts.update(options)
    j["options"] = opts
    j["targets"] = _targets(queries)
    j["datasource"] = DS
    j["transformations"] = transformations or []
    if time_from:
        j["timeFrom"] = time_from
    j["description"] = description
    j["links"] = []
    return _drop_none(j)


_REDUCE_LAST = {"calcs": ["lastNotNull"], "fields": "", "values": False}


def _panel(obj: G.Panel, unit: str, queries: Sequence[Q], w: int, h: int, needs: Iterable[str] = (), *,
           thresholds: list[dict[str, Any]] | None = None, min_: float | None = None, max_: float | None = None,
           decimals: int | None = None, options: dict[str, Any] | None = None,
           custom: dict[str, Any] | None = None, links: list[dict[str, Any]] | None = None,
           time_from: str | None = None, description: str = "",
           overrides: list[dict[str, Any]] | None = None, mappings: list[dict[str, Any]] | None = None,
           transformations: list[dict[str, Any]] | None = None) -> Panel:
    if not queries:
        raise ValueError(f"panel {obj.title!r} has no query")
    panel_needs = frozenset(needs)
    target_needs = {chr(ord("A") + i): panel_needs | frozenset(q.needs) for i, q in enumerate(queries)}
    needs = frozenset().union(*target_needs.values())
    if needs - NEEDS:
        raise ValueError(f"unknown needs {sorted(needs - NEEDS)}")
    desc = " ".join([description, *(_NEEDS_TEXT[n] for n in sorted(needs))]).strip()
    j = _modernise(obj, unit, queries, thresholds=thresholds, min_=min_, max_=max_, decimals=decimals,
                   options=options, custom=custom, links=links, time_from=time_from, description=desc,
                   overrides=overrides, mappings=mappings, transformations=transformations)
    return Panel(j, w, h, needs, target_needs)


def timeseries(title: str, unit: str, queries: Sequence[Q], *, w: int = 12, h: int = 8, needs: Iterable[str] = (),
               stack: bool = False, min_: float | None = None, max_: float | None = None,
               thresholds: list[dict[str, Any]] | None = None, threshold_line: bool = False,
               links: list[dict[str, Any]] | None = None, description: str = "", fill: int = 10,
               legend_calcs: Sequence[str] = ("lastNotNull", "max"), draw: str = "line",
               min_interval: str | None = None) -> Panel:
    """A graph; ``min_interval`` (Grafana's panel "Min interval") keeps its step no finer than what it reads
    changes at (a 5-minute rate), so a line per node over the fleet stays under 1 M samples."""
    obj = G.TimeSeries(title=title, dataSource=DS, unit=unit, fillOpacity=fill, drawStyle=draw,
                       legendDisplayMode="table", legendPlacement="right", legendCalcs=list(legend_calcs),
                       tooltipMode="multi", stacking={"mode": "normal", "group": "A"} if stack else {"mode": "none"},
                       maxDataPoints=None)
    custom = {"thresholdsStyle": {"mode": "line" if threshold_line else "off"},
              "axisSoftMin": None, "axisSoftMax": None}
    panel = _panel(obj, unit, queries, w, h, needs, thresholds=thresholds, min_=min_, max_=max_, custom=custom,
                   links=links, description=description)
    if min_interval:
        panel.json["interval"] = min_interval
    return panel


def stat(title: str, unit: str, queries: Sequence[Q], *, w: int = 4, h: int = 4, needs: Iterable[str] = (),
         thresholds: list[dict[str, Any]] | None = None, decimals: int | None = None, time_from: str | None = None,
         description: str = "", graph: bool = False, links: list[dict[str, Any]] | None = None,
         color_mode: str = "value") -> Panel:
    # Stat() without thresholds emits steps "" (invalid); _modernise always writes plain steps.
    obj = G.Stat(title=title, dataSource=DS, format=unit, graphMode="area" if graph else "none",
                 colorMode=color_mode, reduceCalc="lastNotNull", thresholds=[], maxDataPoints=None)
    opts = {"reduceOptions": _REDUCE_LAST, "textMode": "value_and_name" if len(queries) > 1 else "auto",
            "justifyMode": "auto", "orientation": "auto", "wideLayout": True, "showPercentChange": False}
    return _panel(obj, unit, queries, w, h, needs, thresholds=thresholds, decimals=decimals, options=opts,
                  time_from=time_from, description=description, links=links)


def gauge(title: str, unit: str, queries: Sequence[Q], *, w: int = 6, h: int = 6, needs: Iterable[str] = (),
          thresholds: list[dict[str, Any]] | None = None, min_: float = 0.0, max_: float = 1.0,
          description: str = "") -> Panel:
    # GaugePanel puts calcs/min/max under fieldConfig.defaults (grafanalib#575): we write options.reduceOptions.
    obj = G.GaugePanel(title=title, dataSource=DS, format=unit, maxDataPoints=None)
    opts = {"reduceOptions": _REDUCE_LAST, "showThresholdLabels": False, "showThresholdMarkers": True,
            "orientation": "auto", "minVizHeight": 75, "minVizWidth": 75, "sizing": "auto"}
    return _panel(obj, unit, queries, w, h, needs, thresholds=thresholds, min_=min_, max_=max_, options=opts,
                  description=description)


def bargauge(title: str, unit: str, queries: Sequence[Q], *, w: int = 8, h: int = 6, needs: Iterable[str] = (),
             thresholds: list[dict[str, Any]] | None = None, min_: float | None = 0.0, max_: float | None = None,
             description: str = "", links: list[dict[str, Any]] | None = None) -> Panel:
    # BarGauge emits the Grafana 6 options.fieldOptions shape: replaced by fieldConfig + options.reduceOptions.
    obj = G.BarGauge(title=title, dataSource=DS, maxDataPoints=None)
    opts = {"reduceOptions": _REDUCE_LAST, "displayMode": "gradient", "orientation": "horizontal",
            "showUnfilled": True, "valueMode": "color", "namePlacement": "auto", "sizing": "auto",
            "minVizHeight": 16, "minVizWidth": 8, "maxVizHeight": 300}
    return _panel(obj, unit, queries, w, h, needs, thresholds=thresholds, min_=min_, max_=max_, options=opts,
                  description=description, links=links)


def table(title: str, unit: str, queries: Sequence[Q], *, w: int = 12, h: int = 8, needs: Iterable[str] = (),
          sort_by: str = "Value", descending: bool = True, hide: Sequence[str] = ("Time",),
          rename: dict[str, str] | None = None, decimals: int | None = None, description: str = "",
          links: list[dict[str, Any]] | None = None) -> Panel:
    """A table of instant results; ``unit`` applies to the value column(s)."""
    obj = G.Table(title=title, dataSource=DS, unit=unit, maxDataPoints=None)
    rename = rename or {}
    shown = rename.get(sort_by, sort_by)
    opts = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""},
            "sortBy": [{"displayName": shown, "desc": descending}]}
    transformations = [{"id": "merge", "options": {}}] if len(queries) > 1 else []
    transformations += [{"id": "organize", "options": {"excludeByName": {k: True for k in hide},
                                                      "renameByName": rename, "indexByName": {}}}]
    return _panel(obj, unit, [Q(q.expr, q.legend, True, True, q.needs) for q in queries], w, h, needs,
                  decimals=decimals, options=opts, transformations=transformations, description=description,
                  custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False,
                          "filterable": True, "displayMode": None}, links=links)


def state_timeline(title: str, unit: str, queries: Sequence[Q], *, w: int = 12, h: int = 8,
                   needs: Iterable[str] = (), thresholds: list[dict[str, Any]] | None = None,
                   mappings: list[dict[str, Any]] | None = None, min_: float | None = None,
                   max_: float | None = None, description: str = "",
                   links: list[dict[str, Any]] | None = None) -> Panel:
    obj = G.StateTimeline(title=title, dataSource=DS, maxDataPoints=None)
    opts = {"mergeValues": True, "showValue": "never", "alignValue": "left", "rowHeight": 0.9,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "single", "sort": "none"}}
    return _panel(obj, unit, queries, w, h, needs, thresholds=thresholds, mappings=mappings, options=opts,
                  min_=min_, max_=max_, description=description, links=links,
                  custom={"fillOpacity": 80, "lineWidth": 0})


def value_map(mapping: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """Value mappings {"0": ("down", "red")} in the Grafana >= 8 shape."""
    return [{"type": "value", "options": {k: {"text": t, "color": c, "index": i}
                                          for i, (k, (t, c)) in enumerate(mapping.items())}}]


# --- layout -------------------------------------------------------------------------------------------------------


def layout(rows: Sequence[Sequence[Panel]]) -> list[Panel]:
    """Place rows of panels on the 24-column grid, left to right; each row starts below the tallest above it."""
    placed: list[Panel] = []
    y = 0
    for row in rows:
        x = 0
        tallest = 0
        for p in row:
            if x + p.w > GRID_COLUMNS:
                raise ValueError(f"row overflows {GRID_COLUMNS} columns at panel {p.json['title']!r}")
            p.json["gridPos"] = {"h": p.h, "w": p.w, "x": x, "y": y}
            x += p.w
            tallest = max(tallest, p.h)
            placed.append(p)
        y += tallest
    return placed


# --- variables, links, annotations, dashboard ----------------------------------------------------------------------


def _variable(name: str, label: str, query: str, *, all_value: str = ".*", include_all: bool = True) -> G.Template:
    return G.Template(name=name, label=label, query=query, dataSource=DS, includeAll=include_all, multi=True,
                      allValue=all_value, refresh=2, sort=3, default="$__all" if include_all else None)


def variables(extra: Sequence[G.Template] = (), node_all: bool = True) -> list[G.Template]:
    """datasource -> cluster -> job -> node -> namespace -> hpu, each one's values filtered by those before it."""
    up = metric("gaudi_hpu_up")
    util = metric("gaudi_hpu_utilization_ratio")
    return [
        G.Template(name="datasource", label="Data source", query="prometheus", type="datasource"),
        _variable("cluster", "Cluster", f"label_values({metric('gaudi_exporter_build_info')}, cluster)"),
        _variable("job", "Job", f"label_values({up}{{{CLUSTER_SEL}}}, job)"),
        # node_all=False: per-HPU boards start on one node (the first), not "All" across a 1,000-node fleet
        _variable("node", "Node", f'label_values({up}{{{CLUSTER_SEL}, job=~"$job"}}, instance)',
                  include_all=node_all),
        _variable("namespace", "Namespace", f"label_values({util}{{{NODE_SEL}}}, namespace)"),
        _variable("hpu", "HPU", f'label_values({util}{{{NODE_SEL}, namespace=~"$namespace"}}, hpu)'),
        *extra,
    ]


def _variable_json(t: G.Template) -> dict[str, Any]:
    j = t.to_json_data()
    for k in ("auto", "auto_count", "auto_min", "tagValuesQuery", "tagsQuery", "useTags", "options"):
        j.pop(k, None)
    if j["type"] == "datasource":
        j["current"] = {}
        j.pop("datasource", None)
        j["regex"] = ""
    else:
        j["definition"] = j["query"]
        j["query"] = {"query": j["query"], "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1}
        j["current"] = ({"selected": True, "text": ["All"], "value": ["$__all"]} if j.get("includeAll")
                        else {})
        j["regex"] = ""
    return _drop_none(j)


def annotation(name: str, expr: str, colour: str, text: str, needs: Iterable[str] = ()) -> dict[str, Any]:
    """A Prometheus annotation: a mark on every time series while ``expr`` returns something."""
    return {"datasource": DS, "enable": True, "expr": expr, "iconColor": colour, "name": name, "step": "15s",
            "titleFormat": name, "textFormat": text, "tagKeys": "instance", "useValueForTime": False,
            "_needs": sorted(needs)}


SPOT_ANNOTATIONS = (
    ("Spot interruption notice", "gaudi_spot_interruption_pending", "red"),
    ("Spot rebalance recommendation", "gaudi_spot_rebalance_recommended", "orange"),
)


def spot_annotations() -> list[dict[str, Any]]:
    return [annotation(n, f"max by (instance) ({metric(m)}{{{NODE_SEL}}}) == 1", c, "{{instance}}", needs=[SPOT])
            for n, m, c in SPOT_ANNOTATIONS]


@dataclass
class Board:
    """A finished dashboard: its JSON and, per panel id, what that panel needs to have data."""

    uid: str
    title: str
    json: dict[str, Any]
    needs: dict[int, frozenset[str]] = field(default_factory=dict)
    target_needs: dict[tuple[int, str], frozenset[str]] = field(default_factory=dict)
    annotation_needs: dict[str, frozenset[str]] = field(default_factory=dict)


def dashboard(uid: str, title: str, description: str, rows: Sequence[Sequence[Panel]], *,
              extra_variables: Sequence[G.Template] = (), annotations: Sequence[dict[str, Any]] = (),
              time_from: str = "now-6h", timezone: str = "browser", node_all: bool = True) -> Board:
    """``timezone="utc"`` where panels use calendar boundaries (now/d, now/M) that must match UTC PromQL."""
    placed = layout(rows)
    d = G.Dashboard(title=title, uid=uid, description=description, tags=[TAG], timezone=timezone,
                    time=G.Time(time_from, "now"), refresh="30s", graphTooltip=1, schemaVersion=SCHEMA_VERSION,
                    links=[G.DashboardLink(title="Gaudi dashboards", tags=[TAG], asDropdown=True,
                                           includeVars=True, keepTime=True, type="dashboards")],
                    templating=G.Templating(list=variables(extra_variables, node_all)))
    import json as _json

    j = _json.loads(_json.dumps(d.to_json_data(), cls=DashboardEncoder))
    for k in ("rows", "style", "hideControls", "sharedCrosshair", "gnetId", "__inputs"):
        j.pop(k, None)
    j["id"] = None
    j["version"] = 1
    j["schemaVersion"] = SCHEMA_VERSION
    j["fiscalYearStartMonth"] = 0
    j["liveNow"] = False
    j["weekStart"] = ""
    j["templating"] = {"list": [_variable_json(t) for t in d.templating.list]}
    j["timepicker"] = {}
    builtin = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
               "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
               "type": "dashboard"}
    ann_needs = {a["name"]: frozenset(a["_needs"]) for a in annotations}
    j["annotations"] = {"list": [builtin, *({k: v for k, v in a.items() if k != "_needs"} for a in annotations)]}
    panels = []
    needs: dict[int, frozenset[str]] = {}
    target_needs: dict[tuple[int, str], frozenset[str]] = {}
    for i, p in enumerate(placed, start=1):
        pj = dict(p.json)
        pj["id"] = i
        panels.append(pj)
        needs[i] = p.needs
        target_needs.update({(i, ref): n for ref, n in p.target_needs.items()})
    j["panels"] = panels
    return Board(uid, title, j, needs, target_needs, ann_needs)
