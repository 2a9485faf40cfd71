"""benchmarks/bench_merge.py runs (quick settings) and writes its table and JSON."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_merge.py"


def test_quick_run_prints_the_table_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_merge", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "merge.json"
    assert bench.main(["--quick", "--cases", "vanillanet_mini", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conv_layers" in out and "latency_ms" in out and str(path) in out
    res = json.loads(path.read_text())["results"]["vanillanet_mini"]
    assert res["ratios"]["conv_layers"] == 0.5 and res["verify_max_rel"] <= 1e-5
    assert res["after"]["latency_ms"] > 0 and len(res["merged"]) == 5
