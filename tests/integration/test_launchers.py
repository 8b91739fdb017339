"""Hydra multirun and the launcher plugins sdbatch ships configs for (sdbatch/conf/hydra/launcher).

Real processes with the tiny model on the CPU: Hydra's basic launcher, the joblib launcher
(hydra/launcher=local) and submitit's local executor. Slurm without a cluster: the sbatch script
submitit would submit for hydra/launcher=slurm, against tests/data/slurm_golden.sbatch
(UPDATE_GOLDEN=1 rewrites it); tests/cluster/test_slurm.py runs the same launcher on a real
one-node cluster. Hydra's Ray launcher only where its plugin is installed. The GPU choice of
sdbatch/run/gpus.py with made-up GPU lists.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from sdbatch.cli import job_folder
from sdbatch.run import gpus
from tests.conftest import BIN, ROOT, sdbatch_env

SDBATCH = str(BIN / "sdbatch")
GOLDEN = ROOT / "tests" / "data" / "slurm_golden.sbatch"
QUICK = ["+recipe=quick", "steps=2", "run.progress=false"]


def sdbatch(*args: str, cwd: Path, timeout: int = 300, **env) -> subprocess.CompletedProcess:
    full = sdbatch_env(**env)
    full.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [SDBATCH, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout
    )


def fake_nvidia_smi(folder: Path, count: int) -> str:
    """A PATH on which `nvidia-smi -L` lists `count` made-up GPUs."""
    folder.mkdir()
    lines = "".join(f"echo 'GPU {i}: Fake GPU (UUID: GPU-fake-{i})'\n" for i in range(count))
    (folder / "nvidia-smi").write_text(f"#!/bin/sh\n{lines}")
    (folder / "nvidia-smi").chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def sweep_rows(sweep: Path) -> list[dict]:
    """The docs' one-liner: every job's manifest in the sweep folder as ONE dataset."""
    files = glob.glob(f"{sweep}/*/manifest/*.parquet")
    return ds.dataset(files, format="parquet").to_table().to_pylist()


def check_sweep(out: Path, expect_jobs: dict[str, int]) -> list[dict]:
    """Two job folders named by their overrides, 4 ok rows each with hydra_job and overrides."""
    sweep = out / "multirun"
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name[0] != ".")
    assert folders == sorted(expect_jobs), folders
    rows = sweep_rows(sweep)
    assert len(rows) == 4 * len(expect_jobs) and {r["status"] for r in rows} == {"ok"}
    for folder, job in expect_jobs.items():
        mine = [r for r in rows if r["hydra_job"] == job]
        assert len(mine) == 4, (folder, job)
        cfg = folder.split("cfg=")[1].split(",")[0]
        for r in mine:
            assert r["cfg"] == float(cfg) and f"cfg={cfg}" in r["overrides"].split()
            assert "recipe=quick" in r["overrides"].split()  # the normal form: no "+"
            assert (sweep / folder / r["image"]).is_file()
    # the same rows through pyarrow's directory discovery (PNGs and yaml skipped)
    table = ds.dataset(sweep, format="parquet", exclude_invalid_files=True).to_table()
    assert table.num_rows == len(rows)
    assert not (out.parent / "multirun.yaml").exists(), "Hydra's sweep file stays in the sweep"
    assert (sweep / "multirun.yaml").is_file()
    return rows


def test_basic_multirun_one_folder_per_job_one_dataset_and_resume(tmp_path):
    out = tmp_path / "out"
    res = sdbatch("-m", *QUICK, "cfg=5,7", f"output.dir={out}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    check_sweep(out, {"cfg=5,steps=2": 0, "cfg=7,steps=2": 1})
    assert sorted(os.listdir(tmp_path)) == ["out"], "nothing lands in the working directory"
    # the same sweep again, overrides in another order: every job resumes, nothing is rendered
    again = sdbatch("-m", "cfg=5,7", *reversed(QUICK), f"output.dir={out}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done: 0 written, 4 skipped, 0 failed") == 2, again.stdout
    assert len(sweep_rows(out / "multirun")) == 8


def test_joblib_launcher_runs_jobs_in_two_worker_processes(tmp_path):
    """Two workers; with two (made-up) GPUs each takes its own before torch starts. torch finds
    no CUDA here, so run.device=auto still renders on the CPU."""
    out = tmp_path / "out"
    args = ["-m", "hydra/launcher=local", "hydra.launcher.n_jobs=2", *QUICK, "cfg=5,7"]
    path = fake_nvidia_smi(tmp_path / "bin", 2)
    res = sdbatch(*args, f"output.dir={out}", cwd=tmp_path, PATH=path)
    assert res.returncode == 0, res.stderr
    assert "Joblib.Parallel(n_jobs=2" in res.stdout + res.stderr
    rows = check_sweep(out, {"cfg=5,steps=2": 0, "cfg=7,steps=2": 1})
    assert {r["device"] for r in rows} == {"cpu"}
    notes = [ln for ln in res.stdout.splitlines() if ln.startswith("gpu: multirun job ")]
    assert notes and all(ln.endswith("of 2 visible GPUs") for ln in notes), res.stdout
    taken = [ln.split("CUDA_VISIBLE_DEVICES=")[1].split()[0] for ln in notes]
    assert len(set(taken)) == len(taken), notes  # a worker that ran both jobs pins once
    again = sdbatch(*args, f"output.dir={out}", cwd=tmp_path)
    assert again.stdout.count("done: 0 written, 4 skipped, 0 failed") == 2, again.stdout


@pytest.mark.slow
def test_submitit_local_executor_runs_the_jobs(tmp_path):
    out = tmp_path / "out"
    res = sdbatch(
        "-m", "hydra/launcher=submitit_local", *QUICK, "cfg=5,7", f"output.dir={out}",
        cwd=tmp_path, OMP_NUM_THREADS="1",  # two jobs start at once on a small machine
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    check_sweep(out, {"cfg=5,steps=2": 0, "cfg=7,steps=2": 1})
    # submitit's pickles and logs sit in the sweep's dot folder, out of the datasets' way
    logs = list((out / "multirun" / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2
    assert all("done: 4 written" in p.read_text() for p in logs)


# --- Slurm: the sbatch script, no cluster -------------------------------------------------


def slurm_script(tmp_path: Path, monkeypatch, *overrides: str) -> str:
    """The sbatch script the submitit plugin submits for a 2-job sweep with hydra/launcher=slurm.

    Our config goes through Hydra's composition and the plugin's own launch(): only `srun` and
    `sbatch` are fakes on PATH (sbatch keeps a copy of the script it is handed) and nothing
    waits for the jobs.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext
    from submitit.slurm.slurm import SlurmJob

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    captured = tmp_path / "captured.sbatch"
    (fake / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {captured}\necho "Submitted batch job 4242"\n'
    )
    for f in fake.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(SlurmJob, "results", lambda self: [None])
    with initialize_config_module("sdbatch.conf", version_base="1.3"):
        cfg = compose(
            "sdbatch",
            ["+recipe=quick", f"output.dir={tmp_path / 'out'}", "hydra/launcher=slurm", *overrides],
            return_hydra_config=True,
        )
    launcher = Plugins.instance()._instantiate(cfg.hydra.launcher)
    launcher.setup(
        hydra_context=HydraContext(config_loader=None, callbacks=None),
        task_function=print,
        config=cfg,
    )
    launcher.launch([["cfg=5"], ["cfg=7"]], initial_job_idx=0)
    text = captured.read_text()
    return text.replace(str(tmp_path), "<TMP>").replace(shlex.quote(sys.executable), "<PYTHON>")


def test_slurm_sbatch_script_matches_the_golden_file(tmp_path, monkeypatch):
    script = slurm_script(
        tmp_path, monkeypatch, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90"
    )
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(script)
    lines = script.splitlines()
    for flag in ["--gpus-per-task=1", "--time=90", "--partition=gpu", "--cpus-per-task=8",
                 "--mem=32GB", "--job-name=sdbatch-quick", "--array=0-1%2", "--ntasks-per-node=1",
                 "--signal=USR2@120"]:  # fmt: skip
        assert f"#SBATCH {flag}" in lines, flag
    assert "#SBATCH --output=<TMP>/out/multirun/.submitit/%A_%a/%A_%a_0_log.out" in lines
    assert lines[-1].endswith(
        "<PYTHON> -u -m submitit.core._submit <TMP>/out/multirun/.submitit/%j"
    )
    assert script == GOLDEN.read_text(), "regenerate with UPDATE_GOLDEN=1 if the change is meant"


def test_slurm_gres_instead_of_gpus_per_task(tmp_path, monkeypatch):
    script = slurm_script(
        tmp_path, monkeypatch, "hydra.launcher.gres=gpu:a100:1",
        "hydra.launcher.gpus_per_task=null", "hydra.launcher.account=vision",
        "+hydra.launcher.additional_parameters.mail-type=END",
    )  # fmt: skip
    lines = script.splitlines()
    assert "#SBATCH --gres=gpu:a100:1" in lines and "#SBATCH --account=vision" in lines
    assert "#SBATCH --mail-type=END" in lines
    assert not any("--gpus-per-task" in ln for ln in lines)
    assert not any("--partition" in ln for ln in lines)  # null: the cluster's default


# --- Ray: only where the optional plugin is installed -------------------------------------


@pytest.mark.slow
def test_ray_launcher_runs_the_jobs(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        reason = (
            "hydra-ray-launcher is not installed (pip install 'sdbatch[ray-launcher]', "
            "docs/launchers); sdbatch-tools ray-shards is tested in tests/cluster/test_ray.py"
        )
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    out = tmp_path / "out"
    res = sdbatch(
        "-m", "hydra/launcher=ray", *QUICK, "cfg=5,7", f"output.dir={out}",
        cwd=tmp_path, timeout=600, OMP_NUM_THREADS="1",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    check_sweep(out, {"cfg=5,steps=2": 0, "cfg=7,steps=2": 1})


# --- Installed wheel ----------------------------------------------------------------------


@pytest.mark.slow
def test_wheel_ships_the_launcher_configs(tmp_path):
    src = tmp_path / "src"  # a copy: no build/ folder in the shared working tree
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ["sdbatch", "recipes"]:
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ["pyproject.toml", "README.md"]:
        shutil.copy(ROOT / name, src / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", tmp_path / "dist",
         str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("sdbatch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in ["local.yaml", "slurm.yaml"]:
        assert f"sdbatch/conf/hydra/launcher/{f}" in names, f
    target = tmp_path / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", target, wheel],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-2000:]
    work = tmp_path / "work"
    work.mkdir()
    env = sdbatch_env(PYTHONPATH=str(target))
    for launcher, expect in [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")]:
        show = subprocess.run(
            [sys.executable, "-c", "import sdbatch, sdbatch.cli as c; print(sdbatch.__file__);"
             " c.main()", "+recipe=quick", f"hydra/launcher={launcher}", "--cfg", "hydra",
             "-p", "hydra.launcher"],
            cwd=work, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert show.returncode == 0, show.stderr
        assert show.stdout.startswith(str(target)), show.stdout
        assert expect in show.stdout, show.stdout
    assert "gpus_per_task: 1" in show.stdout and "max_num_timeout: 3" in show.stdout


# --- GPU choice (sdbatch/run/gpus.py), with made-up GPUs ----------------------------------------

SMI_4 = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i}aaa-bbb)" for i in range(4))
SMI_MIG = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d)
  MIG 3g.20gb     Device  0: (UUID: MIG-aaaa-0000)
  MIG 3g.20gb     Device  1: (UUID: MIG-aaaa-1111)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-e91edf3b-b297)
"""


@pytest.mark.parametrize(
    "value, expect",
    [(None, None), ("", []), ("0", ["0"]), ("0,1, 3", ["0", "1", "3"]), ("2,-1,3", ["2"]),
     ("GPU-abc,GPU-def", ["GPU-abc", "GPU-def"]), ("-1", [])],
)  # fmt: skip
def test_parse_visible(value, expect):
    assert gpus.parse_visible(value) == expect


def test_parse_nvidia_smi():
    assert gpus.parse_nvidia_smi(SMI_4) == ["0", "1", "2", "3"]
    assert gpus.parse_nvidia_smi("") == []
    assert gpus.parse_nvidia_smi("No devices were found\n") == []
    assert gpus.parse_nvidia_smi(SMI_MIG) == ["MIG-aaaa-0000", "MIG-aaaa-1111", "GPU-e91edf3b-b297"]


def test_choose_is_job_number_modulo_gpu_count_skipping_busy_ones():
    four = ["0", "1", "2", "3"]
    assert [gpus.choose(n, four) for n in range(6)] == ["0", "1", "2", "3", "0", "1"]
    assert gpus.choose(5, ["4", "6"]) == "6"  # ids as CUDA_VISIBLE_DEVICES lists them
    assert gpus.choose(1, four, busy={"1"}) == "2"
    assert gpus.choose(3, four, busy={"3", "0"}) == "1"
    assert gpus.choose(2, four, busy=set(four)) == "2"  # all held: share the preferred one
    with pytest.raises(ValueError):
        gpus.choose(0, [])


def test_visible_gpus_prefers_the_environment_over_nvidia_smi():
    assert gpus.visible_gpus({}, smi=lambda: SMI_4) == ["0", "1", "2", "3"]
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": "5,7"}, smi=lambda: SMI_4) == ["5", "7"]
    assert gpus.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, smi=lambda: SMI_4) == []
    assert gpus.visible_gpus({}, smi=lambda: "") == []


def test_pin_narrows_cuda_visible_devices_once(tmp_path, release_locks):
    env: dict[str, str] = {}
    note = gpus.pin(5, env=env, smi=lambda: SMI_4, locks=tmp_path / "a")
    assert env == {"CUDA_VISIBLE_DEVICES": "1"} and "job 5" in note and "4 visible" in note
    # the same (reused) worker process, next job: it sees one GPU now and keeps it
    assert gpus.pin(6, env=env, smi=lambda: SMI_4, locks=tmp_path / "a") is None
    assert env == {"CUDA_VISIBLE_DEVICES": "1"}
    # one GPU, or none: nothing to do
    for smi in [lambda: SMI_4.splitlines()[0], lambda: ""]:
        env = {}
        assert gpus.pin(3, env=env, smi=smi, locks=tmp_path / "b") is None and env == {}


TWO = "GPU 0: NVIDIA L4 (UUID: GPU-0)\nGPU 1: NVIDIA L4 (UUID: GPU-1)\n"
HOLDER = """
import pathlib, sys
from sdbatch.run import gpus
env = {}
gpus.pin(0, env=env, smi=lambda: sys.argv[1], locks=pathlib.Path(sys.argv[2]))
print(env["CUDA_VISIBLE_DEVICES"], flush=True)
sys.stdin.read()  # hold the GPU until the test closes stdin
"""


@pytest.fixture
def release_locks():
    yield
    while gpus._HELD:
        os.close(gpus._HELD.pop())


def test_workers_of_a_sweep_take_different_gpus_whichever_jobs_they_start_with(
    tmp_path, release_locks
):
    """A live worker took job 0 and holds GPU 0; a worker whose first job is 2 (which prefers
    GPU 0 of 2) takes GPU 1 instead. Once the holder exits, its lock is gone with it."""
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, TWO, str(locks)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "0"
        env: dict[str, str] = {}
        note = gpus.pin(2, env=env, smi=lambda: TWO, locks=locks)
        assert env["CUDA_VISIBLE_DEVICES"] == "1", note
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    env = {}
    gpus.pin(4, env=env, smi=lambda: TWO, locks=locks)  # prefers 0, free again
    assert env["CUDA_VISIBLE_DEVICES"] == "0"


def test_job_folder_names():
    assert (
        job_folder(["+recipe=quick", "steps=2", "cfg=5", "output.dir=/x/y"], 0) == "cfg=5,steps=2"
    )
    assert job_folder(["cfg=5", "steps=2"], 0) == job_folder(["steps=2", "cfg=5"], 1)
    assert job_folder(["+recipe=quick", "run.device=cpu"], 3) == "3"
    assert job_folder(["prompt=a/b"], 0) == "prompt=a_b"
    long = job_folder([f"prompt='{'x' * 400}'"], 0)
    assert len(long.encode()) <= 200 and long != job_folder([f"prompt='{'x' * 401}'"], 0)


def test_a_sweep_job_stopped_before_its_first_image_still_sets_the_exit_code(tmp_path):
    """A deadline already passed when the first batch would start (0s): the job writes no
    image (so it has no folder of its own yet), and the sweep still exits 4, as a run does."""
    out = tmp_path / "out"
    res = sdbatch("-m", *QUICK, "run.deadline=0s", "cfg=5", f"output.dir={out}", cwd=tmp_path)
    assert "0 of 4 done" in res.stdout, res.stdout + res.stderr
    assert res.returncode == 4, res.stderr
    assert not list(out.glob("multirun/*/images/*.png"))
