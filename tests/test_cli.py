import json

import numpy as np
import pytest

from fastmeta import cli


def test_rl_demo_runs_and_improves_on_the_uniform_prior(capsys, tmp_path):
    out = cli.run_rl_demo(size=6, n_tasks=4, steps=20, plot=None, progress=False)
    text = capsys.readouterr().out
    assert "meta-learned prior" in text and "each task's own optimum" in text
    rows = out["rows"]
    assert rows["meta-learned prior"][0] > rows["uniform prior (theta = 0)"][0]
    assert rows["each task's own optimum"][0] >= rows["meta-learned prior"][0]


def test_demo_checkpoint_resume_via_main(tmp_path, capsys):
    ckpt = str(tmp_path / "demo.npz")
    assert cli.main(["demo", "--quick", "--plot", "", "--checkpoint", ckpt]) == 0
    assert cli.main(["demo", "--steps", "12", "--plot", "", "--checkpoint", ckpt, "--resume"]) == 0
    assert "12 steps of Algorithm 1" in capsys.readouterr().out


def test_demo_plot_when_matplotlib_is_available(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curve.png"
    cli.run_rl_demo(size=5, n_tasks=2, steps=3, plot=str(path), progress=False)
    assert path.stat().st_size > 1000


@pytest.mark.parametrize("family,states", [("grid", 400), ("random", 400)])
def test_profile_reports_every_stage(family, states, tmp_path, capsys):
    path = tmp_path / "p.json"
    assert cli.main(["profile", "--states", str(states), "--features", "8", "--tasks", "2", "--family", family,
                     "--repeats", "1", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    stages = report["stages"]
    for name in ("factorise", "solve", "solve transposed", "build M", "kernels", "vjp"):
        assert f"gradient: {name}" in stages
    assert report["gradient_seconds"] > 0
    assert all(np.isfinite(row["peak_mb"]) and row["peak_mb"] > 0 for row in stages.values())
    assert "one meta-gradient" in capsys.readouterr().out
