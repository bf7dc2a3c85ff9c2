"""How the project is put together: no import cycles, a service that needs only the model file,
one command-line convention, and words a stranger can follow."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "training", "export", "inference", "serving", "clients", "bench", "batch")


def tracked_python() -> list[Path]:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO / f for f in files if (REPO / f).is_file()]


def module_name(path: Path) -> str | None:
    rel = path.relative_to(REPO).with_suffix("")
    if rel.parts[0] not in PACKAGES:
        return None
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules `path` imports, at the top or inside functions alike (a lazy import
    back is a cycle all the same)."""

    def resolve(name: str) -> str:  # "training.checkpoint.load_model" → "training.checkpoint"
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {resolve(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the submodule where there is one
            found |= {resolve(f"{node.module}.{alias.name}") for alias in node.names}
    return found - {""}


def import_graph() -> dict[str, set[str]]:
    paths = {m: p for p in tracked_python() if (m := module_name(p))}
    graph = {m: imports_of(p, set(paths)) for m, p in paths.items()}
    for module, targets in graph.items():
        # A package's __init__ importing its own submodules is how packages work, and a
        # submodule is not importing its package back by being inside it: drop those edges.
        targets.discard(module)
        targets -= {t for t in targets if module.startswith(t + ".") and t in PACKAGES}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "training.train" in graph  # the walk found the code
    assert "serving.service" in graph
    assert "training.evaluate" in graph["training.train"]
    assert cycles(graph) == []


def test_the_service_imports_with_torch_onnx_and_training_blocked():
    """Serving reads the model file through the export contract and nothing of training: the
    `serve` extra has no torch and no onnx, and a built Bento ships no training/."""
    blocked = ["torch", "onnx", "onnxscript", "training", "bench", "kornia", "matplotlib"]
    modules = sorted(
        m for p in tracked_python() if (m := module_name(p)) and m.split(".")[0] == "serving"
    )
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
        f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
        "print('imported', len(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "serving.service" in modules
    assert "serving.routes" in modules


def test_the_inference_runtime_imports_without_http_bentoml_torch_or_onnx():
    """inference/ is what the service, the batch job, the benchmarks and the client share: it
    must not pull in the server (BentoML, Starlette), an HTTP client, torch, onnx or the export
    stage that writes the models it reads."""
    blocked = ["bentoml", "starlette", "httpx", "aiohttp", "torch", "onnx", "export", "serving",
               "training", "clients", "batch", "bench"]  # fmt: skip
    modules = sorted(
        m for p in tracked_python() if (m := module_name(p)) and m.split(".")[0] == "inference"
    )
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
        f"import importlib\nfor m in {modules!r}: importlib.import_module(m)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"inference.backend", "inference.preprocess", "inference.contract"} <= set(modules)


def test_no_words_that_point_outside_the_repository():
    # Built from pieces, so that this file does not match itself.
    pattern = re.compile("seed 0" + "0|issue [0-9]|" + re.escape(".." + "/shared"), re.I)
    hits = [
        f"{p.relative_to(REPO)}:{n}: {line.strip()}"
        for p in tracked_python()
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


# --- every CLI: a bad option is one line, `error: ...`, exit status 2 ----------------------------

# (how to load its main, arguments with an unknown option, arguments with a bad value)
CLIS = {
    "training.train": (["--no-such-option"], ["--preset", "nope", "--data", "x.zip"]),
    "training.evaluate": (["--no-such-option"], ["--checkpoint", "missing.pt", "--data", "x"]),
    "training.augment": (["--no-such-option"], ["--preset", "nope", "--bench"]),
    "training.summary": (["--no-such-option"], ["resnet18", "--set", "stem=huge"]),
    "training.checkpoint": (["--no-such-option"], ["slim", "missing.pt", "out.pt"]),
    "training.data": (["--no-such-option"], ["missing.zip"]),
    "training.fixtures": (["--no-such-option"], ["out", "--classes", "0"]),
    "export.__main__": (
        ["--no-such-option"],
        ["--checkpoint", "c.pt", "--out", "m.onnx", "--int8"],
    ),
    "export.reliability": (["--no-such-option"], ["--model", "missing.onnx", "--data", "x"]),
    "clients.cli": (["--no-such-option"], ["predict", "no/such/folder"]),
    "bench.inference": (["--no-such-option"], ["--model", "missing.onnx"]),
    "bench.decode": (["--no-such-option"], ["missing-val-folder"]),
    "bench.peers": (["--no-such-option"], ["--servers", "nope"]),
    "bench.http": (["--no-such-option"], ["-c", "0"]),
    "scripts/gpu/rows.py": (["--no-such-option"], ["no-such-run"]),
    "scripts/gpu/lease.py": (["--no-such-option"], ["rehearse"]),
    "scripts/gpu/ship.py": (["--no-such-option"], ["back", "--data", "missing.zip"]),
    "scripts/compare_runs.py": (["--no-such-option"], ["no-such-run"]),
    "training.throughput": (["--no-such-option"], ["--preset", "nope"]),
    "scripts/gpu/bench_gpu.py": (["--no-such-option"], ["--preset", "nope"]),
    "tests.abuse": (["--no-such-option"], ["localhost:3000"]),
    "serving.store": (["--no-such-option"], ["missing.onnx"]),
    "batch.__main__": (["--no-such-option"], ["x", "--out", "y", "--format", "csv"]),
    "bench.limits": (["--no-such-option"], ["--model", "missing.onnx"]),
    "bench.batch": (["--no-such-option"], ["--model", "missing.onnx"]),
    "bench.accuracy": (["--no-such-option"], ["no/such/val"]),
    "scripts/cam_grid.py": (["--no-such-option"], ["--data", "x.zip", "-n", "0"]),
    "scripts/ui_screenshot.py": (["--no-such-option"], ["missing.jpg"]),
}


def load_main(name: str):
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(name).stem, REPO / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(name)
    return module.main


@pytest.mark.parametrize("name", list(CLIS))
@pytest.mark.parametrize("which", ["unknown option", "bad value"])
def test_every_cli_refuses_bad_options_in_one_line(name, which, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = CLIS[name][which == "bad value"]
    try:
        status = load_main(name)(argv)
    except SystemExit as e:  # argparse's refusals exit; the others return the status
        status = e.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: "), err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def cli_name(path: Path) -> str:
    """tests/abuse.py → tests.abuse (inside packages); scripts/gpu/rows.py stays a path."""
    rel = path.relative_to(REPO)
    if all((REPO / rel.parents[i] / "__init__.py").exists() for i in range(len(rel.parts) - 1)):
        return ".".join(rel.with_suffix("").parts)
    return str(rel)


def test_the_cli_list_covers_every_main():
    mains = {
        cli_name(p) for p in tracked_python() if re.search(r"^def main\(", p.read_text(), re.M)
    }
    assert mains <= set(CLIS)


def test_a_missing_extra_is_named_with_its_install_line(monkeypatch, capsys):
    from common.cli import require_extra

    require_extra("training", "train", ("json",))  # present: nothing happens
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[batch\]'"):
        require_extra("batch", "batch", ("json", "no_such_module_for_this_test"))
    monkeypatch.setattr(sys, "argv", ["-m"])  # what `python -m batch` sees while batch imports
    with pytest.raises(SystemExit) as stopped:
        require_extra("batch", "batch", ("no_such_module_for_this_test",))
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "error: batch needs the `batch` extra (no_such_module_for_this_test is not installed): "
        ".venv/bin/pip install -e '.[batch]'\n"
    )
