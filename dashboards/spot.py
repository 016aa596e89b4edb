"""Spot and regions: what this fleet pays against on-demand, what spot saves and risks, and where it is cheapest."""

from __future__ import annotations

from grafanalib import core as G

from dashboards import panels as P
from dashboards.panels import CLUSTER_SEL, DS, NODE_SEL, USD, Q, metric
from dashboards.settings import Settings

UID = "gaudi-spot"
TITLE = "Gaudi / Spot and regions"

PRICE = metric("gaudi_node_price_usd_per_hour")
ON_DEMAND = metric("gaudi_node_on_demand_price_usd_per_hour")
SAVINGS = metric("gaudi_spot_savings_usd_total")
SAVINGS_RATE = metric("node:gaudi_spot_savings_usd_per_hour:rate5m")
PENDING = metric("gaudi_spot_interruption_pending")
WHEN = metric("gaudi_spot_interruption_time_seconds")
REBALANCE = metric("gaudi_spot_rebalance_recommended")
AT_RISK = metric("gaudi_cost_at_risk_usd")
CHECKPOINT = metric("gaudi_checkpoint_last_timestamp_seconds")
MARKET = metric("gaudi_spot_market_price_usd_per_hour")
MARKET_OD = metric("gaudi_on_demand_market_price_usd_per_hour")

MARKET_SEL = CLUSTER_SEL + ', instance_type=~"$instance_type", region=~"$region"'


def _market_variables() -> list[G.Template]:
    def var(name: str, label: str, query: str) -> G.Template:
        return G.Template(name=name, label=label, query=query, dataSource=DS, includeAll=True, multi=True,
                          allValue=".*", refresh=2, sort=1, default="$__all")

    return [
        var("instance_type", "Instance type", f"label_values({MARKET}{{{CLUSTER_SEL}}}, instance_type)"),
        var("region", "Region", f'label_values({MARKET}{{{CLUSTER_SEL}, instance_type=~"$instance_type"}}, region)'),
    ]


def build(s: Settings) -> P.Board:
    market = f"min by (region, zone, instance_type, product, source) ({MARKET}{{{MARKET_SEL}}})"
    mine = [
        P.stat("Price paid now (USD/h)", USD, [Q(f"sum({PRICE}{{{NODE_SEL}}})", "USD/h", instant=True)],
               decimals=2, thresholds=P.steps(("blue", None)), description="Sum of the selected nodes' prices."),
        P.stat("Nodes by lifecycle", P.COUNT,
               [Q(f"count by (lifecycle) ({PRICE}{{{NODE_SEL}}})", "{{lifecycle}}", instant=True)],
               thresholds=P.steps(("blue", None))),
        P.stat("Cheapest spot (USD/h)", USD, [Q(f"min({MARKET}{{{MARKET_SEL}}})", "cheapest",
                                                                    instant=True)],
               decimals=3, thresholds=P.steps(("green", None)),
               description="From the market watcher (--mode market), over the selected types and regions."),
        P.stat("Cost at risk now", USD, [Q(f"sum({AT_RISK}{{{NODE_SEL}}})", "at risk", instant=True)], decimals=2,
               thresholds=P.steps(("green", None), ("red", s.cost_at_risk_max_usd)),
               description="Node cost accrued since the last checkpoint: what an interruption now would throw "
                           "away."),
        P.stat("Since last checkpoint", P.SECONDS,
               [Q(f"time() - max({CHECKPOINT}{{{NODE_SEL}}})", "age", instant=True)],
               thresholds=P.steps(("green", None), ("orange", 1800), ("red", 3600))),
        P.stat("Spot savings (range)", USD,
               [Q(f"sum(increase({SAVINGS}{{{NODE_SEL}}}[$__range])) or vector(0)", "saved", instant=True)],
               decimals=2, needs=[P.SPOT], thresholds=P.steps(("green", None))),
    ]
    prices = [
        P.timeseries("This fleet: price paid vs on-demand (USD/h)", USD,
                     [Q(f"max by (instance, lifecycle, source) ({PRICE}{{{NODE_SEL}}})",
                        "{{instance}} {{lifecycle}} ({{source}})"),
                      Q(f"max by (instance, source) ({ON_DEMAND}{{{NODE_SEL}}})",
                        "{{instance}} on-demand ({{source}})", needs=frozenset({P.SPOT}))],
                     min_=0, min_interval="5m",
                     description="The on-demand reference is only known on spot nodes with a live price source."),
        P.timeseries("Spot savings rate (USD/h)", USD,
                     [Q(f"sum by (instance) ({SAVINGS_RATE}{{{NODE_SEL}}})", "{{instance}}")],
                     stack=True, min_=0, needs=[P.SPOT], min_interval="5m"),
    ]
    risk = [
        P.timeseries("Cost at risk since last checkpoint", USD,
                     [Q(f"max by (instance) ({AT_RISK}{{{NODE_SEL}}})", "{{instance}}")], w=12, min_=0,
                     thresholds=P.steps(("green", None), ("red", s.cost_at_risk_max_usd)), threshold_line=True,
                     min_interval="5m",
                     description="Drops to zero at each checkpoint a training job reports. Red line: "
                                 f"spot.cost_at_risk_max_usd from {s.source}."),
        P.state_timeline("Spot notices", P.BOOL,
                         [Q(f"max by (instance) ({PENDING}{{{NODE_SEL}}})", "{{instance}} interruption"),
                          Q(f"max by (instance) ({REBALANCE}{{{NODE_SEL}}})", "{{instance}} rebalance")], w=8,
                         needs=[P.SPOT], mappings=P.value_map({"0": ("none", "green"), "1": ("notice", "red")})),
        P.stat("Interruption in", P.SECONDS,
               [Q(f"min(({WHEN}{{{NODE_SEL}}} > 0) - time())", "interruption in", instant=True)], w=4, h=8,
               needs=[P.SPOT], thresholds=P.steps(("red", None)),
               description="Time left before a scheduled spot interruption (EC2 gives two minutes)."),
    ]
    regions = [
        P.table("Spot market prices, cheapest first (USD/h)", USD, [Q(market)],
                rename={"region": "Region", "zone": "Zone", "instance_type": "Type", "product": "Product",
                        "source": "Source", "Value": "USD/h"},
                sort_by="Value", descending=False, decimals=4, w=12, h=9),
        P.bargauge("Cheapest zones (USD/h)", USD,
                   [Q(f"sort(bottomk(10, min by (zone, instance_type) ({MARKET}{{{MARKET_SEL}}})))",
                      "{{zone}} {{instance_type}}", instant=True)], w=12, h=9,
                   thresholds=P.steps(("green", None))),
    ]
    history = [
        P.timeseries("Spot price by zone (USD/h)", USD,
                     [Q(f"min by (zone, instance_type) ({MARKET}{{{MARKET_SEL}}})", "{{zone}} {{instance_type}}")],
                     w=12, description="As the market watcher last saw it; steps at each price change."),
        P.timeseries("On-demand price by region (USD/h)", USD,
                     [Q(f"min by (region, instance_type) ({MARKET_OD}{{{MARKET_SEL}}})",
                        "{{region}} {{instance_type}}")], w=12),
    ]
    return P.dashboard(UID, TITLE, "Spot vs on-demand prices of this fleet, spot savings and interruption risk, "
                       "and the spot market by region and zone.", [mine, prices, risk, regions, history],
                       extra_variables=_market_variables(), annotations=P.spot_annotations())
