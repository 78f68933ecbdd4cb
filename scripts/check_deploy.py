"""Checks what deploy/ ships, as `make test` runs it:

- every Kubernetes manifest against the Kubernetes schemas (kubernetes-validate, strict);
- both HAProxy configurations with `haproxy -c` (the local one with its addresses from the
  environment, the one inside the Kubernetes ConfigMap as written);
- the embedserve configuration inside the ConfigMap, with the Secret's environment overrides,
  through `embedserve check-config` (image paths mapped to this checkout's assets).

Usage: check_deploy.py EMBEDSERVE_BINARY
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"


def run(cmd, env=None):
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def documents(name):
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def main():
    binary = sys.argv[1]
    manifests = sorted(K8S.glob("*.yaml"))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    run([validator, "--strict", "--quiet", *manifests])
    print(f"kubernetes-validate --strict: {len(manifests)} manifests valid")

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ)
        env.update(
            HAPROXY_BIND="127.0.0.1:8000",
            HAPROXY_STATS_BIND="127.0.0.1:8001",
            HAPROXY_STATS_SOCKET=f"{tmp}/admin.sock",
            EMBEDSERVE_1="127.0.0.1:8081",
            EMBEDSERVE_2="127.0.0.1:8082",
            EMBEDSERVE_3="127.0.0.1:8083",
        )
        run(["haproxy", "-c", "-q", "-f", ROOT / "deploy/haproxy/haproxy.cfg"], env)
        in_cluster = next(d for d in documents("haproxy.yaml") if d["kind"] == "ConfigMap")
        cfg = Path(tmp) / "haproxy.cfg"
        cfg.write_text(in_cluster["data"]["haproxy.cfg"])
        run(["haproxy", "-c", "-q", "-f", cfg])
        print("haproxy -c: deploy/haproxy/haproxy.cfg and the Kubernetes ConfigMap's valid")

        docs = documents("embedserve.yaml")
        config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["embedserve.toml"]
        secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
        toml = Path(tmp) / "embedserve.toml"
        toml.write_text(config.replace("/app/assets/", f"{ROOT}/assets/"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSERVE")}
        env.update(secret)
        # The placeholders, as an operator would fill them in.
        env["EMBEDSERVE__TENANTS__ACME__KEYS"] = '["' + "ab" * 32 + '"]'
        run([binary, "check-config", "--config", toml], env)
        print("embedserve check-config: the ConfigMap's configuration with the Secret's overrides is valid")


if __name__ == "__main__":
    main()
