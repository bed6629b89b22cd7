"""The deployment files: Kubernetes manifests against the bundled schemas (offline), the Dockerfile, the dashboard.

Nothing is built or pulled: ``kubernetes_validate`` checks every manifest against
the Kubernetes JSON schemas it ships (strict: an unknown field is an error), and
the Dockerfile and Grafana dashboard are read as text and JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "hamjax-serve.json"
DOCKERFILE = ROOT / "Dockerfile"
KUBERNETES_VERSION = "1.33"
OUR_IMAGES = ("hamjax-serve",)


def _manifests() -> list[tuple[str, dict]]:
    return [
        (path.name, doc)
        for path in sorted(KUBERNETES.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _kind(kind: str) -> dict:
    (doc,) = [doc for _, doc in _manifests() if doc["kind"] == kind]
    return doc


def _container() -> dict:
    (container,) = _kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _cpus(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_every_manifest_validates_against_the_kubernetes_schema():
    kinds = []
    for name, doc in _manifests():
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True), name
        kinds.append(doc["kind"])
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= set(kinds)


def test_the_validator_rejects_a_misspelt_field():
    deployment = _kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_probes_point_at_healthz_and_readyz_on_the_served_port():
    container = _container()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert ports["http"] == int(args[args.index("--port") + 1])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def test_runtime_threads_match_the_cpu_limit_and_the_token_comes_from_a_secret():
    container = _container()
    args = container["args"]
    assert int(args[args.index("--threads") + 1]) == _cpus(container["resources"]["limits"]["cpu"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    token_var = args[args.index("--token-env") + 1]
    (env,) = [e for e in container["env"] if e["name"] == token_var]
    assert "secretKeyRef" in env["valueFrom"]
    assert args[args.index("--host") + 1] == "0.0.0.0"


def test_the_pod_runs_as_non_root_and_drains_before_it_stops():
    spec = _kind("Deployment")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    container = _container()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    args = container["args"]
    drain = float(args[args.index("--graceful-s") + 1])
    assert sleep[0] == "sleep" and spec["terminationGracePeriodSeconds"] > int(sleep[1]) + drain
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"] is True
    claims = {v["name"]: v for v in spec["volumes"]}
    assert claims["models"]["persistentVolumeClaim"]["claimName"] == _kind("PersistentVolumeClaim")["metadata"]["name"]
    assert container["args"][0].startswith("/models/")


def test_service_and_autoscaler_target_the_deployment():
    deployment, service, hpa = _kind("Deployment"), _kind("Service"), _kind("HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hamjax-serve"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_images_we_build_carry_a_version_tag_never_latest():
    images = [
        c["image"]
        for _, doc in _manifests()
        if doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
        + doc["spec"]["template"]["spec"].get("initContainers", [])
    ]
    ours = [image for image in images if image.split(":")[0].rsplit("/", 1)[-1] in OUR_IMAGES]
    assert ours
    for image in ours:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", image
    base = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base and all(":" in image and not image.endswith(":latest") for image in base)


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, rest), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck():
    instructions = _instructions()
    users = [rest.split(":")[0].strip() for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in ("root", "0")
    keywords = [keyword for keyword, _ in instructions]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN")
    (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck and "urllib" in healthcheck and "curl" not in healthcheck
    (expose,) = [rest for keyword, rest in instructions if keyword == "EXPOSE"]
    assert expose.split() == ["8000"]
    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["hamjax", "serve"]
    (cmd,) = [rest for keyword, rest in instructions if keyword == "CMD"]
    assert json.loads(cmd)[0].startswith("/models/") and "--token-env" in json.loads(cmd)
    assert any(keyword == "RUN" and 'pip install ".[serve]"' in rest for keyword, rest in instructions)


def test_dockerignore_keeps_what_the_image_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    copied = set()
    for keyword, rest in _instructions():
        if keyword == "COPY":
            copied.update(p for p in rest.split()[:-1] if not p.startswith("--") and "$" not in p)
    assert copied and not copied & ignored
    assert {".git", "tests", "bench"} <= ignored
    assert (ROOT / "deploy" / "models").is_dir() and "deploy/models" not in ignored


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return set(re.findall(r"\bhamjax_[a-z_]+", " ".join(exprs)))


def test_dashboard_panels_cover_what_an_operator_watches():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    names = _dashboard_metrics()
    for wanted in (
        "hamjax_requests_total",
        "hamjax_request_latency_seconds_bucket",
        "hamjax_batch_size_bucket",
        "hamjax_queue_depth",
        "hamjax_cache_hits_total",
        "hamjax_drift_psi_max",
        "hamjax_ab_p_value",
    ):
        assert wanted in names
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert all(f"histogram_quantile({q}," in exprs for q in ("0.5", "0.95", "0.99"))


def _server_series() -> set[str]:
    """Every series name hamjax serve's /metrics exposes, from the metric families of its registry."""
    pytest.importorskip("prometheus_client")
    from hamjax.serve.metrics import Metrics

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix for family in Metrics(max_batch=8).registry.collect() for suffix in suffixes[family.type]
    }


def test_every_metric_the_dashboard_reads_is_one_the_server_exposes():
    series = _server_series()
    assert "hamjax_requests_total" in series and "hamjax_batch_size_bucket" in series
    missing = _dashboard_metrics() - series
    assert not missing, f"the dashboard reads series the server does not expose: {sorted(missing)}"


def test_the_manifest_and_the_image_pass_arguments_hamjax_serve_takes():
    from hamjax.cli import build_parser

    parser = build_parser()
    cmd = next(json.loads(rest) for keyword, rest in _instructions() if keyword == "CMD")
    for args in (_container()["args"], cmd):
        parsed = parser.parse_args(["serve", *args])
        assert parsed.model.startswith("/models/") and parsed.token_env == "HAMJAX_TOKEN" and parsed.port == 8000


@pytest.mark.slow
def test_the_files_the_dockerfile_copies_build_the_wheel(tmp_path):
    """What ``pip install ".[serve]"`` builds in the image, from the COPY'd files alone (no registry, no docker)."""
    import shutil

    from wheels import wheel_names

    pytest.importorskip("hatchling")
    context = tmp_path / "src"
    context.mkdir()
    for keyword, rest in _instructions():
        if keyword == "COPY" and "$" not in rest:
            *sources, target = rest.split()
            for source in sources:
                path = ROOT / source
                destination = context / (path.name if target.endswith("/") or len(sources) > 1 else target)
                if path.is_dir():
                    shutil.copytree(path, destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, destination)
    names = wheel_names(context, tmp_path)
    assert "hamjax/serve/app.py" in names and "hamjax/cli_serve.py" in names
    assert any(n.startswith("hamjax/transforms/") for n in names)
