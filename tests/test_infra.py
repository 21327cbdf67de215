"""infra/ offline: the overlays' `kubectl kustomize` output against the Kubernetes API schemas (kubernetes-validate,
strict, the version below), least-privilege RBAC, Secrets only as value-less templates, and the names the compiled
pipeline refers to (Secrets, ConfigMaps, the checkpoint volume) present in what the overlays create. No cluster runs
here: what only a cluster can verify is listed in README.md, "Run on Kubernetes"."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genrec.config import load_config
from genrec.credentials import find_passwords

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
KUBERNETES_VERSION = "1.32.0"  # the oldest minor the manifests target; the tests also check the newest bundled
OVERLAYS = ("cpu", "gpu")


def _validate(paths, version=KUBERNETES_VERSION) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("kubernetes-validate")), "--strict", "--quiet",
                           "-k", version, *map(str, paths)], capture_output=True, text=True, timeout=300)


def _kustomize(path: Path) -> str:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl (with its built-in kustomize) is not installed: the overlays' build is not checked; "
                    "test_every_manifest_file_is_valid still validates every file")
    proc = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture(scope="module", params=OVERLAYS)
def built(request, tmp_path_factory):
    text = _kustomize(INFRA / "overlays" / request.param)
    path = tmp_path_factory.mktemp(request.param) / "built.yaml"
    path.write_text(text)
    return request.param, path, [d for d in yaml.safe_load_all(text) if d]


def _manifests() -> list[Path]:
    """Every Kubernetes manifest; the custom resources in templates/ are checked against their operators' models."""
    return sorted(p for p in INFRA.rglob("*.yaml") if p.name != "kustomization.yaml" and p.parent.name != "templates")


def test_every_manifest_file_is_valid_and_used():
    proc = _validate(_manifests())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Every file is in a kustomization, except the Secret templates (which must never be applied as they are).
    listed = set()
    for k in INFRA.rglob("kustomization.yaml"):
        listed |= {(k.parent / r).resolve() for r in yaml.safe_load(k.read_text()).get("resources", [])}
    orphans = [p for p in _manifests() if p.resolve() not in listed and p.parent.name != "secrets"]
    assert not orphans, f"not in any kustomization: {orphans}"


def test_validation_can_fail(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((INFRA / "base" / "mlflow" / "deployment.yaml").read_text().replace("containerPort:", "containerPorts:"))
    assert _validate([bad]).returncode != 0


def test_overlays_build_to_valid_kubernetes(built):
    name, path, docs = built
    for version in (KUBERNETES_VERSION, "1.37.0"):
        proc = _validate([path], version)
        assert proc.returncode == 0, f"{name} @ {version}: {proc.stdout}{proc.stderr}"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"genrec"}
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == ["genrec"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for expected in [("ServiceAccount", "genrec-pipeline"), ("Role", "genrec-pipeline"),
                     ("RoleBinding", "genrec-pipeline"), ("PersistentVolumeClaim", "genrec-checkpoints"),
                     ("LimitRange", "genrec-ephemeral-storage"), ("Deployment", "mlflow"), ("Service", "mlflow"),
                     ("ConfigMap", "genrec-tracking"), ("ConfigMap", "genrec-object-store")]:
        assert expected in kinds, f"{name}: {expected} missing"
    stores = {("StatefulSet", "postgresql"), ("StatefulSet", "minio")}
    assert stores <= kinds if name == "cpu" else not stores & kinds
    pvc = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == (["ReadWriteOnce"] if name == "cpu" else ["ReadWriteMany"])


def test_rbac_is_least_privilege(built):
    _, _, docs = built
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Role"}
    assert sorted(roles) == ["genrec-pipeline", "genrec-spark"]
    for name, role in roles.items():
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
            # Secrets only by name, and only read; the pipeline's ConfigMaps too (the Spark driver makes its own).
            named = {"secrets", "configmaps"} if name == "genrec-pipeline" else {"secrets"}
            if named & set(rule["resources"]):
                assert rule["verbs"] == ["get"] and rule.get("resourceNames"), f"{name} reads any of {named}: {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    verbs = {r: set(rule["verbs"]) for rule in roles["genrec-pipeline"]["rules"] for r in rule["resources"]}
    assert verbs["sparkapplications"] == verbs["trainjobs"] == {"create", "get", "list", "watch", "delete"}
    assert verbs["pods"] == {"get", "list", "watch"}  # read only: the jobs' pods are made by their operators
    # The Spark driver manages its executors' pods, Service and ConfigMap, and nothing of the pipeline's.
    spark = {r: set(rule["verbs"]) for rule in roles["genrec-spark"]["rules"] for r in rule["resources"]}
    assert set(spark) == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "RoleBinding"}
    for name in roles:
        assert bindings[name]["roleRef"]["name"] == name
        assert bindings[name]["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": "genrec"}]


def test_no_secret_value_anywhere_and_templates_cover_every_reference(built):
    _, _, docs = built
    assert not [d for d in docs if d["kind"] == "Secret"], "a kustomization applies a Secret"
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert not find_passwords(d["data"]), d["metadata"]["name"]
    templates = {}
    for path in (INFRA / "secrets").glob("*.yaml"):
        t = yaml.safe_load(path.read_text())
        assert set(t["stringData"].values()) == {""}, f"{path} holds a value"
        templates[t["metadata"]["name"]] = set(t["stringData"])
    # Every Secret a workload reads has a template with the keys it reads.
    for d in docs:
        for ref in _secret_refs(d):
            name, key = ref
            assert name in templates, f"{d['kind']}/{d['metadata']['name']} reads Secret {name}: no template"
            assert key is None or key in templates[name], f"Secret {name} template lacks {key}"


def _secret_refs(node):
    if isinstance(node, dict):
        if "secretRef" in node:
            yield node["secretRef"]["name"], None
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        for value in node.values():
            yield from _secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _secret_refs(value)


def test_what_the_gpu_config_names_is_created_by_the_gpu_overlay():
    cluster = load_config(REPO / "configs" / "cluster-gpu.yaml").cluster
    docs = [d for d in yaml.safe_load_all(_kustomize(INFRA / "overlays" / "gpu")) if d]
    created = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("PersistentVolumeClaim", cluster.checkpoint_pvc) in created
    assert ("ConfigMap", cluster.tracking_config_map) in created
    assert ("ConfigMap", cluster.object_store_config_map) in created
    templates = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (INFRA / "secrets").glob("*.yaml")}
    assert {cluster.mlflow_secret, cluster.object_store_secret} <= templates
    assert ("ServiceAccount", cluster.spark.service_account) in created


def test_job_templates_are_current_and_match_the_operators_apis(tmp_path):
    from kubeflow_spark_api.models import SparkV1beta2SparkApplication
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    from k8s_standin import strict_errors
    from pipelines.k8s_templates import main

    main(["--out", str(tmp_path)])
    for name, model in (("sparkapplication.yaml", SparkV1beta2SparkApplication),
                        ("trainjob.yaml", TrainerV1alpha1TrainJob)):
        committed = (INFRA / "templates" / name).read_text()
        assert (tmp_path / name).read_text() == committed, f"infra/templates/{name} is stale: make infra-templates"
        assert strict_errors(model, yaml.safe_load(committed)) == [], name
