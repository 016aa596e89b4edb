"""`gaudi-exporter`: the daemon (no subcommand) and its tools: check-config, metrics, rules, dashboards, advise."""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys
from collections.abc import Sequence

from exporter import __version__, extras, preflight
from exporter.argparser import Parser
from exporter.config import GROUP_TITLES, OPTIONS, ConfigError, resolve

log = logging.getLogger("gaudi_exporter")

# subcommand -> {verb: ("module:function", extra it needs or None)}; function(argv) -> exit code
SUBCOMMANDS: dict[str, dict[str, tuple[str, str | None]]] = {
    "rules": {"build": ("alerts.build:main", None)},
    "dashboards": {"build": ("dashboards.build:main", "dashboards"),
                   "render": ("dashboards.render:main", "dashboards")},
    "advise": {"batch-size": ("exporter.advisor.batch_size:main", "advisor"),
               "precision": ("exporter.advisor.precision:main", "advisor"),
               "query": ("exporter.advisor.prom:main", "advisor")},
    "report": {"run": ("exporter.advisor.report:main", "advisor"),
               "regions": ("exporter.market.report:main", None)},
}
COMMANDS = ("check-config", "metrics", *SUBCOMMANDS)


def build_parser() -> Parser:
    p = Parser(
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
    usage = f"usage: gaudi-exporter {cmd} {{{','.join(verbs)}}} [options]"
    if not rest or rest[0] in ("-h", "--help"):
        print(usage, file=sys.stdout if rest else sys.stderr)
        return 0 if rest else 2
    if rest[0] not in verbs:
        close = difflib.get_close_matches(rest[0], list(verbs), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        print(f"gaudi-exporter {cmd}: error: unknown command {rest[0]!r}{hint}\n{usage}", file=sys.stderr)
        return 2
    target, extra = verbs[rest[0]]
    what = f"gaudi-exporter {cmd} {rest[0]}"
    module, func = target.split(":")
    try:
        if extra:
            extras.require(extra, what)
        mod = importlib.import_module(module)
    except extras.MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # a package no extra of ours names: still one line, with the module
        needed = extras.extra_of_module(e.name)
        hint = extras.install_hint(needed) if needed else "reinstall gaudi-exporter"
        print(f"error: {what} cannot import {e.name or e}: {hint}", file=sys.stderr)
        return 2
    return int(getattr(mod, func)(rest[1:]) or 0)


def check_config(argv: list[str]) -> int:
    p = Parser(prog="gaudi-exporter check-config",
               description="Validate a YAML config file, and the web config file it names, as start-up would: "
               "exit 0 if the daemon would accept the settings, 2 with the key at fault if not.")
    p.add_argument("file")
    args = p.parse_args(argv)
    try:
        settings = resolve({}, args.file, env={})
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        preflight.check(settings)
    except ConfigError as e:
        print(f"error: config file {args.file}: {e}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok ({sum(1 for o in OPTIONS if settings[o.key] != o.default)} settings differ from the "
          "defaults)")
    return 0


def metrics_cmd(argv: list[str]) -> int:
    from exporter.docs import metrics_json, metrics_markdown

    p = Parser(prog="gaudi-exporter metrics", description="Print the metric reference.")
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
    if argv and not argv[0].startswith("-"):  # the daemon takes no positional argument: a mistyped command
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f"; did you mean {close[0]}?" if close else f" (commands: {', '.join(COMMANDS)})"
        print(f"gaudi-exporter: error: unknown command {argv[0]!r}{hint}\nRun 'gaudi-exporter --help' for the list "
              "of flags and commands.", file=sys.stderr)
        return 2
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
    except ConfigError as e:
        source = f" (settings from config file {config_file} and the command line)" if config_file and \
            str(config_file) not in str(e) else ""
        print(f"gaudi-exporter: error: {e}{source}", file=sys.stderr)
        return 2
    except StartupError as e:
        log.error("%s", e)
        print(f"gaudi-exporter: {e}", file=sys.stderr)
        return 1
