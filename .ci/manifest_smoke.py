#!/usr/bin/env python3
"""Start the readyd binary with the exact arguments and environment of each
Kubernetes manifest's readyd container, and check that it serves: the
`startup` and `readiness` names turn SERVING, /metrics answers, and SIGTERM
ends it with exit code 0.

Values from Secrets are filled in with test values (DATABASE_URL: a fresh
database on the server named by this script's DATABASE_URL, migrated first
as the migration Job would; random tokens); the data directory is a
temporary one, and the TLS files (serving certificate, key, upstream CA) are
made for the run by a throwaway CA. A follower (READYD_UPSTREAM) follows an
upstream readyd started for it on that database, on a free loopback port.
Everything else is taken from the manifest as written.

Usage: manifest_smoke.py BINARY MANIFEST...
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
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

# Secret values shared by every readyd of the run.
SECRETS = {
    "READYD_ADMIN_TOKEN": secrets.token_hex(16),
    "READYD_READ_TOKEN": secrets.token_hex(16),
    "READYD_REPLICATION_TOKEN": secrets.token_hex(16),
}


def make_tls(directory):
    """A throwaway CA and a certificate it issued for 127.0.0.1 and
    localhost; returns the paths by the setting that takes them."""

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca_key, ca_crt = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.crt")
    key, csr, crt = (os.path.join(directory, name) for name in ("tls.key", "tls.csr", "tls.crt"))
    ext = os.path.join(directory, "ext.cnf")
    with open(ext, "w", encoding="utf-8") as handle:
        handle.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", ca_key, "-out", ca_crt, "-subj", "/CN=readyd smoke CA", "-days", "1")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    openssl("x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-out", crt, "-days", "1", "-extfile", ext)
    return {"READYD_TLS_CERT": crt, "READYD_TLS_KEY": key, "READYD_UPSTREAM_CA": ca_crt}


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


def environment(container, data_dir, database_url, tls_files):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": data_dir,
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    secret_values = {"DATABASE_URL": database_url, **SECRETS}
    for entry in container.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            env[name] = secret_values[name]
        elif "fieldRef" in entry.get("valueFrom", {}):
            env[name] = "smoke-" + entry["valueFrom"]["fieldRef"]["fieldPath"].replace(".", "-")
    # Only the data directory and the TLS files are this machine's: the
    # manifest's volumes.
    env["READYD_DATA_DIR"] = data_dir
    for name, path in tls_files.items():
        if name in env:
            env[name] = path
    return env


def start_upstream(binary, follower_env, database_url, tls_files, data_dir):
    """A readyd on the database for a follower to follow; returns the
    process and the follower's READYD_UPSTREAM."""
    scheme = follower_env["READYD_UPSTREAM"].split("://", 1)[0]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": data_dir,
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "DATABASE_URL": database_url,
        "READYD_LISTEN": "127.0.0.1:0",
        "READYD_METRICS_LISTEN": "off",
        "READYD_LOG_FORMAT": "json",
        "READYD_DATA_DIR": data_dir,
        "READYD_ENVIRONMENT": follower_env.get("READYD_ENVIRONMENT", "development"),
        **SECRETS,
    }
    if scheme == "https":
        env["READYD_TLS_CERT"] = tls_files["READYD_TLS_CERT"]
        env["READYD_TLS_KEY"] = tls_files["READYD_TLS_KEY"]
    process = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        if line.startswith("{") and json.loads(line).get("message") == "readyd is serving":
            listen = json.loads(line)["listen"]
            # Keep reading its output, so it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process, f"{scheme}://{listen}"
    raise SystemExit("the upstream for the follower exited before serving")


def wait_serving(binary, name, env, deadline):
    # The kubelet's way: the plaintext probe port when there is one.
    address = env.get("READYD_PROBE_LISTEN", "off")
    if address == "off":
        address = env.get("READYD_LISTEN", "127.0.0.1:50051")
    port = address.rsplit(":", 1)[1]
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
        tls_dir = os.path.join(data_dir, "tls")
        os.mkdir(tls_dir)
        tls_files = make_tls(tls_dir)
        env = environment(container, data_dir, database_url, tls_files)
        upstream = None
        if "READYD_UPSTREAM" in env:
            upstream_dir = os.path.join(data_dir, "upstream")
            os.mkdir(upstream_dir)
            upstream, env["READYD_UPSTREAM"] = start_upstream(binary, env, database_url, tls_files, upstream_dir)
        else:
            # The migration Job's step (the central example serves with
            # --no-migrate); harmless where serve migrates itself.
            subprocess.run([binary, "migrate"], env=env, check=True, capture_output=True)
        try:
            serve_manifest(binary, manifest_path, container, env, data_dir)
        finally:
            if upstream is not None:
                upstream.send_signal(signal.SIGTERM)
                try:
                    upstream.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    upstream.kill()
                    upstream.wait()


def serve_manifest(binary, manifest_path, container, env, data_dir):
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
        http_addr = env.get("READYD_HTTP_LISTEN", "off")
        if http_addr != "off":
            port = http_addr.rsplit(":", 1)[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
                if answer.read().decode() != "ok\n":
                    raise SystemExit("/readyz is not ok")
            if env.get("READYD_CONSOLE") == "true":
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/console", timeout=5) as answer:
                    if "Sign in" not in answer.read().decode():
                        raise SystemExit("/console is not the console's page")
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
