"""The Helm chart (deploy/helm/gaudi-exporter), linted and rendered by Helm's own Go SDK (helm-python-sdk), with the
value sets users install it with: every object validates offline (kubernetes-validate strict, the Prometheus
Operator CRD schemas), the PrometheusRule loads in promtool and equals the Python build for the same thresholds,
the ServiceMonitor/PodMonitor scrape a real exporter through a real Prometheus, each toggle renders nothing when
off and its value when on, and the kustomize tree is the chart's output byte for byte.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import requests
import yaml

from alerts import build, helm_template, rules, thresholds
from exporter import catalogue
from tests.support import procs
from tests.test_deploy import (
    ATTRIBUTION,
    K8S_VERSIONS,
    _attributed_exporter,
    _check_jsonschema,
    _operator_scrape_config,
    _prometheus,
    _series,
    assert_operator_objects_valid,
    exporter_job,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk not installed: pip install -e '.[dev]'")

REPO = procs.REPO
CHART = REPO / "deploy" / "helm" / "gaudi-exporter"
PROMETHEUSRULE = REPO / "deploy" / "kubernetes" / "base" / "generated" / "prometheusrule.yaml"
RELEASE = NAMESPACE = "gaudi-exporter"
CRD_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
DOCS = REPO / "docs" / "deploy.md"

# Stand-ins for key material: the objects only carry them as strings (the TLS scrape test makes real ones).
PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIBfake\n-----END PRIVATE KEY-----\n"
TLS = {"web": {"tls": {"enabled": True,
                       "inline": {"cert": PEM_CERT, "key": PEM_KEY, "basicAuthUsers": {"prometheus": "$2b$04$x"}},
                       "scrape": {"basicAuth": True,
                                  "inline": {"ca": PEM_CERT, "username": "prometheus", "password": "pw"}}}}}
KPS = {"serviceMonitor": {"labels": {"release": "kube-prometheus-stack"}},
       "prometheusRule": {"labels": {"release": "kube-prometheus-stack"}}}
ROLE = "arn:aws:iam::111122223333:role/gaudi-exporter-pricing"
VALUE_SETS: dict[str, dict] = {
    "defaults": {},
    "everything-on": {**copy.deepcopy(TLS), "marketWatcher": {"enabled": True}, "checkpointApi": {"enabled": True},
                      "aws": {"irsa": {"roleArn": ROLE}}, "pricing": {"source": "aws"},
                      "serviceMonitor": {"labels": {"release": "kube-prometheus-stack"},
                                         "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"],
                                                                "regex": "gaudi_hpu_clock_.*"}]},
                      "prometheusRule": {"labels": {"release": "kube-prometheus-stack"},
                                         "thresholds": {"budgets": {"namespaces": {"ml-research": {
                                             "daily_usd": 1500, "monthly_usd": 36000}}}}},
                      "node": {"podAnnotations": {"example.com/owner": "platform"}}},
    "kube-prometheus-stack": KPS,
    "tls": TLS,
    "market-watcher": {"marketWatcher": {"enabled": True}},
    "aws-irsa": {"pricing": {"source": "aws"}, "aws": {"irsa": {"roleArn": ROLE}}, "marketWatcher": {"enabled": True},
                 "node": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": [{"matchExpressions": [{"key": "node.kubernetes.io/instance-type",
                                                                  "operator": "In",
                                                                  "values": ["dl1.24xlarge"]}]}]}}}}},
    "on-prem": {"pricing": {"source": "on_prem",
                            "on_prem": {"hardware_usd": 300000, "amortization_years": 4, "opex_usd_per_hour": 2.5},
                            "electricity": {"usd_per_kwh": 0.12, "pue": 1.4}},
                "serviceMonitor": {"enabled": False}, "podMonitor": {"enabled": True}},
}


def render(values: dict | None = None, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Every object the chart renders with ``values``, as `helm install` would create them."""
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name=name, namespace=namespace)
    return [d for path, text in sorted(out.items()) if path.endswith(".yaml")
            for d in yaml.safe_load_all(text) if d]


def of(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in of(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def pod_spec(w: dict) -> dict:
    return w["spec"]["template"]["spec"]


def config_of(objs: list[dict], name: str) -> dict:
    return yaml.safe_load(one(objs, "ConfigMap", name)["data"]["config.yaml"])


def counts(objs: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for o in objs:
        out[o["kind"]] = out.get(o["kind"], 0) + 1
    return dict(sorted(out.items()))


def _spec_rules_file(pr: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": pr["spec"]["groups"]}))
    return path


# --- Helm's own lint and render, every value set ----------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_is_clean_with_every_value_set(name):
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], f"{name}: {problems or report['errors']}"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_value_set_renders_and_every_object_validates(name, tmp_path):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    objs = render(VALUE_SETS[name])
    assert of(objs, "DaemonSet"), f"{name}: no node agent"
    for obj in objs:
        meta = obj["metadata"]
        assert meta.get("namespace") == NAMESPACE, f"{name}: {obj['kind']}/{meta['name']} outside the release namespace"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        if obj["kind"] in CRD_KINDS:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
                pytest.fail(f"{name}: {obj['kind']}/{meta['name']} (Kubernetes {version}): {e}")
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"{name}: duplicate objects"
    assert_operator_objects_valid(objs, f"chart {name}", tmp_path)
    print(f"\n{name}: {len(objs)} objects {counts(objs)}")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_configs_pass_check_config_and_workloads_mount_them(name, tmp_path):
    objs = render(VALUE_SETS[name])
    for w in of(objs, "DaemonSet") + of(objs, "Deployment"):
        (c,) = pod_spec(w)["containers"]
        (arg,) = [a for a in c["args"] if a.startswith("--config=")]
        path = Path(arg.split("=", 1)[1])
        mount = next(m for m in c["volumeMounts"] if m["mountPath"] == str(path.parent))
        volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == mount["name"])
        text = one(objs, "ConfigMap", volume["configMap"]["name"])["data"][path.name]
        f = tmp_path / f"{w['metadata']['name']}.yaml"
        f.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "exporter", "check-config", str(f)], cwd=REPO,
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"{name}: {w['kind']} config rejected: {proc.stdout}{proc.stderr}"
        assert yaml.safe_load(text).get("mode", "node") == ("node" if w["kind"] == "DaemonSet" else "market")


def test_pricing_values_reach_the_node_config():
    on_prem = config_of(render(VALUE_SETS["on-prem"]), "gaudi-exporter-node-config")["pricing"]
    assert on_prem == VALUE_SETS["on-prem"]["pricing"]
    aws = render(VALUE_SETS["aws-irsa"])
    assert config_of(aws, "gaudi-exporter-node-config")["pricing"] == {"source": "aws"}
    assert config_of(aws, "gaudi-exporter-market-config")["market"]["source"] == "aws"


def test_aws_irsa_annotates_both_service_accounts_and_the_affinity_is_the_users():
    objs = render(VALUE_SETS["aws-irsa"])
    sas = of(objs, "ServiceAccount")
    assert len(sas) == 2
    for sa in sas:
        assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE,
                                                 "eks.amazonaws.com/sts-regional-endpoints": "true"}
        assert sa["automountServiceAccountToken"] is False
    ds = one(objs, "DaemonSet")
    assert pod_spec(ds)["affinity"] == VALUE_SETS["aws-irsa"]["node"]["affinity"]
    (deployment,) = of(objs, "Deployment")
    assert pod_spec(deployment)["serviceAccountName"] == "gaudi-exporter-market"


def test_object_counts_per_value_set(capsys):
    """The figures of the report: objects per value set (printed with -s)."""
    table = {name: counts(render(values)) for name, values in VALUE_SETS.items()}
    with capsys.disabled():
        for name, c in table.items():
            print(f"\n  {name:22} {sum(c.values()):3} objects  {c}", end="")
        print()
    assert table["defaults"] == {"ConfigMap": 5, "DaemonSet": 1, "NetworkPolicy": 1, "PrometheusRule": 1,
                                 "Service": 1, "ServiceAccount": 1, "ServiceMonitor": 1}
    assert table["everything-on"]["Deployment"] == 1 and table["everything-on"]["Secret"] == 2
    assert "Service" not in table["on-prem"] and table["on-prem"]["PodMonitor"] == 1


# --- values.schema.json -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "named"), [
    ({"serviceMonitor": {"interval": 15}}, "/serviceMonitor/interval"),
    ({"serviceMonitor": {"interval": "15 seconds"}}, "/serviceMonitor/interval"),
    ({"serviceMonitr": {"enabled": True}}, "serviceMonitr"),
    ({"node": {"hostNetwork": "yes"}}, "/node/hostNetwork"),
    ({"node": {"resources": "small"}}, "/node/resources"),
    ({"node": {"tolerations": {"key": "habana.ai/gaudi"}}}, "/node/tolerations"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"pricing": {"source": "azure"}}, "/pricing/source"),
    ({"aws": {"irsa": {"roleArn": "gaudi-pricing"}}}, "/aws/irsa/roleArn"),
    ({"prometheusRule": {"thresholds": {"budgets": {"cluster": {"daily_usd": "lots"}}}}},
     "/prometheusRule/thresholds/budgets/cluster/daily_usd"),
    ({"prometheusRule": {"thresholds": {"efficiency": {"floor": 1.5}}}}, "/prometheusRule/thresholds/efficiency/floor"),
    ({"prometheusRule": {"thresholds": {"efficiency": {"for": "half an hour"}}}},
     "/prometheusRule/thresholds/efficiency/for"),
    ({"prometheusRule": {"thresholds": {"exporter_selector": "job=gaudi"}}},
     "/prometheusRule/thresholds/exporter_selector"),
    ({"prometheusRule": {"thresholds": {"budgets": {"namespaces": {"ML_Research": {"daily_usd": 1}}}}}},
     "ML_Research"),
    ({"prometheusRule": {"thresholds": {"budgets": {"namespaces": {"ml": {"weekly_usd": 1}}}}}}, "weekly_usd"),
    # a threshold the template cannot take (rules.py computes with it) is refused, not silently ignored
    ({"prometheusRule": {"thresholds": {"budgets": {"daily": {"window": "2d"}}}}}, "window"),
])
def test_a_wrong_value_fails_at_install_naming_it(values, named):
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as e:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert named in str(e.value), str(e.value)


def test_inconsistent_toggles_fail_with_what_to_do():
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmRenderError, match="enable one of the two"):
            chart.render({"podMonitor": {"enabled": True}}, name=RELEASE, namespace=NAMESPACE)
        with pytest.raises(helm.HelmRenderError, match="web.tls.existingSecret"):
            chart.render({"web": {"tls": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE)


# --- one toggle at a time: off renders nothing, on renders the object with the value ------------------------------

def _monitor_endpoint(objs: list[dict], kind: str) -> dict:
    m = one(objs, kind, "gaudi-exporter-node")
    return (m["spec"]["endpoints"] if kind == "ServiceMonitor" else m["spec"]["podMetricsEndpoints"])[0]


def _sm_on(objs):
    m, e = one(objs, "ServiceMonitor"), _monitor_endpoint(objs, "ServiceMonitor")
    assert m["metadata"]["labels"]["release"] == "kps-prod"
    assert (e["interval"], e["scrapeTimeout"]) == ("30s", "10s")
    assert e["relabelings"][-1] == {"action": "labeldrop", "regex": "tmp_.*"}
    assert e["metricRelabelings"] == [{"action": "drop", "regex": "x"}]
    assert e.get("honorLabels") is True
    assert one(objs, "Service", "gaudi-exporter-node")["spec"]["clusterIP"] == "None"


def _pm_on(objs):
    m, e = one(objs, "PodMonitor"), _monitor_endpoint(objs, "PodMonitor")
    assert m["metadata"]["labels"]["release"] == "kps-prod" and e["interval"] == "20s"
    assert e["relabelings"][-1] == {"action": "labeldrop", "regex": "tmp_.*"}


def _rule_on(objs):
    pr = one(objs, "PrometheusRule")
    assert pr["metadata"]["labels"]["release"] == "kps-prod"
    alerts = {r.get("alert"): r for g in pr["spec"]["groups"] for r in g["rules"]}
    assert alerts["GaudiDailyBudgetExceeded"]["expr"].endswith("> 777")
    assert 'namespace="ml-research"' in alerts["GaudiNamespaceDailyBudgetExceeded"]["expr"]


def _dash_on(objs):
    cms = [o for o in of(objs, "ConfigMap") if o["metadata"]["labels"].get("app.kubernetes.io/component")
           == "dashboards"]
    assert len(cms) == len(list((REPO / "dashboards" / "build").glob("*.json")))
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "yes"
        assert cm["metadata"]["namespace"] == "grafana"
        (text,) = cm["data"].values()
        assert json.loads(text)["uid"]


def _market_on(objs):
    d = one(objs, "Deployment", "gaudi-exporter-market")
    assert pod_spec(d)["containers"][0]["resources"]["limits"]["memory"] == "256Mi"
    assert config_of(objs, "gaudi-exporter-market-config")["market"]["regions"] == ["eu-central-1"]
    assert one(objs, "ServiceMonitor", "gaudi-exporter-market")


def _checkpoint_on(objs):
    assert "checkpoint_api" not in config_of(objs, "gaudi-exporter-node-config").get("web", {})
    rules_ = one(objs, "NetworkPolicy")["spec"]["ingress"]
    assert rules_[1]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]


def _tls_on(objs):
    ds = one(objs, "DaemonSet")
    assert "--web.config.file=/etc/gaudi-exporter-web/web-config.yaml" in pod_spec(ds)["containers"][0]["args"]
    assert pod_spec(ds)["containers"][0]["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    secret = one(objs, "Secret", "gaudi-exporter-web-config")
    assert yaml.safe_load(secret["stringData"]["web-config.yaml"])["basic_auth_users"] == {"prometheus": "$2b$04$x"}
    assert _monitor_endpoint(objs, "ServiceMonitor")["scheme"] == "https"


def _netpol_on(objs):
    (peer,) = one(objs, "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "observability"}


TOGGLES = {
    # name: (values off, values on, kinds that must vanish when off, check of the on rendering)
    "serviceMonitor": ({"serviceMonitor": {"enabled": False}},
                       {"serviceMonitor": {"labels": {"release": "kps-prod"}, "interval": "30s", "scrapeTimeout": "10s",
                                           "honorLabels": True,
                                           "relabelings": [{"action": "labeldrop", "regex": "tmp_.*"}],
                                           "metricRelabelings": [{"action": "drop", "regex": "x"}]}},
                       ["ServiceMonitor", "Service"], _sm_on),
    "podMonitor": ({"podMonitor": {"enabled": False}},
                   {"serviceMonitor": {"enabled": False},
                    "podMonitor": {"enabled": True, "labels": {"release": "kps-prod"}, "interval": "20s",
                                   "relabelings": [{"action": "labeldrop", "regex": "tmp_.*"}]}},
                   ["PodMonitor"], _pm_on),
    "prometheusRule": ({"prometheusRule": {"enabled": False}},
                       {"prometheusRule": {"labels": {"release": "kps-prod"}, "thresholds": {"budgets": {
                           "cluster": {"daily_usd": 777}, "namespaces": {"ml-research": {"daily_usd": 10}}}}}},
                       ["PrometheusRule"], _rule_on),
    "dashboards": ({"dashboards": {"enabled": False}},
                   {"dashboards": {"labels": {"grafana_dashboard": "yes"}, "namespace": "grafana"}},
                   ["ConfigMap:dashboards"], _dash_on),
    "marketWatcher": ({}, {"marketWatcher": {"enabled": True, "config": {"market": {"regions": ["eu-central-1"]}},
                                             "resources": {"limits": {"memory": "256Mi"}}}},
                      ["Deployment"], _market_on),
    "checkpointApi": ({}, {"checkpointApi": {"enabled": True,
                                             "from": [{"namespaceSelector": {"matchLabels": {"team": "ml"}}}]}},
                      [], _checkpoint_on),
    "web.tls": ({}, TLS, ["Secret"], _tls_on),
    "networkPolicy": ({"networkPolicy": {"enabled": False}},
                      {"networkPolicy": {"prometheus": {"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": "observability"}}}}},
                      ["NetworkPolicy"], _netpol_on),
}


def _present(objs: list[dict], kind: str) -> list[dict]:
    if kind == "ConfigMap:dashboards":
        return [o for o in of(objs, "ConfigMap") if o["metadata"]["labels"].get("app.kubernetes.io/component")
                == "dashboards"]
    if kind in ("Service", "Deployment"):
        return [o for o in of(objs, kind) if o["metadata"]["name"].endswith(("-node", "-market"))]
    return of(objs, kind)


@pytest.mark.parametrize("toggle", TOGGLES)
def test_toggle_off_renders_nothing_and_on_renders_its_value(toggle):
    off_values, on_values, kinds, check = TOGGLES[toggle]
    off, on = render(off_values), render(on_values)
    for kind in kinds:
        assert _present(off, kind) == [], f"{toggle} off still renders {kind}"
        assert _present(on, kind), f"{toggle} on renders no {kind}"
    if toggle == "checkpointApi":
        assert config_of(off, "gaudi-exporter-node-config")["web"]["checkpoint_api"] is False
        assert len(one(off, "NetworkPolicy")["spec"]["ingress"]) == 1
    if toggle == "web.tls":
        assert not any(a.startswith("--web.config") for a in pod_spec(one(off, "DaemonSet"))["containers"][0]["args"])
    check(on)


def test_daemonset_takes_the_values_operators_set_on_accelerator_daemonsets():
    values = {
        "image": {"repository": "registry.example/team/gaudi-exporter", "tag": "9.9.9", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "node": {"resources": {"requests": {"cpu": "50m", "memory": "80Mi"},
                               "limits": {"cpu": "300m", "memory": "160Mi"}},
                 "priorityClassName": "gpu-monitoring",
                 "tolerations": [{"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"},
                                 {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}],
                 "hlmlHostPath": "/opt/habanalabs/lib", "kubeletPodResourcesPath": "/var/lib/k0s/kubelet/pod-resources",
                 "hostNetwork": True, "extraArgs": ["--interval=10"],
                 "extraEnv": [{"name": "HABANA_LOGS", "value": "/tmp"}],
                 "podAnnotations": {"example.com/owner": "platform"}, "privileged": True},
    }
    ds = one(render(values), "DaemonSet")
    spec = pod_spec(ds)
    (c,) = spec["containers"]
    assert c["image"] == "registry.example/team/gaudi-exporter:9.9.9" and c["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["resources"] == values["node"]["resources"]
    assert spec["priorityClassName"] == "gpu-monitoring"
    assert spec["tolerations"] == values["node"]["tolerations"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert host == {"habanalabs": "/opt/habanalabs/lib", "pod-resources": "/var/lib/k0s/kubelet/pod-resources"}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert (mounts["habanalabs"], mounts["pod-resources"]) == ("/usr/lib/habanalabs", "/var/lib/kubelet/pod-resources")
    assert "--interval=10" in c["args"] and {"name": "HABANA_LOGS", "value": "/tmp"} in c["env"]
    assert ds["spec"]["template"]["metadata"]["annotations"]["example.com/owner"] == "platform"
    assert c["securityContext"]["privileged"] is True


def test_defaults_keep_the_node_agent_least_privileged_on_gaudi_nodes_only():
    objs = render()
    ds = one(objs, "DaemonSet")
    spec = pod_spec(ds)
    (term,) = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    keys = {e["key"] for e in term["matchExpressions"]}
    assert keys == {"habana.ai/device.count", "habana.ai/driver.version"}, "Gaudi present and the driver loaded"
    assert {"key": "habana.ai/gaudi", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert not spec.get("hostNetwork") and spec["priorityClassName"] == "system-node-critical"
    sc = spec["containers"][0]["securityContext"]
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]} and sc["readOnlyRootFilesystem"]
    assert spec["containers"][0]["resources"] == {"requests": {"cpu": "20m", "memory": "64Mi"},
                                                 "limits": {"cpu": "200m", "memory": "128Mi"}}
    assert ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"], "config changes must roll the pods"


# --- the PrometheusRule: the generated rules, thresholds from values ----------------------------------------------

def _custom_thresholds() -> dict:
    t = thresholds.load()
    t["exporter_selector"] = 'job="gaudi", cluster!=""'
    t["budgets"]["cluster"] = {"daily_usd": 1234.5, "monthly_usd": None}
    t["budgets"]["namespaces"] = {"ml-research": {"daily_usd": 1500, "monthly_usd": None},
                                  "team-b": {"daily_usd": None, "monthly_usd": 40000},
                                  "team-c": {"daily_usd": 10, "monthly_usd": 300}}
    t["budgets"]["daily"]["burn_rate_window"] = "2h"
    t["efficiency"].update(floor=0.42, target=0.75, **{"for": "45m"})
    t["idle"]["cost_share_max"] = 0.07
    t["pricing"]["max_age"] = "3h30m"
    t["thermal"]["aip_temperature_max_celsius"] = 88
    t["health"]["read_errors_max"] = 3
    return thresholds.validate(t)


def _as_values(t: dict) -> dict:
    """The chart values for thresholds ``t``: the settable keys only."""
    def pick(shape: dict, src: dict) -> dict:
        return {k: (pick(v, src[k]) if isinstance(v, dict) and v else src[k]) for k, v in shape.items()}
    return {"prometheusRule": {"thresholds": pick(helm_template.analyse().values, t)}}


def _python_groups(t: dict) -> list[dict]:
    by_file = rules.groups(t)
    return [g for name in sorted(by_file) for g in by_file[name]]


def test_default_prometheusrule_is_the_generated_one():
    pr = one(render(), "PrometheusRule")
    assert pr["spec"] == yaml.safe_load(PROMETHEUSRULE.read_text())["spec"]


def test_thresholds_and_namespace_budgets_from_values_give_the_rules_the_python_build_gives():
    """What `gaudi-exporter rules build` would make from a thresholds file is what --set makes from the chart."""
    t = _custom_thresholds()
    pr = one(render(_as_values(t)), "PrometheusRule")
    assert pr["spec"]["groups"] == _python_groups(t)
    names = {r.get("alert") for g in pr["spec"]["groups"] for r in g["rules"]}
    assert "GaudiMonthlyBudgetExceeded" not in names and "GaudiNamespaceMonthlyBudgetExceeded" in names


def test_set_on_the_command_line_changes_a_budget():
    values = helm.parse_set_string("prometheusRule.thresholds.budgets.cluster.daily_usd=8000,"
                                   "prometheusRule.thresholds.budgets.namespaces.ml-research.daily_usd=1500")
    alerts = {(r.get("alert"), r.get("expr")) for g in one(render(values), "PrometheusRule")["spec"]["groups"]
              for r in g["rules"]}
    assert any(a == "GaudiDailyBudgetExceeded" and e.endswith("> 8000") for a, e in alerts)
    assert any(a == "GaudiNamespaceDailyBudgetExceeded" and 'namespace="ml-research"' in e and e.endswith("> 1500")
               for a, e in alerts)
    none = helm.parse_set_string("prometheusRule.thresholds.budgets.cluster.monthly_usd=null")
    names = {r.get("alert") for g in one(render(none), "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert "GaudiMonthlyBudgetExceeded" not in names and "GaudiDailyBudgetExceeded" in names


def test_every_budget_off_leaves_an_empty_but_valid_budget_group(tmp_path):
    t = thresholds.load()
    t["budgets"]["cluster"] = {"daily_usd": None, "monthly_usd": None}
    pr = one(render(_as_values(t)), "PrometheusRule")
    assert pr["spec"]["groups"] == _python_groups(t)
    assert_operator_objects_valid([pr], "no budgets", tmp_path)


@pytest.mark.parametrize("which", ["defaults", "custom"])
def test_rendered_prometheusrule_loads_in_promtool(which, tmp_path):
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    values = {} if which == "defaults" else _as_values(_custom_thresholds())
    f = _spec_rules_file(one(render(values), "PrometheusRule"), tmp_path / "rules.yaml")
    proc = subprocess.run([promtool, "check", "rules", str(f)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generated_chart_files_are_up_to_date():
    hint = "out of date: run `gaudi-exporter rules build` and commit the result"
    for path, text in build.chart_files(CHART).items():
        assert path.read_text() == text, f"{path.relative_to(REPO)} {hint}"


def test_template_generator_follows_whatever_rules_py_builds(monkeypatch, tmp_path):
    """The generator knows no rule: a new alert using a threshold in a new way (a percentage, a duration in
    seconds), as the rules being written now will, is templated by `rules build` alone."""
    original = rules.health_alerts

    def with_new_alert(t):
        seconds = thresholds.duration_seconds(t["idle"]["for"])
        return [*original(t), {
            "alert": "GaudiExampleNew",
            "expr": (f"gaudi_hpu_utilization_ratio{{{t['exporter_selector']}}} < {t['idle']['utilization_floor']:g} "
                     f"and time() - gaudi_exporter_start_time_seconds > {seconds:g}"),
            "for": t["health"]["hpu_lost_for"],
            "annotations": {"description": f"under {t['idle']['utilization_floor'] * 100:g}% for {t['idle']['for']}"},
        }]
    monkeypatch.setattr(rules, "health_alerts", with_new_alert)
    chart = tmp_path / "gaudi-exporter"
    shutil.copytree(CHART, chart)
    for path, text in build.chart_files(chart).items():
        path.write_text(text)
    t = _custom_thresholds()
    t["idle"].update(utilization_floor=0.11, **{"for": "1h15m"})
    t["health"]["hpu_lost_for"] = "2m"
    values = _as_values(t)
    with helm.Chart.load(chart) as c:
        out = c.render(values, name=RELEASE, namespace=NAMESPACE)
    pr = yaml.safe_load(out["gaudi-exporter/templates/prometheusrule.yaml"])
    assert pr["spec"]["groups"] == _python_groups(t)
    new = next(r for g in pr["spec"]["groups"] for r in g["rules"] if r.get("alert") == "GaudiExampleNew")
    assert new["expr"].endswith("> 4500") and new["annotations"]["description"] == "under 11% for 1h15m"


def test_a_chart_built_with_a_budget_off_can_turn_it_on_with_values(tmp_path):
    """`rules build` from a thresholds file with the monthly budget null: the chart can still set it, and its
    windows' alert durations, from values."""
    t = thresholds.load()
    t["budgets"]["cluster"]["monthly_usd"] = None
    chart = tmp_path / "gaudi-exporter"
    shutil.copytree(CHART, chart)
    for path, text in build.chart_files(chart, t).items():
        path.write_text(text)
    with helm.Chart.load(chart) as c:
        assert c.values["prometheusRule"]["thresholds"]["budgets"]["cluster"]["monthly_usd"] is None
        out = c.render({"prometheusRule": {"thresholds": {"budgets": {"cluster": {"monthly_usd": 99000},
                                                                      "monthly": {"forecast_for": "3h"}}}}},
                       name=RELEASE, namespace=NAMESPACE)
    t["budgets"]["cluster"]["monthly_usd"] = 99000
    t["budgets"]["monthly"]["forecast_for"] = "3h"
    pr = yaml.safe_load(out["gaudi-exporter/templates/prometheusrule.yaml"])
    assert pr["spec"]["groups"] == _python_groups(t)


# --- dashboards ----------------------------------------------------------------------------------------------------

def test_dashboard_configmaps_carry_the_built_dashboards_and_the_sidecar_label():
    built = sorted((REPO / "dashboards" / "build").glob("*.json"))
    assert [p.name for p in sorted((CHART / "dashboards").glob("*.json"))] == [p.name for p in built]
    cms = {k: cm for cm in of(render(KPS), "ConfigMap") for k in cm["data"] if k.endswith(".json")}
    assert sorted(cms) == [p.name for p in built]
    for p in built:
        assert (CHART / "dashboards" / p.name).read_text() == p.read_text(), "run `gaudi-exporter dashboards build`"
        cm = cms[p.name]
        assert cm["data"][p.name] == p.read_text()
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert len(yaml.safe_dump(cm).encode()) < 256 * 1024, "client-side kubectl apply limit"


# --- Prometheus scraping through the rendered monitors -------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [("kube-prometheus-stack", "ServiceMonitor"), ("on-prem", "PodMonitor")])
def test_real_prometheus_scrapes_through_the_rendered_monitor(name, kind, tmp_path):
    """The scrape config the operator makes from the chart's monitor, run by a real Prometheus against the exporter
    (two simulated HPUs, one held by a pod through a real gRPC kubelet): the rules' job, the node label, the
    workload's namespace/pod/container on the held HPU and none on node series."""
    objs = render(VALUE_SETS[name])
    monitor = one(objs, kind, "gaudi-exporter-node")
    endpoint = _monitor_endpoint(objs, kind)
    hpu_up = catalogue.get("gaudi_hpu_up").name
    build_info = catalogue.get("gaudi_exporter_build_info").name
    with _attributed_exporter() as (_, base):
        cfg = _operator_scrape_config("chart", monitor, endpoint, base.split("//", 1)[1])
        with _prometheus(tmp_path, [cfg]) as prom:
            procs.wait_for(lambda: len(_series(prom, exporter_job(), hpu_up)) == 2, 30, what="the chart's target")
            hpus = {s["hpu"]: s for s in _series(prom, exporter_job(), hpu_up)}
            (node_series,) = _series(prom, exporter_job(), build_info)
    assert {k: hpus["0"].get(k) for k in ATTRIBUTION} == {"namespace": "team-a", "pod": "train-0", "container": "pt"}
    assert not set(ATTRIBUTION) & set(hpus["1"]) and not set(ATTRIBUTION) & set(node_series)
    assert all(s["node"] == "gaudi-node-1" for s in (*hpus.values(), node_series))


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # the kubelet's probe, on purpose
def test_tls_values_make_a_working_https_scrape_with_basic_auth(tmp_path):
    """Inline TLS values with a real certificate and bcrypt hash: the exporter started on the rendered web config
    Secret (its keys as files, as mounted), a real Prometheus scraping through the rendered ServiceMonitor with the
    rendered scrape Secret."""
    bcrypt = pytest.importorskip("bcrypt")
    server_name = "gaudi-exporter"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={server_name}", "-addext", f"subjectAltName=DNS:{server_name}",
                    "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")], check=True,
                   capture_output=True)
    cert, key = (tmp_path / "c.pem").read_text(), (tmp_path / "k.pem").read_text()
    hashed = bcrypt.hashpw(b"scrape-password", bcrypt.gensalt(rounds=4)).decode()
    values = {"web": {"tls": {"enabled": True, "inline": {"cert": cert, "key": key,
                                                          "basicAuthUsers": {"prometheus": hashed}},
                              "scrape": {"serverName": server_name, "basicAuth": True,
                                         "inline": {"ca": cert, "username": "prometheus",
                                                    "password": "scrape-password"}}}}}
    objs = render(values)
    ds = one(objs, "DaemonSet")
    (arg,) = [a for a in pod_spec(ds)["containers"][0]["args"] if a.startswith("--web.config.file=")]
    web_path = Path(arg.split("=", 1)[1])
    (volume,) = [v for v in pod_spec(ds)["volumes"] if v["name"] == "web-config"]
    mounted = tmp_path / "web"
    mounted.mkdir()
    for k, text in one(objs, "Secret", volume["secret"]["secretName"])["stringData"].items():
        (mounted / k).write_text(text)
    endpoint = _monitor_endpoint(objs, "ServiceMonitor")
    scrape = one(objs, "Secret", endpoint["tlsConfig"]["ca"]["secret"]["name"])["stringData"]
    secrets = {}
    for k, text in scrape.items():
        (tmp_path / f"scrape-{k}").write_text(text)
        secrets[(endpoint["tlsConfig"]["ca"]["secret"]["name"], k)] = str(tmp_path / f"scrape-{k}")
    hpu_up = catalogue.get("gaudi_hpu_up").name
    with _attributed_exporter([f"--web.config.file={mounted / web_path.name}"], wait=False) as (proc, base):
        https = base.replace("http://", "https://")
        procs.wait_http(https + "/healthz", proc=proc, verify=False)
        assert requests.get(https + "/metrics", verify=False, timeout=5).status_code == 401
        cfg = _operator_scrape_config("tls", one(objs, "ServiceMonitor"), endpoint, base.split("//", 1)[1],
                                      secrets=secrets)
        with _prometheus(tmp_path / "prom", [cfg]) as prom:
            procs.wait_for(lambda: procs.query(prom, f'up{{job="{exporter_job()}"}} == 1'), 30,
                           what="the TLS + basic auth target up")
            assert len(_series(prom, exporter_job(), hpu_up)) == 2


# --- one source of truth, versions, docs -----------------------------------------------------------------------------

def _kustomize_from_chart():
    spec = importlib.util.spec_from_file_location("kustomize_from_chart", REPO / "deploy/helm/kustomize_from_chart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kustomize_manifests_are_the_charts_output_byte_for_byte():
    k = _kustomize_from_chart()
    files = k.outputs()
    assert len(files) == sum(len(w) for _, w in k.RENDERS)
    for path, text in files.items():
        assert path.read_text() == text, (f"{path.relative_to(REPO)} drifted from the chart: run "
                                          "`python deploy/helm/kustomize_from_chart.py` (make manifests)")


def test_kustomize_base_and_chart_defaults_run_the_same_node_agent():
    """Beyond the rendered files: what kubectl applies from the base equals what helm installs, but for the
    release labels, the namespace handling and the node affinity (which the base takes from a label you set)."""
    k = _kustomize_from_chart()
    ds_chart = one(render(), "DaemonSet")
    ds_base = yaml.safe_load((REPO / "deploy/kubernetes/base/daemonset.yaml").read_text())
    for ds in (ds_chart, ds_base):
        pod_spec(ds).pop("affinity")
        ds["spec"]["template"].pop("metadata")
        ds["spec"].pop("selector")
        ds.pop("metadata")
        pod_spec(ds)["containers"][0].pop("imagePullPolicy", None)
    assert ds_chart == ds_base
    assert k.RELEASE == RELEASE


def test_chart_version_and_app_version_are_the_project_version():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
    assert (meta["version"], meta["appVersion"]) == (version, version)
    (c,) = pod_spec(one(render(), "DaemonSet"))["containers"]
    assert c["image"] == f"gaudi-exporter:{version}"


def _documented_helm_install() -> str:
    text = DOCS.read_text()
    match = re.search(r"^helm install (?:[^\n]*\\\n)*[^\n]*$", text, re.M)
    assert match, "docs/deploy.md shows no `helm install` line"
    return match.group(0)


def test_docs_show_helm_install_first_and_that_line_works_with_kube_prometheus_stack():
    for doc in (DOCS, REPO / "README.md"):
        text = doc.read_text()
        assert "helm install" in text, f"{doc.name} does not show `helm install`"
        if "kubectl apply" in text:
            assert text.index("helm install") < text.index("kubectl apply"), f"{doc.name}: show helm install first"
    line = _documented_helm_install().replace("\\\n", " ")
    args = line.split()
    assert args[:4] == ["helm", "install", "gaudi-exporter", "deploy/helm/gaudi-exporter"], line
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    values: dict = {}
    for s in sets:
        parsed = helm.parse_set_string(s)
        values = _deep_merge(values, parsed)
    objs = render(values, namespace=args[args.index("-n") + 1])
    release = values["serviceMonitor"]["labels"]["release"]
    for o in objs:
        if o["kind"] in CRD_KINDS:
            assert o["metadata"]["labels"].get("release") == release, f"{o['kind']} lacks the release label"


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def test_crd_schema_check_rejects_a_broken_rendered_monitor(tmp_path):
    """The operator-schema validation above can fail: a misspelt interval in a rendered ServiceMonitor is caught."""
    from tests.test_deploy import CRD_SCHEMAS

    sm = one(render(), "ServiceMonitor")
    sm["spec"]["endpoints"][0]["interval"] = "15 seconds"
    assert _check_jsonschema(CRD_SCHEMAS["ServiceMonitor"], [sm], tmp_path).returncode == 1


def test_packaged_chart_carries_the_project_version_and_renders_like_the_directory(tmp_path):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    archive = Path(helm.package(CHART, destination=tmp_path))
    assert archive.name == f"gaudi-exporter-{version}.tgz"
    with helm.Chart.load(archive) as packaged:
        assert packaged.metadata["appVersion"] == version
        out = packaged.render({}, name=RELEASE, namespace=NAMESPACE)
    objs = [d for p, t in sorted(out.items()) if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d]
    assert objs == render()
