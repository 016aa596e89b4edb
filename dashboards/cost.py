"""Cost overview: what the Gaudi fleet costs now, today, this month, against budget, and how much of it is idle."""

from __future__ import annotations

from dashboards import panels as P
from dashboards.panels import NODE_SEL, USD, Q, metric
from dashboards.settings import Settings

UID = "gaudi-cost"
TITLE = "Gaudi / Cost overview"

PRICE = metric("gaudi_node_price_usd_per_hour")
RATE = metric("node:gaudi_node_cost_usd_per_hour:rate5m")
NS_RATE = metric("namespace:gaudi_namespace_cost_usd_per_hour:rate5m")
SAVINGS_RATE = metric("node:gaudi_spot_savings_usd_per_hour:rate5m")
IDLE_RATIO = metric("node:gaudi_idle_cost_ratio:rate1h")
# Recorded 5-minute increments (alerts/rules.py): every window here sums them instead of raw counters. Windows of
# days read the cluster-level series (one per cluster: 8,640 samples in 30 days, whatever the fleet size); the
# dashboard-range panels read the node-level ones, so the node variable still applies.
NODE_INC = metric("node:gaudi_node_cost_usd:increase5m")
CLUSTER_INC = metric("cluster:gaudi_node_cost_usd:increase5m")
HPU_INC = metric("node:gaudi_hpu_cost_usd:increase5m")
IDLE_INC = metric("node:gaudi_hpu_idle_cost_usd:increase5m")
SAVINGS_INC = metric("node:gaudi_spot_savings_usd:increase5m")

# The price in force, not a rate of the cost counter: the counter grows in ticks that a short rate() window holds
# a varying number of (19.56-20.28 for a constant 19.92 USD/h with 2 s ticks and 5 s scrapes), and a 5m rate ramps
# up from 0 after a start. One price series per node at a time; max by () guards a source change's overlap.
SPEND_NOW = f"sum(max by (cluster, job, instance) ({PRICE}{{{NODE_SEL}}}))"
# Hours left in this calendar month, for the projection. PromQL's date functions are UTC, so the dashboard runs in
# UTC too (TIMEZONE): its now/d and now/M then start at the same UTC midnight these hours count from.
HOURS_LEFT = "scalar((days_in_month() - day_of_month()) * 24 + 24 - hour() - minute() / 60)"
TIMEZONE = "utc"

WARN_AT = 0.8  # budget share at which the bar turns orange


def _budget_panel(s: Settings) -> P.Panel:
    queries = []
    for label, budget, window in (("daily", s.daily_budget_usd, s.daily_window),
                                  ("monthly", s.monthly_budget_usd, s.monthly_window)):
        if budget:
            queries.append(Q(f"sum(sum_over_time({CLUSTER_INC}{{{P.CLUSTER_SEL}}}[{window}])) / {budget:g}",
                             f"{label}: last {window} of {budget:g} USD", instant=True))
    if not queries:  # every budget disabled (null): show the spend itself so the panel never lies
        return P.bargauge("Spend (no budget set)", USD,
                          [Q(f"sum(sum_over_time({CLUSTER_INC}{{{P.CLUSTER_SEL}}}[{w}]))", f"last {w}",
                             instant=True)
                           for w in (s.daily_window, s.monthly_window)], w=8, h=6,
                          description=f"Set budgets.cluster in {s.source} to see the share used here.")
    return P.bargauge("Budget used", P.RATIO, queries, w=8, h=6, min_=0, max_=1.2,
                      description=f"Spend over the rolling windows as a share of budgets.cluster in {s.source}; "
                                  "the budget alerts use the same numbers.",
                      thresholds=P.steps(("green", None), ("orange", WARN_AT), ("red", 1.0)))


def build(s: Settings) -> P.Board:
    node_link = [P.link("Node ${__field.labels.instance} in the fleet", "gaudi-fleet",
                        node="${__field.labels.instance}")]
    money = P.steps(("blue", None))
    top = [
        P.stat("Spend now (USD/h)", USD, [Q(SPEND_NOW, "USD/h", instant=True)], decimals=2, thresholds=money,
               description="The price in force on the selected nodes (gaudi_node_price_usd_per_hour), in USD per "
                           "hour: what the cost counters integrate from now on."),
        P.stat("Today", USD, [Q(f"sum(sum_over_time({NODE_INC}{{{NODE_SEL}}}[$__range]))", "today",
                                instant=True)],
               time_from="now/d", decimals=2, thresholds=money,
               description="Spend of the selected nodes since midnight UTC (recorded 5-minute increments)."),
        P.stat("Last 30 days", USD, [Q(f"sum(sum_over_time({CLUSTER_INC}{{{P.CLUSTER_SEL}}}[$__range]))", "30 d",
                                       instant=True)],
               time_from="30d", decimals=2, thresholds=money,
               description="Spend of the selected clusters over 30 days, from the recorded 5-minute increments "
                           "(partial until the rules have run for 30 days: see the runbook)."),
        P.stat("Projected this month", USD,
               [Q(f"sum(sum_over_time({CLUSTER_INC}{{{P.CLUSTER_SEL}}}[$__range])) + {SPEND_NOW} * {HOURS_LEFT}",
                  "projected", instant=True)],
               time_from="now/M", decimals=0, thresholds=money,
               description="Spend of the selected clusters since the 1st of this month 00:00 UTC plus the price "
                           "in force on the selected nodes until the month ends (UTC). The dashboard's time zone "
                           "is UTC so that the start of the month and the hours left agree."),
        P.stat("Idle cost (range)", USD,
               [Q(f"sum(sum_over_time({IDLE_INC}{{{NODE_SEL}}}[$__range]))", "idle", instant=True)], decimals=2,
               thresholds=P.steps(("orange", None)),
               description="Money spent on the selected nodes' HPUs while idle over the dashboard's time range."),
        P.stat("Idle share (range)", P.RATIO,
               [Q(f"sum(sum_over_time({IDLE_INC}{{{NODE_SEL}}}[$__range])) / sum(sum_over_time({HPU_INC}"
                  f"{{{NODE_SEL}}}[$__range]))", "idle share", instant=True)], decimals=1,
               thresholds=P.steps(("green", None), ("red", s.idle_share_max))),
    ]
    second = [
        _budget_panel(s),
        P.stat("Spot savings (range)", USD,
               [Q(f"sum(sum_over_time({SAVINGS_INC}{{{NODE_SEL}}}[$__range])) or vector(0)", "saved",
                  instant=True)],
               w=4, h=6, decimals=2, needs=[P.SPOT], thresholds=P.steps(("green", None)),
               description="On-demand price minus price paid, over the time range; 0 without spot nodes."),
        P.timeseries("Spot savings rate (USD/h)", USD,
                     [Q(f"sum({SAVINGS_RATE}{{{NODE_SEL}}}) or vector(0)", "saving USD/h")], w=12, h=6,
                     needs=[P.SPOT], min_=0, min_interval="5m"),
    ]
    third = [
        # one line per node: in 5-minute steps (the rate is over 5m) so that "All" at 1,000 nodes stays cheap
        P.timeseries("Spend by node (USD/h)", USD, [Q(f"sum by (instance) ({RATE}{{{NODE_SEL}}})",
                                                        "{{instance}}")], stack=True, min_=0, links=node_link,
                     min_interval="5m",
                     description="Recorded 5-minute cost rate of each selected node, in 5-minute steps."),
        P.timeseries("Spend by namespace (USD/h)", USD,
                     [Q(f'sum by (namespace) ({NS_RATE}{{{P.CLUSTER_SEL}, namespace=~"$namespace"}})',
                        "{{namespace}}")],
                     stack=True, min_=0,
                     description='Whole cluster (the recording rule sums over nodes). HPU cost no pod held, and '
                                 'all cost of nodes without Kubernetes attribution, shows as namespace "".'),
    ]
    fourth = [
        P.timeseries("Idle cost share by node (1 h)", P.RATIO,
                     [Q(f"max by (instance) ({IDLE_RATIO}{{{NODE_SEL}}})", "{{instance}}")], min_=0, max_=1,
                     links=node_link, thresholds=P.steps(("green", None), ("red", s.idle_share_max)),
                     threshold_line=True, min_interval="5m",
                     description=f"Recorded 1-hour idle share of each selected node, in 5-minute steps. Red line: "
                                 f"idle.cost_share_max from {s.source}."),
        # per node from the recorded increments (pod labels summed away); a node's HPUs are on the fleet board
        P.table("Most expensive idle nodes (range)", USD,
                [Q(f"topk(10, sum by (instance, node) (sum_over_time({IDLE_INC}{{{NODE_SEL}}}[$__range])))")],
                rename={"instance": "Node", "node": "Node name", "Value": "Idle cost"},
                sort_by="Value", decimals=2,
                links=[P.link("Devices of ${__data.fields.Node}", "gaudi-fleet", node="${__data.fields.Node}")]),
    ]
    return P.dashboard(UID, TITLE, "Spend, budget, idle cost and spot savings of the Gaudi fleet.",
                       [top, second, third, fourth], annotations=P.spot_annotations(), timezone=TIMEZONE)
