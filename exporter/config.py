"""Configuration: one table of options drives the flags, the YAML file, the environment and the docs.

Precedence: flags > environment (GAUDI_EXPORTER_*) > config file > defaults. A YAML key
``pricing.static.usd_per_hour`` is the flag ``--pricing.static.usd-per-hour`` and the variable
``GAUDI_EXPORTER_PRICING_STATIC_USD_PER_HOUR``. An unknown key or a wrong type is a ConfigError that names the key
and the expected form (the CLI exits 2).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter import yamlfile
from exporter.backends import NAMES as BACKENDS
from exporter.backends.simulated import MODELS, PROFILES
from exporter.collectors import COLLECTORS

DEFAULT_PORT = 9654
ENV_PREFIX = "GAUDI_EXPORTER_"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Option:
    key: str  # dotted YAML path
    type: type  # str, int, float, bool or list (of str)
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    nullable: bool = False
    group: str = "general"

    @property
    def flag(self) -> str:
        if self.key.startswith("collectors."):  # node_exporter's spelling: --collector.NAME / --no-collector.NAME
            return "--collector." + self.key.split(".", 1)[1].replace("_", "-")  # and --collector.NAME.OPTION
        return "--" + self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.replace(".", "_").upper()

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
                list: "a list of strings (or a comma-separated string)"}[self.type] + (
            f" >= {self.minimum:g}" if self.minimum is not None else "")


# option group -> the heading it has in --help and in the README's flag table
GROUP_TITLES = {
    "general": "general", "web": "HTTP server", "devices": "device backends", "cost": "cost model",
    "pricing": "prices", "node": "node identity, spot notices, checkpoints", "attribution":
    "Kubernetes / HPC attribution", "market": "market watcher (--mode market)", "log": "logging",
    "collectors": "collectors (node_exporter style: --collector.NAME / --no-collector.NAME)",
}

Opt = Option
OPTIONS: list[Option] = [
    Opt("mode", str, "node", "node: this node's devices and cost (DaemonSet); market: spot and on-demand prices "
      "across regions (one Deployment)", ("node", "market")),
    Opt("web.listen_address", str, f":{DEFAULT_PORT}", "address to listen on for HTTP", group="web"),
    Opt("web.telemetry_path", str, "/metrics", "path under which to expose metrics", group="web"),
    Opt("web.config.file", str, None, "exporter-toolkit web config (TLS, basic auth)", nullable=True, group="web"),
    Opt("web.checkpoint_api", bool, True, "accept POST /api/v1/checkpoint (loopback, or any peer with basic auth)",
      group="web"),
    Opt("backend", str, "auto", "device backend: auto tries hlml, then hl-smi; simulated is for demos and tests",
      BACKENDS, group="devices"),
    Opt("simulated.devices", int, 8, "number of simulated HPUs", minimum=1, group="devices"),
    Opt("simulated.profile", str, "training", "simulated workload", PROFILES, group="devices"),
    Opt("simulated.seed", int, 0, "seed of the simulated workload (same seed, same values)", group="devices"),
    Opt("simulated.model", str, "HL-325L", "simulated device model", tuple(MODELS), group="devices"),
    Opt("hlsmi.path", str, "hl-smi", "path of the hl-smi tool", group="devices"),
    Opt("hlsmi.timeout", float, 10.0, "seconds before an hl-smi run counts as failed", minimum=0.1,
        group="devices"),
    Opt("hpu.lost_grace_seconds", float, 3600.0, "seconds a lost HPU keeps gaudi_hpu_up 0 and its error series "
        "before they are dropped (at most 64 lost HPUs are kept)", minimum=0, group="devices"),
    Opt("interval", float, 5.0, "seconds between collection ticks", minimum=0.1),
    Opt("slow_interval", float, 60.0, "seconds between reads of slow-changing values (ECC, NIC links, firmware)",
      minimum=0.1),
    Opt("efficiency.target", float, 0.8, "utilisation score that counts as fully efficient (0-1)", minimum=0.01,
      group="cost"),
    Opt("pricing.source", str, "static", "where the node's price comes from", ("static", "on_prem", "aws"),
      group="pricing"),
    Opt("pricing.static.usd_per_hour", float, None, "node price in USD per hour", nullable=True, minimum=0,
      group="pricing"),
    Opt("pricing.static.entry", str, None, "built-in price list entry (see docs/pricing.md) for a node that is that "
      "offering; default: the entry of this node's instance type, if any", nullable=True, group="pricing"),
    Opt("pricing.on_prem.hardware_usd", float, None, "purchase price of the node", nullable=True, minimum=0,
      group="pricing"),
    Opt("pricing.on_prem.amortization_years", float, 4.0, "years over which the hardware is amortised",
      minimum=0.1, group="pricing"),
    Opt("pricing.on_prem.opex_usd_per_hour", float, 0.0, "fixed operating cost per hour (space, support, staff)",
      minimum=0, group="pricing"),
    Opt("pricing.electricity.usd_per_kwh", float, None, "electricity price, for gaudi_energy_cost_usd_total",
      nullable=True, minimum=0, group="pricing"),
    Opt("pricing.electricity.pue", float, 1.0, "power usage effectiveness of the site", minimum=1.0,
      group="pricing"),
    Opt("pricing.aws.spot_refresh_seconds", float, 300.0, "seconds between spot price look-ups", minimum=10,
      group="pricing"),
    Opt("pricing.aws.on_demand_refresh_seconds", float, 21600.0, "seconds between on-demand price look-ups",
      minimum=60, group="pricing"),
    Opt("pricing.aws.backoff_base_seconds", float, 30.0, "first retry delay after an AWS error; doubles per "
        "failure, with jitter", minimum=1, group="pricing"),
    Opt("pricing.aws.backoff_max_seconds", float, 3600.0, "longest retry delay after AWS errors", minimum=1,
        group="pricing"),
    Opt("pricing.aws.max_attempts", int, 3, "attempts per AWS call (boto3's own retries)", minimum=1,
        group="pricing"),
    Opt("pricing.aws.product_description", str, "Linux/UNIX", "spot product description", group="pricing"),
    Opt("pricing.aws.pricing_region", str, "us-east-1", "region of the AWS Pricing endpoint",
      ("us-east-1", "eu-central-1", "ap-south-1"), group="pricing"),
    Opt("node.name", str, None, "node name (default: $NODE_NAME, else the host name)", nullable=True, group="node"),
    Opt("node.instance_type", str, "", "instance type when instance metadata is not available", group="node"),
    Opt("node.region", str, "", "region when instance metadata is not available", group="node"),
    Opt("node.zone", str, "", "availability zone when instance metadata is not available", group="node"),
    Opt("node.lifecycle", str, "", "spot or on-demand when instance metadata is not available",
      ("", "spot", "on-demand"), group="node"),
    Opt("spot.poll_seconds", float, 5.0, "seconds between spot notice checks (AWS advises 5)", minimum=1,
      group="node"),
    Opt("checkpoint.path", str, None, "file or glob a training job touches when it saves a checkpoint (newest "
      "mtime counts)", nullable=True, group="node"),
    Opt("kubernetes.socket", str, "/var/lib/kubelet/pod-resources/kubelet.sock", "kubelet pod-resources socket",
      group="attribution"),
    Opt("kubernetes.resource_names", list, ["habana.ai/gaudi"], "extended resource names of HPUs",
      group="attribution"),
    Opt("hpc.job_dir", str, None, "directory with one file per HPU (named by index) holding the job id",
      nullable=True, group="attribution"),
    Opt("market.source", str, "aws", "aws, or the path of a JSON file as `aws ec2 describe-spot-price-history` "
      "prints", group="market"),
    Opt("market.regions", list, ["us-east-1", "us-west-2", "eu-central-1"], "regions to watch", group="market"),
    Opt("market.instance_types", list, ["dl1.24xlarge"], "instance types to watch", group="market"),
    Opt("market.refresh_seconds", float, 300.0, "seconds between market refreshes", minimum=10, group="market"),
    Opt("market.product_description", str, "Linux/UNIX", "spot product description", group="market"),
    Opt("log.level", str, "info", "log level", ("debug", "info", "warn", "error"), group="log"),
    Opt("log.format", str, "logfmt", "log format", ("logfmt", "json"), group="log"),
]
OPTIONS += [Opt(f"collectors.{name}", bool, default, f"{text}", group="collectors")
            for name, (default, text) in COLLECTORS.items()]
OPTIONS.append(Opt("collectors.hpu.nic_ports", str, "summary", "NIC port series: summary exports ports up/down "
                   "per HPU (16 series per 8-HPU node); per-port adds one series per port (192 more), for debugging",
                   ("summary", "per-port"), group="collectors"))
BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}


def coerce(opt: Option, value: Any, where: str) -> Any:
    """Check and convert one value; ``where`` says where it came from for the error message."""
    if value is None:
        if opt.nullable:
            return None
        raise ConfigError(f"{where}: {opt.key} must be {opt.describe()}, not empty")
    try:
        if opt.type is bool:
            if isinstance(value, bool):
                out: Any = value
            elif isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                out = value.lower() in ("true", "1", "yes")
            else:
                raise TypeError
        elif opt.type is int:
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError
            out = int(value)
        elif opt.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError
            out = float(value)
            if out != out or out in (float("inf"), float("-inf")):
                raise TypeError
        elif opt.type is list:
            if isinstance(value, str):
                out = [v.strip() for v in value.split(",") if v.strip()]
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out = list(value)
            else:
                raise TypeError
        else:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise TypeError
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {opt.key} must be {opt.describe()}, got {value!r}") from None
    if opt.choices is not None and out not in opt.choices:
        raise ConfigError(f"{where}: {opt.key} must be {opt.describe()}, got {out!r}")
    if opt.minimum is not None and isinstance(out, int | float) and out < opt.minimum:
        raise ConfigError(f"{where}: {opt.key} must be {opt.describe()}, got {out!r}")
    return out


def flatten(tree: Mapping[str, Any], where: str, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        nested = isinstance(v, Mapping) and any(o.startswith(key + ".") for o in BY_KEY)
        if key in BY_KEY and not nested:  # (collectors.hpu is a switch and the parent of collectors.hpu.*)
            out[key] = v
        elif nested:
            out.update(flatten(v, where, key + "."))
        else:
            near = sorted(o for o in BY_KEY if o.split(".")[0] == key.split(".")[0])
            hint = f"; known keys here: {', '.join(near)}" if near else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
    return out


def load_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        tree = yamlfile.read(path, "config file")
    except yamlfile.YamlFileError as e:
        raise ConfigError(str(e)) from None
    if tree is None:
        return {}
    if not isinstance(tree, Mapping):
        raise ConfigError(f"config file {path}: expected a mapping of settings at the top level")
    flat = flatten(tree, f"config file {path}")
    return {k: coerce(BY_KEY[k], v, f"config file {path}") for k, v in flat.items()}


def from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for opt in OPTIONS:
        if opt.env in env:
            out[opt.key] = coerce(opt, env[opt.env], f"environment {opt.env}")
    return out


class Settings(dict):
    """Flat dotted keys -> values, with ``section()`` for the nested view a module takes."""

    def section(self, prefix: str) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for key, value in self.items():
            if not key.startswith(prefix + "."):
                continue
            node = tree
            parts = key[len(prefix) + 1:].split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = value
        return tree


def resolve(flags: Mapping[str, Any], config_file: str | None, env: Mapping[str, str] | None = None) -> Settings:
    """Merge defaults < file < environment < flags (flags given as {key: value} for the ones set)."""
    env = os.environ if env is None else env
    settings = Settings({o.key: o.default for o in OPTIONS})
    if config_file:
        settings.update(load_file(config_file))
    settings.update(from_env(env))
    for key, value in flags.items():
        settings[key] = coerce(BY_KEY[key], value, f"flag {BY_KEY[key].flag}")
    from exporter.http import check_telemetry_path, parse_listen_address

    try:
        parse_listen_address(settings["web.listen_address"])
        check_telemetry_path(settings["web.telemetry_path"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if settings["collectors.kubernetes"] and settings["collectors.hpc"]:
        raise ConfigError("collectors kubernetes and hpc cannot both be on: an HPU carries pod labels or a job "
                          "label, not both")
    if settings["collectors.hpc"] and not settings["hpc.job_dir"]:
        raise ConfigError("collector hpc needs hpc.job_dir (--hpc.job-dir DIR)")
    return settings


def node_name(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """The node label: --node.name, else NODE_NAME (the DaemonSet's downward API), else the host name."""
    env = os.environ if env is None else env
    return settings["node.name"] or env.get("NODE_NAME") or socket.gethostname()
