"""`gaudi-exporter report regions`: where spot capacity is cheapest over the last H hours, as markdown.

Statistics are time-weighted: a price holds from its change until the next one, so a zone that spiked for five
minutes does not look as dear as one that stayed high all day.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter import extras
from exporter.argparser import Parser
from exporter.market.fetch import ClientFactory, MarketWatcher, region_of_zone
from exporter.pricing.aws import SpotRow


@dataclass(frozen=True)
class ZoneStats:
    region: str
    zone: str
    instance_type: str
    now: float
    low: float
    avg: float
    high: float


def window_stats(rows: list[SpotRow], start: float, end: float) -> tuple[float, float, float, float] | None:
    """(price at end, min, time-weighted mean, max) of one zone's price over [start, end]; None if no data."""
    rows = sorted((r for r in rows if r.timestamp <= end), key=lambda r: r.timestamp)
    if not rows:
        return None
    # The price in force at `start` is the last change at or before it; earlier changes do not count.
    first = max((i for i, r in enumerate(rows) if r.timestamp <= start), default=0)
    rows = rows[first:]
    total = area = 0.0
    seen: list[float] = []
    for i, r in enumerate(rows):
        seg_start = max(r.timestamp, start)
        seg_end = rows[i + 1].timestamp if i + 1 < len(rows) else end
        dt = max(0.0, min(seg_end, end) - seg_start)
        if dt > 0 or i == len(rows) - 1:
            seen.append(r.usd_per_hour)
        total += dt
        area += r.usd_per_hour * dt
    avg = area / total if total > 0 else rows[-1].usd_per_hour
    return rows[-1].usd_per_hour, min(seen), avg, max(seen)


def zone_stats(rows: list[SpotRow], start: float, end: float) -> list[ZoneStats]:
    groups: dict[tuple[str, str], list[SpotRow]] = {}
    for r in rows:
        groups.setdefault((r.zone, r.instance_type), []).append(r)
    out = []
    for (zone, itype), g in groups.items():
        s = window_stats(g, start, end)
        if s is not None:
            out.append(ZoneStats(region_of_zone(zone), zone, itype, *s))
    out.sort(key=lambda z: (z.avg, z.now, z.zone, z.instance_type))
    return out


def render(stats: list[ZoneStats], on_demand: dict[tuple[str, str], float], *, hours: float, end: float,
           source_label: str, errors: dict[str, str]) -> str:
    when = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Spot prices over the {hours:g} h ending {when}, cheapest first (by time-weighted average).",
             f"Source: {source_label}", "",
             "| # | Region | Zone | Instance type | Spot now $/h | Min $/h | Avg $/h | Max $/h "
             "| On-demand $/h | Avg saving |",
             "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for i, z in enumerate(stats, 1):
        od = on_demand.get((z.region, z.instance_type))
        od_s = f"{od:.3f}" if od else "-"
        saving = f"{(1 - z.avg / od) * 100:.0f}%" if od else "-"
        lines.append(f"| {i} | {z.region} | {z.zone} | {z.instance_type} | {z.now:.4f} | {z.low:.4f} | "
                     f"{z.avg:.4f} | {z.high:.4f} | {od_s} | {saving} |")
    if not stats:
        lines.append("| - | no spot prices found | | | | | | | | |")
    for region, err in sorted(errors.items()):
        lines.append(f"\nError in {region}: {err}")
    return "\n".join(lines) + "\n"


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv: list[str], *, clock: Callable[[], float] = time.time,
         client_factory: ClientFactory | None = None, out=None) -> int:
    out = out or sys.stdout
    if argv and argv[0] == "regions":
        argv = argv[1:]
    p = Parser(prog="gaudi-exporter report regions",
               description="Spot prices by region and zone, cheapest first, over the last "
               "H hours.")
    p.add_argument("--hours", type=float, default=24.0,
                   help="window length in hours (default 24; AWS keeps 90 days)")
    p.add_argument("--source", default="aws", help="'aws' (live, standard credentials) or a JSON file as "
                   "printed by `aws ec2 describe-spot-price-history`")
    p.add_argument("--regions", default="", help="comma-separated; default us-east-1,us-west-2,eu-central-1 "
                   "for aws, every region in the file otherwise")
    p.add_argument("--instance-types", default="dl1.24xlarge", help="comma-separated (default dl1.24xlarge)")
    p.add_argument("--product-description", default="Linux/UNIX")
    args = p.parse_args(argv)
    if not 0 < args.hours <= 24 * 90:
        p.error("--hours must be > 0 and at most 2160 (90 days, what AWS keeps)")
    watcher = MarketWatcher(_csv(args.regions), _csv(args.instance_types), args.source,
                            args.product_description, clock, client_factory)
    end = clock()
    try:
        if args.source == "aws":
            if client_factory is None:
                extras.require("aws", "report regions --source aws")
            label = "aws (live DescribeSpotPriceHistory; on-demand from the AWS price list)"
        else:
            f = watcher.load_file()
            # A file is a recording: its window ends at its newest row, not at today's date.
            end = max((r.timestamp for r in f.rows), default=end)
            label = f"file {args.source}"
            if f.sample:
                label += " -- " + (f.comment if "SAMPLE DATA" in f.comment else f"SAMPLE DATA. {f.comment}")
        start = end - args.hours * 3600
        rows, errors = watcher.history(start, end)
        on_demand = watcher.on_demand_now(end)
    except (OSError, ValueError) as e:
        print(f"report regions: {e}", file=sys.stderr)
        return 2
    stats = zone_stats(rows, start, end)
    out.write(render(stats, on_demand, hours=args.hours, end=end, source_label=label, errors=errors))
    return 0 if stats or not errors else 1
