"""The committed generated code is what the .proto files give, and it imports."""

from __future__ import annotations

import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

from protos import codegen


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    codegen.generate(tmp_path)
    fresh = codegen.generated_files(tmp_path)
    committed = codegen.generated_files(codegen.ROOT)
    assert fresh, "protoc produced nothing"
    assert sorted(fresh) == sorted(committed), "run `make proto`: the file set differs"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"run `make proto`: these differ from the .proto files: {stale}"


def test_generated_modules_import_with_stubs() -> None:
    for name in ("fleet", "agent", "admin"):
        module = importlib.import_module(f"protos.schoolfleet.v1.{name}_pb2")
        assert Path(module.__file__ or "").with_suffix(".pyi").exists()
    grpc_module = importlib.import_module("protos.schoolfleet.v1.agent_pb2_grpc")
    assert hasattr(grpc_module, "AgentServiceStub")
    admin = importlib.import_module("protos.schoolfleet.v1.admin_pb2_grpc")
    assert hasattr(admin, "AdminServiceServicer")


def test_the_distribution_ships_the_generated_code_and_stubs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "-w",
            str(tmp_path),
            str(codegen.ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    (wheel,) = tmp_path.glob("schoolfleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("fleet", "agent", "admin"):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert f"protos/schoolfleet/v1/{name}{suffix}" in names
    assert "protos/py.typed" in names
    assert not any(n.startswith(("tests/", "bench/", "demo/")) for n in names)
