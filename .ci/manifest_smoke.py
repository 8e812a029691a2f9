#!/usr/bin/env python3
"""Start the release binary with the exact arguments and environment of each
Kubernetes manifest's readyd container, and check that it serves: the
`startup` and `readiness` names turn SERVING, /metrics answers, and SIGTERM
ends it with exit code 0.

Values from Secrets are filled in with test values (DATABASE_URL: a fresh
database on the server named by this script's DATABASE_URL, migrated first
as the migration Job would; a random admin token); the data directory is a
temporary one. Everything else is taken from the manifest as written.

Usage: manifest_smoke.py BINARY MANIFEST...
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml


def readyd_container(manifest_path):
    with open(manifest_path, encoding="utf-8") as handle:
        for document in yaml.safe_load_all(handle):
            if not document or document.get("kind") != "Deployment":
                continue
            pod = document["spec"]["template"]["spec"]
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                if container["name"] == "readyd":
                    return container
    return None


QUIET = {**os.environ, "PGOPTIONS": "-c client_min_messages=warning"}


def fresh_database(base_url, name):
    """Creates database `name` on the server of `base_url`; returns its URL."""
    subprocess.run(
        ["psql", base_url, "-q", "-c", f"DROP DATABASE IF EXISTS {name}", "-c", f"CREATE DATABASE {name}"],
        check=True,
        env=QUIET,
    )
    parsed = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit(parsed._replace(path="/" + name))


def drop_database(base_url, name):
    subprocess.run(["psql", base_url, "-q", "-c", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False, env=QUIET)


def environment(container, data_dir, database_url):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": data_dir,
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    secret_values = {
        "DATABASE_URL": database_url,
        "READYD_ADMIN_TOKEN": secrets.token_hex(16),
        "READYD_READ_TOKEN": secrets.token_hex(16),
    }
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[name] = secret_values[name]
        elif "fieldRef" in entry.get("valueFrom", {}):
            env[name] = "smoke-" + entry["valueFrom"]["fieldRef"]["fieldPath"].replace(".", "-")
    # Only the data directory is this machine's: the manifest's volume.
    env["READYD_DATA_DIR"] = data_dir
    return env


def wait_serving(binary, name, env, deadline):
    port = env.get("READYD_LISTEN", "127.0.0.1:50051").rsplit(":", 1)[1]
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [binary, "health", "--service", name, "--timeout", "1s"],
            env={**env, "READYD_ADDR": f"http://127.0.0.1:{port}"},
            capture_output=True,
            text=True,
        )
        if probe.returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{name} did not turn SERVING")


def smoke(binary, manifest_path):
    container = readyd_container(manifest_path)
    if container is None:
        print(f"{manifest_path}: no readyd container, skipped")
        return
    base_url = os.environ.get("DATABASE_URL")
    if not base_url:
        print(f"{manifest_path}: no DATABASE_URL (the manifests use an external database), skipped")
        return
    name = "readyd_manifest_smoke"
    database_url = fresh_database(base_url, name)
    try:
        run_manifest(binary, manifest_path, container, database_url)
    finally:
        drop_database(base_url, name)


def run_manifest(binary, manifest_path, container, database_url):
    with tempfile.TemporaryDirectory(prefix="readyd-manifest-") as data_dir:
        env = environment(container, data_dir, database_url)
        # The migration Job's step (the central example serves with
        # --no-migrate); harmless where serve migrates itself.
        subprocess.run([binary, "migrate"], env=env, check=True, capture_output=True)
        command = [binary] + container.get("command", [])[1:] + container.get("args", [])
        print(f"{manifest_path}: {' '.join(command)}")
        log_path = os.path.join(data_dir, "readyd.log")
        with open(log_path, "w", encoding="utf-8") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            for name in ("startup", "readiness", "liveness"):
                wait_serving(binary, name, env, deadline)
            metrics_addr = env.get("READYD_METRICS_LISTEN", "127.0.0.1:9464")
            if metrics_addr != "off":
                port = metrics_addr.rsplit(":", 1)[1]
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
                    body = answer.read().decode()
                if "readyd_snapshot_version" not in body:
                    raise SystemExit("/metrics lacks readyd_snapshot_version")
                for line in body.splitlines():
                    if line.startswith("process_resident_memory_bytes "):
                        rss = float(line.split()[1]) / (1024 * 1024)
                        print(f"{manifest_path}: resident memory after start {rss:.1f} MiB")
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            if code != 0:
                raise SystemExit(f"exit code {code} after SIGTERM")
        except BaseException:
            process.kill()
            process.wait()
            with open(log_path, encoding="utf-8") as log:
                sys.stderr.write(log.read())
            raise
        with open(log_path, encoding="utf-8") as log:
            lines = [json.loads(line) for line in log if line.startswith("{")]
        if not any(line.get("message") == "readyd is serving" for line in lines):
            raise SystemExit("no JSON 'readyd is serving' line in the log")
        print(f"{manifest_path}: served, scraped, stopped cleanly")


def main():
    binary, manifests = sys.argv[1], sys.argv[2:]
    for manifest_path in manifests:
        smoke(binary, manifest_path)


if __name__ == "__main__":
    main()
