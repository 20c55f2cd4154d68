"""Generates the committed Python code and type stubs from the .proto files.

Run as ``python -m protos.codegen`` (``make proto``); the contract test calls
:func:`generate` into a temporary folder and compares with what is committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("protos") / "schoolfleet" / "v1"


def proto_files() -> list[Path]:
    """The contract's .proto files, relative to the repository root."""
    return sorted(p.relative_to(ROOT) for p in (ROOT / PROTO_DIR).glob("*.proto"))


def generate(out_dir: Path) -> None:
    """Writes *_pb2.py, *_pb2_grpc.py and their .pyi stubs under ``out_dir``."""
    # grpc_tools is a development dependency: import it only when generating.
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins sit beside the interpreter in the virtual environment.
    bin_dir = Path(sys.executable).parent
    args = [
        "grpc_tools.protoc",
        f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(ROOT / p) for p in proto_files()),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + ", ".join(map(str, proto_files())))


def generated_files(root: Path) -> dict[str, bytes]:
    """Generated files under ``root``, keyed by their path relative to it."""
    patterns = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")
    found = (p for pattern in patterns for p in (root / PROTO_DIR).glob(pattern))
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(found)}


if __name__ == "__main__":
    generate(ROOT)
    print("\n".join(generated_files(ROOT)), file=sys.stderr)
