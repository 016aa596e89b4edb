"""`gaudi-exporter`: the daemon (no subcommand) and its tools: check-config, metrics, rules, dashboards, advise."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.config import GROUP_TITLES, OPTIONS, ConfigError, resolve

log = logging.getLogger("gaudi_exporter")

# subcommand -> {verb: "module:function"} (function(argv) -> exit code); None verb = no verb
SUBCOMMANDS: dict[str, dict[str | None, str]] = {
    "rules": {"build": "alerts.build:main"},
    "dashboards": {"build": "dashboards.build:main", "render": "dashboards.render:main"},
    "advise": {"batch-size": "exporter.advisor.batch_size:main", "precision": "exporter.advisor.precision:main",
               "query": "exporter.advisor.prom:main"},
    "report": {"run": "exporter.advisor.report:main", "regions": "exporter.market.report:main"},
}

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gaudi-exporter",
        description="Prometheus exporter for Intel Gaudi nodes: HPU telemetry, live cost, idle cost and spot risk. "
        "Serves /metrics from a cache refreshed every --interval seconds.",
        epilog="Subcommands: check-config FILE | metrics [--format markdown|json] | rules build | dashboards "
        "build|render | advise batch-size|precision | report run|regions  (gaudi-exporter SUBCOMMAND --help). "
        "Every flag can be set in --config FILE (YAML, keys as in docs/configuration.md) or as "
        "GAUDI_EXPORTER_<KEY>; flags win over the environment, which wins over the file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"gaudi-exporter {__version__}")
    p.add_argument("--config", metavar="FILE", help="YAML configuration file")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for opt in OPTIONS:
        g = groups.get(opt.group) or groups.setdefault(opt.group, p.add_argument_group(GROUP_TITLES[opt.group]))
        kw: dict = {"dest": opt.key, "default": argparse.SUPPRESS, "help": opt.help + f" (default: {opt.default})"}
        if opt.type is bool:
            g.add_argument(opt.flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if opt.choices:
            kw["choices"] = opt.choices
        kw["metavar"] = {int: "N", float: "NUMBER", list: "A,B"}.get(opt.type, "VALUE") if not opt.choices else None
        if kw["metavar"] is None:
            del kw["metavar"]
        g.add_argument(opt.flag, **kw)
    return p


def _dispatch(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    verbs = SUBCOMMANDS[cmd]
    if not rest or rest[0] in ("-h", "--help") or rest[0] not in verbs:
        names = ", ".join(v for v in verbs if v)
        print(f"usage: gaudi-exporter {cmd} {{{names}}} [options]", file=sys.stderr)
        return 0 if rest and rest[0] in ("-h", "--help") else 2
    target = verbs[rest[0]]
    module, func = target.split(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        print(f"gaudi-exporter {cmd} {rest[0]}: needs an optional dependency that is missing ({e}); "
              "install gaudi-exporter[dev] or the extra the docs name", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(rest[1:]) or 0)


def check_config(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="gaudi-exporter check-config", description="Validate a YAML config file.")
    p.add_argument("file")
    args = p.parse_args(argv)
    try:
        settings = resolve({}, args.file, env={})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({sum(1 for o in OPTIONS if settings[o.key] != o.default)} settings differ from the "
          "defaults)")
    return 0


def metrics_cmd(argv: list[str]) -> int:
    from exporter.docs import metrics_json, metrics_markdown

    p = argparse.ArgumentParser(prog="gaudi-exporter metrics", description="Print the metric reference.")
    p.add_argument("--format", choices=("markdown", "json"), default="markdown")
    args = p.parse_args(argv)
    print(metrics_markdown() if args.format == "markdown" else metrics_json(), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _dispatch(argv)
    if argv and argv[0] == "check-config":
        return check_config(argv[1:])
    if argv and argv[0] == "metrics":
        return metrics_cmd(argv[1:])
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config", None)
    try:
        settings = resolve(args, config_file)
    except ConfigError as e:
        print(f"gaudi-exporter: error: {e}", file=sys.stderr)
        return 2
    from exporter import logs

    logs.setup(settings["log.level"], settings["log.format"])
    from exporter.daemon import StartupError, run

    try:
        return run(settings)
    except StartupError as e:
        log.error("%s", e)
        print(f"gaudi-exporter: {e}", file=sys.stderr)
        return 1
