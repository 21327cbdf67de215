"""Packaging and layers: what a normal install (the images) gets, and which package may import which.

The development venv installs genrec editable, which finds every module under src/ whether or not the wheel would
carry it; these tests look at the wheel and the source tree instead.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "src" / "genrec"
# The library sits below these: it must never import them (kfp is the orchestrator's, the others are the layers above).
FORBIDDEN_IN_LIBRARY = ("kfp", "pipelines", "components", "spark_jobs")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (lazy imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def layer_violations(root: Path) -> list[str]:
    """Every import of a forbidden top-level package under root, as 'file:line imports module'."""
    return [f"{path.relative_to(root.parent)}:{line} imports {module}"
            for path in sorted(root.rglob("*.py"))
            for line, module in imported_modules(path)
            if module.split(".")[0] in FORBIDDEN_IN_LIBRARY]


def test_the_library_imports_no_layer_above_it():
    assert layer_violations(LIBRARY) == []
    assert (LIBRARY / "spark" / "sessionize.py").is_file()  # the rule holds because the job's logic moved here


def test_the_layer_rule_catches_a_lazy_import(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "cli.py").write_text("def run():\n    from pipelines.local_run import run_local\n")
    (tmp_path / "lib" / "stage.py").write_text("import spark_jobs.sessionize as job\nimport kfp\n")
    assert layer_violations(tmp_path / "lib") == ["lib/cli.py:2 imports pipelines.local_run", "lib/stage.py:1 imports spark_jobs.sessionize",
                     "lib/stage.py:2 imports kfp"]


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory):
    """The wheel built from this tree, installed (not editable) with its pinned dependencies into a new venv."""
    root = tmp_path_factory.mktemp("wheel")
    pip = dict(capture_output=True, text=True, timeout=1200)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(root / "dist"), str(REPO)], **pip)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((root / "dist").glob("genrec-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # torch first, as the Makefile does: a plain torch requirement would pull the CUDA build.
    for args in (["torch==2.13.0"], ["-c", str(REPO / "constraints.txt"), str(wheel)]):
        proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", *args], **pip)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return venv, wheel


def test_wheel_installs_every_package_and_runs(clean_install, tmp_path):
    venv, wheel = clean_install
    script = tmp_path / "check.py"
    # A script file, not `python -c`: importing Great Expectations under -c exits early (NOTES.md).
    script.write_text(
        "import importlib, pkgutil, genrec, genrec.stages\n"
        "stages = sorted(m.name for m in pkgutil.iter_modules(genrec.stages.__path__))\n"
        "for name in stages:\n"
        "    importlib.import_module('genrec.stages.' + name)\n"
        "import spark_jobs.sessionize, components, pipelines.cli\n"
        "print(genrec.__file__)\n"
        "print(' '.join(stages))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)  # not the repo: nothing from src/
    proc = subprocess.run([str(venv / "bin" / "python"), str(script)], **run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, stages = proc.stdout.split("\n")[:2]
    assert Path(where).is_relative_to(venv), f"genrec came from {where}, not the clean venv"
    assert stages.split() == ["align", "assign_sids", "embed_items", "evaluate", "gate_and_register", "ingest",
                              "sessionize", "train_reward", "train_sft", "validate_events", "validate_pages"]
    helped = subprocess.run([str(venv / "bin" / "genrec"), "--help"], **run)
    assert helped.returncode == 0, helped.stderr[-3000:]
    for command in ("run", "compile", "ingest", "train-sft", "gate-and-register", "ui"):
        assert f" {command} " in helped.stdout, command
    compiled = subprocess.run([str(venv / "bin" / "genrec"), "compile", "--out", str(tmp_path / "p.yaml"),
                               "--image", "registry.example/genrec:test"], **run)
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert (tmp_path / "p.yaml").read_text().count("image: registry.example/genrec:test") == 12  # 11 stages + finish-run
