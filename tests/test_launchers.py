"""Hydra launchers shipped in conf/hydra/launcher/: SLURM (submitit) and a local pool (joblib)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from gpurecon import parallel

def gpurecon(args, tmp_path, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPURECON_CACHE": str(tmp_path / "cache"),
           "GPURECON_OUTPUTS": str(tmp_path / "multirun"), "GPURECON_GPU_LOCKS": str(tmp_path / "locks")}
    for key in ("GPURECON_DATA_ROOT", "GPURECON_DEVICE"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "gpurecon", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_slurm_launcher_config_composes_with_one_gpu_per_job_and_overrides(tmp_path):
    proc = gpurecon(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=15",
                     "--cfg", "hydra"], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    launcher = yaml.safe_load(proc.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1
    assert launcher["cpus_per_task"] >= 1 and launcher["mem_gb"] >= 1
    assert launcher["partition"] == "gpu" and launcher["timeout_min"] == 15   # overridable
    # the plugin is importable (installed with gpurecon), so `-m` would submit
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher  # noqa: F401


def test_local_pool_runs_two_jobs_through_joblib(tmp_path):
    """`hydra/launcher=local_pool` with 2 workers: both jobs complete in the joblib pool; without
    CUDA the pool's device claim falls back to the CPU (recorded in every output)."""
    proc = gpurecon(["-m", "hydra/launcher=local_pool", "hydra.launcher.n_jobs=2", "subject=1,2",
                     "model=planted", "data.n_channels=5", "data.n_words=16", "solver.n_permutations=0"],
                    tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in log
    runs = sorted((tmp_path / "multirun").glob("*/*/*_subject=*"))
    assert [r.name for r in runs] == ["0_subject=1", "1_subject=2"]   # job number, swept values
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        assert summary["provenance"]["device"] == "cpu"
        assert summary["config"]["device"] == "cpu"
    # the sweep's summary counts the jobs the pool's workers ran (read from their folders)
    assert ("gpurecon sweep: 2 job(s): 2 finished, 0 skipped (already complete, resume=true), "
            "0 failed") in proc.stdout
    assert f"gpurecon sweep: folder {runs[0].parent}\n" in proc.stdout


def test_gpu_claims_never_give_one_gpu_to_two_workers(tmp_path, monkeypatch):
    """Each claim holds a lock on one GPU; a third worker on two GPUs is refused, by name."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    claims = []
    for expected in ("cuda:0", "cuda:1"):
        monkeypatch.setattr(parallel, "_CLAIM", {})        # a fresh worker process
        assert parallel.claim_free_gpu(n_gpus=2, lock_dir=tmp_path) == expected
        claims.append(parallel._CLAIM["handle"])
        assert parallel.claim_free_gpu(n_gpus=2, lock_dir=tmp_path) == expected   # kept by its worker
    monkeypatch.setattr(parallel, "_CLAIM", {})
    with pytest.raises(ValueError, match=r"hydra.launcher.n_jobs=2"):
        parallel.claim_free_gpu(n_gpus=2, lock_dir=tmp_path)
    claims[0].close()                                        # worker 0 exits: its GPU is free
    assert parallel.claim_free_gpu(n_gpus=2, lock_dir=tmp_path) == "cuda:0"
    parallel._CLAIM["handle"].close()
    claims[1].close()
    monkeypatch.setattr(parallel, "_CLAIM", {})
    assert parallel.claim_free_gpu(n_gpus=0, lock_dir=tmp_path) == "cpu"
