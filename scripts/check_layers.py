#!/usr/bin/env python3
"""Checks that the source tree's top-level modules depend on each other only as the layout
says (docs/architecture.md): adapters and the composition root use the core, never the reverse,
and no two modules import each other. Reads `crate::<module>` paths in src/ (comments left out).
Exit 1, naming each file and line, on an import the table does not allow."""

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# Each top-level module, and what it may use.
ALLOWED = {
    "metrics": set(),
    "models": {"metrics"},
    "config": {"models"},
    "core": {"config", "metrics", "models"},
    "redis": {"config", "core", "metrics"},
    "http": {"config", "core", "metrics", "models"},
    "run": {"config", "core", "http", "metrics", "models", "redis"},
}


def main() -> int:
    problems = []
    for path in sorted(SRC.rglob("*.rs")):
        top = path.relative_to(SRC).parts[0].removesuffix(".rs")
        if top not in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("//", 1)[0]
            for used in re.findall(r"crate::([a-z_]+)", code):
                if used in ALLOWED and used != top and used not in ALLOWED[top]:
                    problems.append(f"{path.relative_to(SRC.parent)}:{number}: {top} may not use {used}")
    unknown = {p.relative_to(SRC).parts[0].removesuffix(".rs") for p in SRC.iterdir()} - set(ALLOWED) - {"lib", "main"}
    for name in sorted(unknown):
        problems.append(f"src/{name}: a top-level module the layering table does not know (scripts/check_layers.py)")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"layers: {len(ALLOWED)} top-level modules, every import goes the allowed way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
