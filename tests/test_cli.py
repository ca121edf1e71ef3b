import json
import subprocess
import sys

import numpy as np
import pytest

from fastmeta import cli


def test_rl_demo_runs_and_improves_on_the_uniform_prior(capsys, tmp_path):
    out = cli.run_rl_demo(size=6, n_tasks=4, steps=20, plot=None, progress=False)
    text = capsys.readouterr().out
    assert "meta-learned prior" in text and "each task's own optimum" in text
    assert "discounted fraction of time" in text          # the demo says what L is
    rows = out["rows"]
    assert rows["meta-learned prior"][0] > rows["uniform prior (theta = 0)"][0]
    assert rows["each task's own optimum"][0] >= rows["meta-learned prior"][0]
    # Curves over theta_0..theta_T on both goal sets; they end at the reported values.
    assert len(out["objective"]) == len(out["held_out"]) == 21
    assert out["objective"][-1] == rows["meta-learned prior"][0]
    assert out["held_out"][-1] == rows["meta-learned prior"][1]
    assert out["held_out"][0] == rows["uniform prior (theta = 0)"][1]


def test_demo_checkpoint_resume_via_main(tmp_path, capsys):
    ckpt = str(tmp_path / "demo.npz")
    assert cli.main(["demo", "--quick", "--plot", "", "--checkpoint", ckpt]) == 0
    assert cli.main(["demo", "--steps", "12", "--plot", "", "--checkpoint", ckpt, "--resume"]) == 0
    assert "2 steps of Algorithm 1" in capsys.readouterr().out


def test_demo_with_zero_steps_and_no_plot_reports_the_prior(tmp_path, capsys):
    path = tmp_path / "demo.json"
    assert cli.main(["demo", "--steps", "0", "--plot", "", "--out", str(path)]) == 0
    result = json.loads(path.read_text())
    rows = result["rows"]
    assert rows["meta-learned prior"] == rows["uniform prior (theta = 0)"]
    assert result["steps"] == 0 and len(result["objective"]) == 1


def test_demo_plot_when_matplotlib_is_available(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "curve.png"
    cli.run_rl_demo(size=5, n_tasks=2, steps=3, plot=str(path), progress=False)
    assert path.stat().st_size > 1000


def test_sl_demo_honours_steps(tmp_path, capsys):
    path = tmp_path / "sl.json"
    assert cli.main(["demo", "--sl", "--quick", "--steps", "2", "--out", str(path)]) == 0
    captured = capsys.readouterr()
    assert json.loads(path.read_text())["settings"]["steps"] == 2
    # Each training run is announced before its progress display, and the table explains itself.
    assert "MAML meta-training: 2 Adam steps" in captured.err and "pretraining (baseline): 2" in captured.err
    assert "k steps" in captured.out and "lower is better" in captured.out


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


def test_profile_says_which_square_grid_it_built(capsys):
    assert cli.main(["profile", "--states", "99", "--features", "4", "--tasks", "1", "--repeats", "1"]) == 0
    assert "built a 10 x 10 = 100-state grid, the nearest to --states 99" in capsys.readouterr().out
    assert cli.profile.grid_side(100_000) == 316            # 316 x 316 = 99,856


BAD_ARGUMENTS = [
    (["demo", "--steps", "-1"], "--steps"),
    (["demo", "--steps", "x"], "--steps"),
    (["demo", "--seed", "-1"], "--seed"),
    (["demo", "--resume"], "--resume"),
    (["demo", "--sl", "--checkpoint", "c.npz"], "--checkpoint"),
    (["demo", "--out", "."], "--out"),
    (["demo", "--out", "no/such/folder/r.json"], "--out"),
    (["demo", "--plot", "no/such/folder/p.png"], "--plot"),
    (["demo", "--checkpoint", "."], "--checkpoint"),
    (["profile", "--states", "0"], "--states"),
    (["profile", "--states", "-5"], "--states"),
    (["profile", "--states", "1e5"], "--states"),
    (["profile", "--features", "0"], "--features"),
    (["profile", "--features", "6"], "--features"),
    (["profile", "--tasks", "0"], "--tasks"),
    (["profile", "--actions", "0"], "--actions"),
    (["profile", "--actions", "3"], "--actions"),
    (["profile", "--repeats", "0"], "--repeats"),
    (["profile", "--gamma", "1.5"], "--gamma"),
    (["profile", "--gamma", "nan"], "--gamma"),
    (["profile", "--gamma", "inf"], "--gamma"),
    (["profile", "--gamma", "0"], "--gamma"),
    (["profile", "--json", "."], "--json"),
    (["profile", "--json", "no/such/folder/p.json"], "--json"),
    (["profile", "--json", ""], "--json"),
    (["profile", "--family", "torus"], "--family"),
    (["profile", "--solver", "qr"], "--solver"),
]


@pytest.mark.parametrize("argv,option", BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_bad_options_are_usage_errors_naming_the_option(argv, option, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "usage:" in err and "Traceback" not in err


def _options():
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.dest not in ("help", "parser", "run", "check"):
                yield name, action


def test_every_option_has_help_with_its_default_and_no_markup():
    seen = 0
    for name, action in _options():
        seen += 1
        assert action.help and "default" in action.help, (name, action.dest)
        assert "`" not in action.help, (name, action.dest)
    assert seen >= 15


def test_version_and_python_dash_m(capsys):
    import fastmeta

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"fastmeta {fastmeta.__version__}"
    proc = subprocess.run([sys.executable, "-m", "fastmeta", "profile", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--states" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "fastmeta", "profile", "--states", "-5"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "argument --states" in proc.stderr
