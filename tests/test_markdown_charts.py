"""The Mermaid charts in the README and docs/ parse with Mermaid's own parser (what GitHub renders), and
`scaling_replay.mermaid.chart` writes one that does, from a real replay.

Mermaid 11 and jsdom come from npm on first use, cached under <repo>/.cache/tools/mermaid (override the
directory with PERF_PREDICTOR_TOOLS), as the chart tests do with helm.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
TOOLS = Path(os.environ.get("PERF_PREDICTOR_TOOLS", REPO / ".cache" / "tools")) / "mermaid"
PACKAGES = ("mermaid@11.17.2", "jsdom@29.1.1")
CHECK = Path(__file__).resolve().parent / "markdown" / "mermaid-check.mjs"
BLOCK = re.compile(r"^```mermaid\n(.*?)^```$", re.S | re.M)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]


@pytest.fixture(scope="module")
def mermaid_check():
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed to parse the Mermaid charts (`apt-get install npm`)")
    stamp = TOOLS / "installed.txt"
    if not stamp.is_file() or stamp.read_text() != " ".join(PACKAGES):
        TOOLS.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", "--prefix", str(TOOLS),
                               *PACKAGES], capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"npm install {' '.join(PACKAGES)} failed: {proc.stderr.strip()[-2000:]}")
        stamp.write_text(" ".join(PACKAGES))
    script = TOOLS / CHECK.name  # beside its node_modules, where an ES module resolves its imports
    shutil.copyfile(CHECK, script)

    def check(diagrams: list[str], work: Path) -> list[dict]:
        files = []
        for i, text in enumerate(diagrams):
            files.append(work / f"diagram-{i}.mmd")
            files[-1].write_text(text)
        proc = subprocess.run([node, str(script), *map(str, files)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]
    return check


def test_the_check_refuses_a_broken_chart(mermaid_check, tmp_path):
    good, bad = mermaid_check(["xychart-beta\n    line [1, 2, 3]\n", "xychart-beta\n    line [1, 2,\n"], tmp_path)
    assert good["ok"] and good["lines"] == [3]
    assert not bad["ok"] and bad["error"]


def test_every_mermaid_block_in_the_docs_parses(mermaid_check, tmp_path):
    blocks = [(page, text) for page in PAGES if page.is_file() for text in BLOCK.findall(page.read_text())]
    results = mermaid_check([text for _, text in blocks], tmp_path)
    failed = [(page.relative_to(REPO), r["error"]) for (page, _), r in zip(blocks, results) if not r["ok"]]
    assert not failed, failed
    for (page, _), r in zip(blocks, results):
        if r["type"] == "xychart":  # a chart whose lines differ in length is drawn misaligned
            assert len(set(r["lines"])) == 1, (page.relative_to(REPO), r["lines"])


def test_the_replay_chart_parses_and_holds_a_day_of_steps(mermaid_check, tmp_path):
    from scaling_replay import demand
    from scaling_replay.compare import Settings, compare, perfect_forecasts
    from scaling_replay.mermaid import COLOURS, chart

    # a real series when ../shared is there, else a day-cycle with a burst: the chart's shape is the test
    try:
        series = next(s for s in demand.load(demand.default_files()) if "GOOG" in s.name)
        values, step, name = series.values[-2000:], series.step_seconds, series.name
    except FileNotFoundError:
        t = np.arange(2000)
        values = 50 + 30 * np.sin(2 * np.pi * t / 288) + np.where(t % 500 == 400, 120.0, 0.0)
        step, name = 300.0, "synthetic"
    perfect = perfect_forecasts(values, 336, 12)
    result = compare(name, values, step, perfect, 336, Settings(), perfect)  # its own median (calibration)
    text = chart(result)
    assert text.startswith("```mermaid\n") and text.endswith("\n```")
    (parsed,) = mermaid_check([text[len("```mermaid\n"):-len("```")]], tmp_path)
    assert parsed["ok"], parsed.get("error")
    assert parsed["type"] == "xychart"
    assert parsed["lines"] == [288, 288, 288]  # a day of 5-minute steps: demand, reactive, predictive
    assert parsed["palette"] == ", ".join(COLOURS)
    x = parsed["xAxis"]
    assert x["type"] == "linear" and x["max"] - x["min"] == pytest.approx(287 * step / 3600, abs=0.11)
    lines = [[float(v) for v in m.group(1).split(", ")] for m in re.finditer(r"line \[(.*?)\]", text)]
    # demand is the replayed series itself, step for step
    assert any(np.allclose(lines[0], values[i:i + 288], rtol=1e-3) for i in range(len(values) - 287))
    # capacity lines are whole replicas of the replay's capacity
    for line in lines[1:]:
        replicas = np.array(line) / result.capacity
        assert np.all(np.abs(replicas - np.round(replicas)) <= 1e-3 * np.maximum(np.round(replicas), 1))
