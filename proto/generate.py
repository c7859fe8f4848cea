"""Regenerate the Python code of the wire contract.

    python -m proto.generate            # rewrite the generated files in place
    python -m proto.generate --out DIR  # write them under DIR instead (used by the freshness test)

The generated modules are committed; ``tests/proto/test_contract.py`` fails if they differ from what
this script produces, so edit ``spyops.proto`` and run this, never the generated files.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ["proto/spyops/v1/spyops.proto"]


def generate(out: Path) -> None:
    """Run protoc (from grpcio-tools) on the contract, writing modules and stubs under ``out``."""
    from grpc_tools import protoc  # dev dependency: imported only when regenerating

    for rel in PROTO_FILES:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)  # protoc writes nothing otherwise
    include = str(resources.files("grpc_tools") / "_proto")
    bindir = Path(sys.executable).parent  # mypy-protobuf's plugins live beside the interpreter
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--mypy_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(ROOT / rel) for rel in PROTO_FILES],
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    ns = parser.parse_args(argv)
    generate(ns.out)


if __name__ == "__main__":
    main(sys.argv[1:])
