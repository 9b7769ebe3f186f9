#!/usr/bin/env python3
"""Validates the deployment artefacts against each other and against the real binary.

1. hadolint on deploy/Dockerfile.
2. The Helm chart, rendered by the real Helm engine (helm-python-sdk embeds Helm v4), for the
   default values and every helm/pushlite/ci/*-values.yaml: strict lint, values.schema.json,
   and every rendered manifest against the Kubernetes JSON schemas (kubernetes-validate).
3. A smoke test: the rendered migration Job's args and the rendered Deployment's args, env
   names, container port and probe paths start three real `pushlite` processes against the
   test Postgres and Redis; the probes are requested on the rendered port and paths. Renaming
   a probe path, a port or an env variable on one side only fails here.

Usage: validate.py PUSHLITE_BINARY   (needs DATABASE_URL and REDIS_URL, as `make test` sets)
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "pushlite"
KUBE_VERSION = "1.33.0"
# Kinds from CRDs whose schemas kubernetes-validate does not bundle.
CRD_KINDS = {"ServiceMonitor"}
ADMIN = ("smoke-admin", "smoke-admin-password-not-default")


def fail(message: str) -> None:
    print(f"validate: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def step(message: str) -> None:
    print(f"validate: {message}", flush=True)


def hadolint() -> None:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / "hadolint"), str(ROOT / "deploy" / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(f"hadolint:\n{result.stdout}{result.stderr}")
    step("hadolint: deploy/Dockerfile is clean")


def value_sets() -> dict[str, dict]:
    sets = {"default": {}}
    for path in sorted(glob.glob(str(CHART / "ci" / "*-values.yaml"))):
        sets[Path(path).name] = yaml.safe_load(Path(path).read_text()) or {}
    return sets


def render(values: dict) -> list[dict]:
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    rendered = chart.render(values, name="pushlite", namespace="pushlite", is_install=True)
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def check_chart(name: str, values: dict) -> list[dict]:
    report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    if report.get("errors") or problems:
        fail(f"helm lint ({name}): {json.dumps(report, indent=1)}")
    docs = render(values)
    for doc in docs:
        kind = doc.get("kind")
        if kind in CRD_KINDS:
            if not doc.get("metadata", {}).get("name") or not doc.get("spec"):
                fail(f"{name}: {kind} has no name or spec")
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {kind} {doc['metadata'].get('name')}: {e.message} at {list(e.path)}")
    kinds = sorted(d["kind"] for d in docs)
    step(f"chart ({name}): lint clean, {len(docs)} manifests valid for Kubernetes {KUBE_VERSION}: {', '.join(kinds)}")
    return docs


def check_schema_rejects_bad_values() -> None:
    for bad in ({"replicaCount": "three"}, {"pushlite": {"port": 0}}, {"secrets": {"redisUrl": "http://x"}}):
        try:
            render(bad)
        except helm.HelmError:
            continue
        fail(f"values.schema.json accepted {bad}")
    step("values.schema.json rejects malformed values")


def find(docs: list[dict], kind: str) -> dict:
    for doc in docs:
        if doc["kind"] == kind:
            return doc
    fail(f"no {kind} rendered")
    raise AssertionError


def container_env(container: dict, secrets: dict[str, str]) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "valueFrom" in item:
            ref = item["valueFrom"].get("secretKeyRef")
            if not ref:
                fail(f"env {item['name']} comes from something other than a Secret")
            if item["name"] not in secrets:
                fail(f"the chart reads {item['name']} from a Secret, and the smoke test has no value for it")
            env[item["name"]] = secrets[item["name"]]
    return env


def http_get(url: str, auth: tuple[str, str] | None = None, data: bytes | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=data)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def fresh_database() -> str:
    server = os.environ.get("DATABASE_URL") or fail("DATABASE_URL is not set (run through make test)")
    name = f"pushlite_smoke_{uuid.uuid4().hex[:12]}"
    subprocess.run(["psql", server, "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    base = server.split("?")[0].rsplit("/", 1)[0]
    return f"{base}/{name}"


def smoke(binary: str, name: str, docs: list[dict]) -> None:
    redis = os.environ.get("REDIS_URL") or fail("REDIS_URL is not set (run through make test)")
    secrets = {
        "DATABASE_URL": fresh_database(),
        "REDIS_URL": redis,
        "PUSHER_ADMIN_USERNAME": ADMIN[0],
        "PUSHER_ADMIN_PASSWORD": ADMIN[1],
    }
    deployment = find(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}

    def probe(kind: str) -> tuple[int, str]:
        http = container[kind]["httpGet"]
        port = http["port"]
        return (ports[port] if isinstance(port, str) else port), http["path"]

    job = [d for d in docs if d["kind"] == "Job"]
    if job:
        job_container = job[0]["spec"]["template"]["spec"]["containers"][0]
        env = container_env(job_container, secrets)
        result = subprocess.run([binary, *job_container["args"]], env=env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            fail(f"{name}: the migration Job's command failed: {result.stderr}")
    env = container_env(container, secrets)
    processes = []
    try:
        for n in range(3):
            # Three processes on one host: the rendered 0.0.0.0 would collide, so each binds
            # its own loopback address on the rendered port.
            node_env = {**env, "PUSHLITE_SERVER__HOST": f"127.0.0.{n + 2}"}
            if "PUSHLITE_METRICS__LISTEN" in env:
                metrics_port = env["PUSHLITE_METRICS__LISTEN"].rsplit(":", 1)[1]
                node_env["PUSHLITE_METRICS__LISTEN"] = f"127.0.0.{n + 2}:{metrics_port}"
            processes.append(
                subprocess.Popen([binary, *container["args"]], env=node_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            )
        for n, process in enumerate(processes):
            for kind in ("livenessProbe", "readinessProbe"):
                port, path = probe(kind)
                url = f"http://127.0.0.{n + 2}:{port}{path}"
                deadline = time.time() + 20
                while True:
                    if process.poll() is not None:
                        fail(f"{name}: node {n} exited with {process.returncode}: {process.stderr.read()}")
                    try:
                        status, _ = http_get(url)
                        if status == 200:
                            break
                    except OSError:
                        pass
                    if time.time() > deadline:
                        fail(f"{name}: {kind} {url} never answered 200")
                    time.sleep(0.1)
        port = ports["http"]
        status, body = http_get(f"http://127.0.0.2:{port}/api/admin/apps", ADMIN, b"app[name]=smoke-app")
        if status != 201:
            fail(f"{name}: admin API answered {status}: {body}")
        app = json.loads(body)["data"]
        status, body = http_get(
            f"http://127.0.0.3:{port}/api/apps/smoke-app/events",
            (app["key"], app["secret"]),
            b"topic=t&event=e&scope=public&payload=%7B%7D",
        )
        if status != 200:
            fail(f"{name}: events API on another node answered {status}: {body}")
        metrics_port = ports.get("metrics", port)
        status, body = http_get(f"http://127.0.0.4:{metrics_port}/metrics")
        if status != 200 or "pushlite_build_info" not in body:
            fail(f"{name}: /metrics on the rendered metrics port {metrics_port}")
        if metrics_port != port:
            status, _ = http_get(f"http://127.0.0.4:{port}/metrics")
            if status != 404:
                fail(f"{name}: /metrics is also served on the public port")
        service = find(docs, "Service")
        service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
        for target in service_ports.values():
            if target not in ports:
                fail(f"{name}: the Service targets port {target!r}, which the container does not name")
        for monitor in (d for d in docs if d["kind"] == "ServiceMonitor"):
            for endpoint in monitor["spec"]["endpoints"]:
                if endpoint["port"] not in service_ports:
                    fail(f"{name}: the ServiceMonitor scrapes port {endpoint['port']!r}, which the Service lacks")
        check_dashboard(body)
        grace = pod["terminationGracePeriodSeconds"]
        for process in processes:
            process.terminate()
        for n, process in enumerate(processes):
            code = process.wait(timeout=grace)
            if code != 0:
                fail(f"{name}: node {n} exited {code} after SIGTERM")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    step(f"smoke ({name}): migration Job args, 3 nodes with the rendered args/env/port/probes, clean SIGTERM within {grace}s")


def check_dashboard(exposition: str) -> None:
    """Every metric the Grafana dashboard queries is registered by the binary (labelled
    families only appear in an exposition once they have a value, so the registrations in
    src/metrics.rs are the reference, plus what the exposition shows: the standard process_*
    metrics come from the prometheus crate's process collector), and the unlabelled ones are
    really exposed."""
    import re

    dashboard = (ROOT / "deploy" / "grafana" / "pushlite.json").read_text()
    source = (ROOT / "src" / "metrics.rs").read_text()
    registered = set(re.findall(r'"((?:pushlite|process)_\w+)"', source))
    registered |= set(re.findall(r"^((?:pushlite|process)_\w+)", exposition, re.M))
    registered |= {m + suffix for m in registered for suffix in ("_bucket", "_count", "_sum")}
    used = set(re.findall(r"\b((?:pushlite|process)_\w+)", dashboard))
    missing = sorted(used - registered)
    if missing:
        fail(f"the Grafana dashboard queries metrics the binary does not register: {missing}")
    for always in ("pushlite_build_info", "pushlite_bus_subscriptions", "process_resident_memory_bytes"):
        if always not in exposition:
            fail(f"{always} is not exposed")


def check_compose(binary: str) -> None:
    """The compose file's environment is accepted by the binary, and nginx and Prometheus
    point at the port the replicas listen on."""
    compose_dir = ROOT / "deploy" / "compose"
    compose = yaml.safe_load((compose_dir / "docker-compose.yml").read_text())
    env = {k: str(v) for k, v in compose["x-pushlite"]["environment"].items()}
    env = {k: v.replace("${PUSHER_ADMIN_USERNAME:-compose-admin}", "compose-admin")
                .replace("${PUSHER_ADMIN_PASSWORD:-compose-admin-password}", "compose-admin-password")
           for k, v in env.items()}
    result = subprocess.run([binary, "config"], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"compose environment refused by the binary: {result.stderr}")
    listen = next(
        (line.split("=")[1].strip() for line in result.stdout.splitlines() if line.startswith("port")),
        None,
    )
    for config in ("nginx.conf", "prometheus.yml"):
        text = (compose_dir / config).read_text()
        for replica in ("pushlite1", "pushlite2", "pushlite3"):
            if f"{replica}:{listen}" not in text:
                fail(f"{config} does not reach {replica} on port {listen}")
    step(f"compose: environment accepted, nginx and Prometheus reach the replicas on port {listen}")


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: validate.py PUSHLITE_BINARY")
    binary = sys.argv[1]
    hadolint()
    rendered = {name: check_chart(name, values) for name, values in value_sets().items()}
    check_schema_rejects_bad_values()
    check_compose(binary)
    for name in ("default", "production-values.yaml"):
        smoke(binary, name, rendered[name])
    step("deployment artefacts agree with the binary")


if __name__ == "__main__":
    main()
