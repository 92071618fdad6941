"""The Kubernetes manifests (k8s/): every resource validates against the
schemas of one fixed Kubernetes version in strict mode (unknown fields are
errors), and the topology keeps its promises: every container has limits,
probes and a locked-down security context, every tier is covered by a
network policy, the builders reach nothing but the object store, and the
nodes and builders read the same settings as in cluster/stack.yml.

No cluster runs here: this is validation only (docs/CLUSTER.md#kubernetes)."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT

K8S = ROOT / "k8s"
STACK = ROOT / "cluster" / "stack.yml"
# The version the manifests are written for; strict: unknown fields fail.
KUBERNETES_VERSION = "1.33.0"
TIERS = ("node", "builder", "postgres", "s3")
WORKLOADS = ("Deployment", "StatefulSet")
COMPONENT = "app.kubernetes.io/component"


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> list[dict]:
    """Everything kustomization.yaml applies."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    found: list[dict] = []
    for name in kustomization["resources"]:
        found.extend(load(K8S / name))
    return found


def by_kind(kind: str) -> list[dict]:
    return [r for r in resources() if r["kind"] == kind]


def workloads() -> dict[str, dict]:
    """component -> its Deployment or StatefulSet."""
    out: dict[str, dict] = {}
    for r in resources():
        if r["kind"] in WORKLOADS:
            out[r["spec"]["template"]["metadata"]["labels"][COMPONENT]] = r
    return out


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_every_manifest_validates_strictly(path: Path) -> None:
    docs = load(path)
    assert docs, f"{path.name} holds no resource"
    for doc in docs:
        assert "1.33" == kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The control: the validator really looks at fields (a typo is not silently accepted)."""
    node = copy.deepcopy(workloads()["node"])
    node["spec"]["template"]["spec"]["containers"][0]["resource"] = {"limits": {"cpu": "1"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(node, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    expected = {p.name for p in manifest_files()} - {"secret.example.yaml"}
    assert expected == set(kustomization["resources"])
    assert "cweb" == kustomization["namespace"]
    assert all(r["metadata"].get("namespace", "cweb") == "cweb" for r in resources())


def test_topology_nodes_builders_and_stateful_tiers() -> None:
    w = workloads()
    assert set(TIERS) == set(w)
    assert ("Deployment", 2) == (w["node"]["kind"], w["node"]["spec"]["replicas"])
    assert ("Deployment", 2) == (w["builder"]["kind"], w["builder"]["spec"]["replicas"])
    for tier in ("postgres", "s3"):
        assert "StatefulSet" == w[tier]["kind"]
        assert w[tier]["spec"]["volumeClaimTemplates"], f"{tier} keeps its data on a volume"
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    # The builders are found one by one (headless); the nodes behind one Service.
    assert "None" == services["builder"]["spec"]["clusterIP"]
    assert "node" == services["cweb"]["spec"]["selector"][COMPONENT]
    assert services["cweb"]["spec"].get("type", "ClusterIP") == "ClusterIP"
    node_env = env_of(w["node"]["spec"]["template"]["spec"]["containers"][0])
    assert "http://builder:8081" == node_env["CWEB_BUILDER_URL"]["value"]
    assert node_env["CWEB_S3_ENDPOINT"]["value"].startswith("http://s3:")
    assert "metadata.name" == node_env["CWEB_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "http://$(POD_IP):8080" == node_env["CWEB_NODE_URL"]["value"]
    pdbs = by_kind("PodDisruptionBudget")
    assert [("node", 1)] == [(p["spec"]["selector"]["matchLabels"][COMPONENT], p["spec"]["minAvailable"]) for p in pdbs]


@pytest.mark.parametrize("tier", TIERS)
def test_every_container_has_limits_probes_and_a_locked_down_context(tier: str) -> None:
    pod = workloads()[tier]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert "RuntimeDefault" == pod["securityContext"]["seccompProfile"]["type"]
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        limits = c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(limits), c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert probe in c, f"{c['name']} has no {probe}"
        ctx = c["securityContext"]
        assert (False, True, ["ALL"]) == (ctx["allowPrivilegeEscalation"], ctx["readOnlyRootFilesystem"], ctx["capabilities"]["drop"])
        # A read-only root: every path the process writes is a volume.
        mounted = {m["mountPath"] for m in c["volumeMounts"]}
        assert "/tmp" in mounted


def test_secrets_are_files_from_the_cweb_secret() -> None:
    """No secret value sits in the environment: *_FILE settings point into the
    mounted `cweb` Secret, and every key they read exists in its example."""
    example = load(K8S / "secret.example.yaml")[0]
    keys = set(example["stringData"])
    for tier, w in workloads().items():
        pod = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        volumes.update({t["metadata"]["name"]: {"claim": t} for t in w["spec"].get("volumeClaimTemplates", [])})
        for c in pod["containers"]:
            mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
            secret_dirs = {path: v["secret"] for path, v in mounts.items() if "secret" in v}
            for name, e in env_of(c).items():
                if name.endswith("_FILE") or name == "CWEB_BUILDER_KEY":
                    directory, key = e["value"].rsplit("/", 1)
                    assert directory in secret_dirs, f"{tier}: {name} is not in a secret volume"
                    assert "cweb" == secret_dirs[directory]["secretName"]
                    assert key in {i["key"] for i in secret_dirs[directory]["items"]}, f"{tier}: {name}"
                    assert key in keys
                assert not any(word in name for word in ("PASSWORD", "SECRET", "API_KEY")) or name.endswith("_FILE"), \
                    f"{tier}: {name} would put a secret in the environment"
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("cweb", True) == (ref["name"], ref["key"] in keys)


def _policy_for(tier: str) -> dict:
    found = [p for p in by_kind("NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels", {}).get(COMPONENT) == tier]
    assert 1 == len(found), f"{tier}: {len(found)} policies"
    return found[0]


def _peers(rules: list[dict]) -> set[tuple[str, int]]:
    """(component or '*', port) for every rule: '*' is a rule without `from`/`to` (anyone)."""
    out: set[tuple[str, int]] = set()
    for rule in rules:
        peers = rule.get("from", rule.get("to")) or [{}]
        for peer in peers:
            component = peer.get("podSelector", {}).get("matchLabels", {}).get(COMPONENT, "*")
            for port in rule.get("ports", []):
                out.add((component, port["port"]))
    return out


def test_network_policies_match_the_compose_isolation() -> None:
    policies = by_kind("NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert deny and {"Ingress", "Egress"} == set(deny[0]["spec"]["policyTypes"]), "a default deny both ways"
    for tier in TIERS:
        assert {"Ingress", "Egress"} == set(_policy_for(tier)["spec"]["policyTypes"]), tier
    assert {("*", 8080)} == _peers(_policy_for("node")["spec"]["ingress"])
    assert {("postgres", 5432), ("s3", 8333), ("builder", 8081), ("node", 8080)} == _peers(_policy_for("node")["spec"]["egress"])
    assert {("node", 8081)} == _peers(_policy_for("builder")["spec"]["ingress"])
    # Compiled code reaches nothing but the object store (the compose builder's internal network).
    assert {("s3", 8333)} == _peers(_policy_for("builder")["spec"]["egress"])
    assert {("node", 5432)} == _peers(_policy_for("postgres")["spec"]["ingress"])
    assert {("node", 8333), ("builder", 8333)} == _peers(_policy_for("s3")["spec"]["ingress"])
    for tier in ("postgres", "s3"):
        assert [] == _policy_for(tier)["spec"]["egress"]
    # The only other egress anyone has: the cluster DNS, port 53.
    others = [p for p in policies if p["spec"]["podSelector"] == {} and "egress" in p["spec"]]
    assert {53} == {port["port"] for p in others for rule in p["spec"]["egress"] for port in rule["ports"]}


def test_nodes_and_builders_read_the_settings_of_the_swarm_stack() -> None:
    """k8s/ and cluster/stack.yml describe one topology: the same CWEB_* settings per tier
    (paths of secret files differ: /run/secrets/NAME in swarm, /run/secrets/cweb/NAME here)."""
    stack = yaml.safe_load(STACK.read_text(encoding="utf-8"))["services"]
    k8s_only = {"CWEB_NODE_ID", "CWEB_NODE_URL", "POD_IP"}
    for tier in ("node", "builder", "postgres", "s3"):
        in_k8s = set(env_of(workloads()[tier]["spec"]["template"]["spec"]["containers"][0])) - k8s_only
        in_stack = set(stack[tier].get("environment", {}))
        assert in_stack - {"PGDATA"} == in_k8s - {"PGDATA"}, tier
