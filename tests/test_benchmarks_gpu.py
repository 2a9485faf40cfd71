"""The benchmarks' GPU modes as a CPU-only machine meets them, and benchmarks/gpu_check.sh's plan:
the script parses, its steps fit in 8 minutes, and every step's command is one the script it calls
accepts (here each stops at its one-line "no CUDA GPU" error, after its arguments parsed)."""

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BUDGET_S = 8 * 60
START_UP_S = 20  # the two torch imports before the steps, and each step's own start

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a GPU does")


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _main(mod, argv) -> int:
    try:
        return mod.main(argv)
    except SystemExit as exc:  # argparse and the scripts' own _fail
        return exc.code


def _steps(*flags):
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", *flags], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
    steps, total = [], None
    for line in proc.stdout.splitlines():
        if line.startswith("== "):
            head, cmd = line[3:].split("): ", 1)
            steps.append((head, int(head.rsplit("(limit ", 1)[1].rstrip("s")), shlex.split(cmd)))
        elif line.startswith("gpu_check.sh: total limit "):
            total = int(line.rsplit(" ", 1)[1].rstrip("s"))
    return steps, total


def test_gpu_check_parses_and_its_steps_fit_in_eight_minutes(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], timeout=60).returncode == 0
    steps, total = _steps()
    assert total == sum(limit for _, limit, _ in steps) and total + START_UP_S < BUDGET_S, total
    names = " | ".join(head for head, _, _ in steps)
    for mode in ("CUDA graphs", "reduce-overhead", "op vs Inductor", "Triton kernels"):
        assert mode in names, names
    cmds = [" ".join(cmd) for _, _, cmd in steps]
    assert any("test_ops_acon_kernels.py" in c for c in cmds)  # the ACON kernels on CUDA
    assert all("--acts hardswish," in c for c in cmds if "bench_train.py" in c)  # HardSwish in every run
    grid, grid_total = _steps("--with-paper-grid")
    assert len(grid) == len(steps) + 1 and "bench_paper_grid.py" in " ".join(grid[-1][2])
    proc = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "unknown argument '--bogus'" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path)))
    assert proc.returncode == 2 and "gpu_check.sh: no CUDA device" in proc.stderr


def test_gpu_check_commands_are_ones_their_scripts_accept(capsys):
    """Each benchmark step's arguments parse; the script then stops at its one-line no-GPU error."""
    steps, _ = _steps()
    benches = [(head, cmd) for head, _, cmd in steps if cmd[1].startswith("benchmarks/")]
    assert len(benches) == len(steps) - 1
    for head, cmd in benches:
        rc = _main(_bench(Path(cmd[1]).stem), cmd[2:])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if "error" in line]
        assert rc == 2 and "usage:" not in err and len(lines) == 1 and "CUDA" in lines[0], (head, err)
    tests = next(cmd for _, _, cmd in steps if cmd[1:3] == ["-m", "pytest"])
    args = [a for a in tests[3:] if not a.startswith("--junitxml") and "triton_tests.xml" not in a]  # (its -q and ours: per-file counts)
    if "-n" in args:  # pytest-xdist's workers (where installed) would report the collection their way
        i = args.index("-n")
        assert args[i + 1].isdigit(), args
        del args[i:i + 2]
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    counts = dict(line.rsplit(": ", 1) for line in proc.stdout.splitlines() if line.startswith("tests/"))
    assert proc.returncode == 0 and set(counts) == {"tests/ops_triton_cases.py", "tests/test_ops_acon_kernels.py"}, \
        proc.stdout[-2000:]
    assert all(int(n) > 0 for n in counts.values()), counts


@pytest.mark.parametrize("script,argv,words", [
    ("bench_models", ["--cuda-graphs"], "--cuda-graphs replays CUDA graphs and needs --device cuda"),
    ("bench_models", ["--engines", "cuda-graphs"], "engine 'cuda-graphs' replays CUDA graphs"),
    ("bench_train", ["--cuda-graphs", "--device", "cpu"], "--cuda-graphs replays CUDA graphs and needs a CUDA device"),
    ("bench_train", ["--cuda-graphs"], "--cuda-graphs replays CUDA graphs and needs a CUDA device"),
    ("bench_compile_forms", ["--device", "cuda", "--quick"], "torch sees no CUDA GPU on this machine"),
    ("bench_compile_forms", ["--mode", "reduce-overhead", "--quick"], "--mode reduce-overhead replays CUDA graphs"),
])
def test_cuda_graph_flags_without_a_gpu_are_one_clear_line(capsys, tmp_path, script, argv, words):
    rc = _main(_bench(script), [*argv, "--json" if script == "bench_models" else "--out", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.json").exists()
