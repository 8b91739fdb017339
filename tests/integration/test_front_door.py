"""What a new user meets first: help, version, hints, A1111's forms on the command line,
random seeds, clean stops while loading, dry runs that write nothing, quiet pipes."""

from __future__ import annotations

import os
import signal
import subprocess

import pyarrow.parquet as pq
import pytest

from sdbatch.overrides import a1111_argv, normal_form
from sdbatch.run import runner
from tests.conftest import BIN, quick_cfg, run_cli, sdbatch_env

DRY = ["+recipe=quick", "run.dry_run=true", "run.device=cpu"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def plan_line(out: str) -> str:
    return next(ln for ln in out.splitlines() if " jobs = " in ln)


def test_help_is_sdbatchs_own_and_lists_the_recipes(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    assert out.startswith("sdbatch: YAML recipes in")
    assert "sdbatch +recipe=NAME" in out and "Exit codes:" in out
    recipes = (
        "cfg_sweep, controlnet_demo, hair_styles, img2img_demo, quick, sampler_comparison, "
        "shapes_demo"
    )
    assert f"recipe: {recipes}" in out
    assert 'eval "$(sdbatch -sc install=bash)"' in out
    assert "powered by Hydra" not in out


def test_version_on_both_commands(monkeypatch, capsys):
    from sdbatch import __version__, tools

    code, out, _ = run_cli(monkeypatch, capsys, "--version")
    assert (code, out.strip()) == (0, f"sdbatch {__version__}")
    with pytest.raises(SystemExit) as exit_:
        tools.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == (
        f"sdbatch-tools {__version__}"
    )


def test_recipe_without_plus_and_bare_sdbatch_say_what_to_type(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "recipe=quick")
    assert code == 2 and "write +recipe=NAME (with the +)" in err
    code, _, err = run_cli(monkeypatch, capsys)
    assert code == 2 and "+recipe=NAME" in err and "sdbatch --help" in err


@pytest.mark.parametrize(
    ("arg", "expect"),
    [
        ("steps=10-30 (+10)", "  steps: 10, 20, 30"),
        ("cfg=5-9 [3]", "  cfg: 5, 7, 9"),
        ("sampler=Euler a, DDIM", "  sampler: Euler a, DDIM"),
        ("prompt=black hair, (ponytail:1.2)", "'black hair, (ponytail:1.2)'"),
        ("template=black {x}, hair", "'black long, hair'"),
        ("seeds=[7,8,9]", "  seeds: 7, 8, 9"),  # a list over the recipe's {start, count}
        ("prompt=[red:blue:0.5]", "'[red:blue:0.5]'"),  # prompt editing, not a Hydra list
        ("prompt=[cat|dog]", "'[cat|dog]'"),  # alternation
        ("prompt=[a cat, a dog]", "'a dog'"),  # a list of prompts stays a list
    ],
)
def test_a1111_forms_work_on_the_command_line_as_typed(monkeypatch, capsys, arg, expect):
    code, out, err = run_cli(monkeypatch, capsys, *DRY, "+vars.x=[long,short]", arg)
    assert code == 0, err
    assert expect in out


def test_any_axis_form_overrides_any_other(monkeypatch, capsys):
    # cfg_sweep's seeds are a list; a {start, count} mapping replaces it, and the reverse
    code, out, err = run_cli(
        monkeypatch, capsys, "+recipe=cfg_sweep", "run.dry_run=true", "seeds={start:5,count:3}"
    )
    assert code == 0 and "  seeds: 5, 6, 7" in out, err
    code, out, err = run_cli(monkeypatch, capsys, *DRY, "seeds=42")
    assert code == 0 and "1 seeds" in plan_line(out), err


def test_a1111_argv_leaves_hydra_sweeps_alone_under_multirun():
    assert a1111_argv(["cfg=5,7"], multirun=True) == ["cfg=5,7"]
    assert a1111_argv(["cfg=5,7"], multirun=False) == ["cfg='5,7'"]
    assert a1111_argv(["run.device=cpu", "-m"], multirun=True) == ["run.device=cpu", "-m"]
    assert a1111_argv(["prompt=it's (x)"], multirun=False) == ["prompt='it\\'s (x)'"]
    # a ControlNet unit's key is set whether or not the recipe's unit has it
    assert a1111_argv(["controlnet.0.control_mode=Balanced"], multirun=False) == [
        "++controlnet.0.control_mode=Balanced"
    ]
    assert a1111_argv(["+controlnet.1.weight=1"], multirun=False) == ["+controlnet.1.weight=1"]


def test_random_seeds_are_stable_for_the_folder_and_recorded(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    cfg = quick_cfg(seeds=[-1, 5, -1])
    dry = runner.execute({**cfg, "run": {**cfg["run"], "dry_run": True}}, out)
    assert dry.skipped == 0 and not out.exists()  # a dry run draws nothing, writes nothing
    assert "seed random" in capsys.readouterr().out
    first = runner.execute(cfg, out)
    assert first.written == 6
    seeds = [r["seed"] for r in pq.read_table(out / "manifest").to_pylist()]
    assert seeds.count(5) == 2 and len(set(seeds)) == 5  # each -1 job got its own seed
    again = runner.execute(cfg, out)
    assert (again.written, again.skipped) == (0, 6)  # resumed, not redrawn
    # shards of one run (own folders, one salt folder) draw the same seeds as the whole run
    shard_seeds = []
    for index in (0, 1):
        shard = {**cfg, "batch_size": 1, "shard": {"index": index, "count": 2}}
        runner.execute(shard, tmp_path / f"shard{index}", salt_dir=out)
        shard_seeds += [r["seed"] for r in pq.read_table(tmp_path / f"shard{index}/manifest")
                        .to_pylist()]  # fmt: skip
    assert sorted(shard_seeds) == sorted(seeds)


def test_sigterm_while_the_model_loads_is_a_clean_stop(tmp_path, monkeypatch, capsys):
    real = runner.load_renderer

    def load_and_get_signalled(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(runner, "load_renderer", load_and_get_signalled)
    out = tmp_path / "out"
    summary = runner.execute(quick_cfg(), out)
    assert summary.exit_code == 4 and summary.stopped == "SIGTERM"
    assert "run the same command to continue" in capsys.readouterr().out
    assert not out.exists()
    monkeypatch.setattr(runner, "load_renderer", real)
    assert runner.execute(quick_cfg(), out).written == 4


def test_a_multirun_dry_run_writes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    code, text, err = run_cli(monkeypatch, capsys, "-m", *DRY, f"output.dir={out}", "cfg=5,7")
    assert code == 0, err
    assert text.count("quick: 4 jobs") == 2
    assert not out.exists()


def test_overrides_are_recorded_in_one_normal_form():
    a = normal_form(["+recipe=quick", "cfg=5", "run.progress=false", "steps=2"])
    b = normal_form(["steps=2", "cfg=5", "+recipe=quick", "output.dir=/x", "run.device=cpu"])
    c = normal_form(["~seeds", "+seeds=[1,2]", "recipe=quick", "run.dtype=bf16"])
    assert a == b == "cfg=5 recipe=quick steps=2"
    assert c == "recipe=quick run.dtype=bf16 seeds=[1,2]"
    assert normal_form(["run.progress=false"]) is None


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path):
    out = tmp_path / "out"
    runner.execute(quick_cfg(seeds=[1]), out)
    pngs = [str(p) for p in (out / "images").glob("*.png")] * 400
    proc = subprocess.Popen(
        [str(BIN / "sdbatch-tools"), "infotext", *pngs],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=sdbatch_env(),
    )  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_extra_network_tags_are_a_warning_per_tag_or_an_error_when_strict(monkeypatch, capsys):
    # LoRA tags are loaded (tests/integration/test_lora.py); what is not applied warns
    tags = "prompt=a cat <hypernet:h:1>, <hypernet:h:1> <foo:x>"
    code, out, err = run_cli(monkeypatch, capsys, *DRY, tags, "negative_prompt=<lora:n:1>")
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert code == 0 and len(lines) == 3, err  # one line per distinct tag
    assert "<hypernet:h:1> is an A1111 hypernetwork tag" in lines[0] and "not applied" in lines[0]
    assert "<foo:x>" in lines[1] and "negative_prompt: <lora:n:1>" in lines[2]
    code, _, err = run_cli(monkeypatch, capsys, *DRY, tags, "run.strict_prompts=true")
    assert code == 2 and "run.strict_prompts" in err and "<hypernet:h:1>" in err
