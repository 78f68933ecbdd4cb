#!/usr/bin/env python3
"""Write the Lambda deployment zip: bootstrap, ONNX Runtime, a config (config/lambda.toml by
default) as config/lambda.toml, and every model file it names, in the repository's layout (so
the config's relative paths hold in /var/task). Prints the zipped and unzipped sizes.

Usage: scripts/package_lambda.py BOOTSTRAP OUT.zip [CONFIG]
"""

import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "lambda.toml"


def package_files(config_path: Path) -> list[tuple[Path, str]]:
    """(source, path in zip) for everything the config needs."""
    config = tomllib.loads(config_path.read_text())
    files = [(config_path, "config/lambda.toml"), (config_path.parent / config["runtime"]["onnxruntime"], None)]
    models = list(config["models"].values())
    for tenant in config.get("tenants", {}).values():
        models += list(tenant.get("private_models", {}).values())
    for model in models:
        for key in ("onnx", "tokenizer", "tokenizer_config"):
            if key in model:
                files.append((config_path.parent / model[key], None))
    out, seen = [], set()
    for source, name in files:
        source = source.resolve()
        name = name or source.relative_to(ROOT).as_posix()
        if name not in seen:
            seen.add(name)
            out.append((source, name))
    return out


# SHA-256 of the demo keys printed in the README (src/config/keys.rs: DEMO_KEY_HASHES).
DEMO_KEY_HASHES = {
    "7f2e6802f17f6ba210bb387707340e4fa6d03de0347ddcc5dd4ece4439694fce",  # acme-dev-key
    "12cad79350669be6df490bdd33bd12237b1b5c2b917224bf9b70b380e35c3e95",  # globex-dev-key
}


def warn_about_demo_keys(config_path: Path) -> None:
    """The packaged config must not carry the published demo keys into a deployment."""
    config = tomllib.loads(config_path.read_text())
    demo = sorted(
        tenant
        for tenant, t in config.get("tenants", {}).items()
        if any(k.removeprefix("sha256:").lower() in DEMO_KEY_HASHES for k in t.get("keys", []))
    )
    if demo:
        bar = "!" * 78
        print(
            f"{bar}\nWARNING: {config_path.relative_to(ROOT)} gives tenants {', '.join(demo)} the demo keys\n"
            "published in the README. This zip refuses to start on Lambda unless\n"
            "EMBEDSERVE__SERVER__ALLOW_DEMO_KEYS=true; replace the keys before deploying\n"
            f"(`embedserve hash-key`).\n{bar}",
            file=sys.stderr,
        )


def main() -> None:
    bootstrap, target = Path(sys.argv[1]), Path(sys.argv[2])
    config = (Path(sys.argv[3]) if len(sys.argv) > 3 else CONFIG).resolve()
    warn_about_demo_keys(config)
    target.parent.mkdir(parents=True, exist_ok=True)
    entries = [(bootstrap, "bootstrap")] + package_files(config)
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for source, name in entries:
            info = zipfile.ZipInfo.from_file(source, name)
            # Lambda runs bootstrap and dlopens the runtime: both must be executable/readable.
            info.external_attr = (0o755 if name == "bootstrap" or name.endswith(".so.1.31.1") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with open(source, "rb") as f:
                z.writestr(info, f.read(), compresslevel=9)
    with zipfile.ZipFile(target) as z:
        unzipped = sum(i.file_size for i in z.infolist())
        for i in z.infolist():
            print(f"  {i.file_size / 2**20:8.1f} MiB  {i.compress_size / 2**20:8.1f} MiB zipped  {i.filename}")
    zipped = target.stat().st_size
    print(f"{target}: {zipped / 1e6:.1f} MB zipped ({'within' if zipped <= 50e6 else 'over: upload through S3, beyond'} "
          f"the 50 MB direct upload limit), {unzipped / 1e6:.1f} MB unzipped (limit 250 MB)")


if __name__ == "__main__":
    main()
