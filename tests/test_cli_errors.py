"""Every user error of `python -m gpurecon` is one message naming the setting, exit status != 0,
no result files and (for config errors) an untouched cache; Ctrl-C is one line, exit 130."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _cli_helpers import SMALL, result_files, run_cli, temp_leftovers

PROBE_DIR = Path(__file__).parent / "_hub_probe"

# (overrides, the key the message must name). Each fails at start-up: nothing is generated.
# The cases of issue 8 run as CLI subprocesses; the other ranges are checked in-process below.
CONFIG_ERRORS = [
    (["device=tpu"], "device"),
    (["subject=11"], "subject"),
    (["+model.layr=3"], "model.layr"),
    (["target.window=-1"], "target.window"),
    (["target.window=100"], "target.window"),
    (["signal.l_freq=600"], "signal.l_freq"),
    (["signal.l_freq=300", "signal.h_freq=600"], "signal.h_freq"),   # above Nyquist (512 Hz)
    (["signal.order=0"], "signal.order"),
    (["target.frame_length=0"], "target.frame_length"),
    (["solver.cv=kfold", "solver.n_splits=100"], "solver.n_splits"),
    (["model.noise=-1"], "model.noise"),
    (["solver.alpha=-1"], "solver.alpha"),
    (["signal.stops=[[10.0,20.0]]"], "signal.stops"),   # outside the pass-band
    (["model=gpt2", "model.checkpoint=tiny", "model.layer=99"], "model.layer"),  # 4 blocks
]
if not __import__("torch").cuda.is_available():
    CONFIG_ERRORS.append((["device=cuda"], "device"))

# In-process: the composed config through the same validation the app runs first.
RANGE_ERRORS = [
    (["subject=0"], "subject"),
    (["target.frame_shift=-0.01"], "target.frame_shift"),
    (["solver.cv=kfold", "solver.n_splits=1"], "solver.n_splits"),
    (["solver.l1_ratio=1.5"], "solver.l1_ratio"),
    (["solver.tol=0"], "solver.tol"),
    (["solver.max_iter=0"], "solver.max_iter"),
    (["solver.n_permutations=-1"], "solver.n_permutations"),
    (["solver.memory_budget_gb=0"], "solver.memory_budget_gb"),
    (["signal.h_freq=60"], "signal.h_freq"),
    (["signal.stops=[[102.0,98.0]]"], "signal.stops"),
    (["signal.chunk_channels=0"], "signal.chunk_channels"),
    (["data.n_words=0"], "data.n_words"),
    (["data.n_channels=0"], "data.n_channels"),
    (["model=gpt2", "model.layer=[first,0]"], "model.layer"),   # one listed layer is not a layer
    (["model=gpt2", "model.layer=first"], "model.layer"),
    (["model=gpt2", "model.batch_size=0"], "model.batch_size"),
    (["model=wav2vec2", "model.pca_variance=0"], "model.pca_variance"),
    (["model=wav2vec2", "model.window=0"], "model.window"),
    (["model=gpt2", "model.dtype=float16", "device=cpu"], "model.dtype"),
    (["device=cuda:x"], "device"),
]


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from gpurecon.__main__ import _conf_dir

    with initialize_config_dir(config_dir=_conf_dir(), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize("overrides,key", RANGE_ERRORS, ids=[" ".join(c[0]) for c in RANGE_ERRORS])
def test_validation_names_the_key_the_allowed_values_and_the_value(overrides, key):
    from gpurecon.config import validate_config
    from gpurecon.errors import ConfigError

    cfg = _compose(["device=cpu", *overrides])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    message = str(err.value)
    assert key in message.split(" ")[0] or f" {key}" in message
    value = next(o for o in overrides if o.startswith(key) or o.startswith("device")).split("=", 1)[1]
    assert value.strip("[]").split(",")[0] in message.replace(" ", "")   # the value received


def test_the_defaults_and_the_study_settings_validate():
    from gpurecon.config import validate_config

    for overrides in ([], ["model=gpt2"], ["model=wav2vec2"], ["model=fasttext"],
                      ["target=frames"], ["solver.cv=kfold"]):
        validate_config(_compose(["device=cpu", *overrides]))


def test_grid_values_are_each_validated():
    """solver.alpha / l1_ratio lists (a grid in one pass): every element is checked."""
    from omegaconf import OmegaConf

    from gpurecon.config import validate_config
    from gpurecon.errors import ConfigError

    plain = OmegaConf.create(OmegaConf.to_container(_compose(["device=cpu"]), enum_to_str=True))
    plain.solver.alpha, plain.solver.l1_ratio = [0.01, 0.1, 1.0], [0.1, 0.5, 1.0]
    validate_config(plain)
    plain.solver.alpha = [0.1, -1.0]
    with pytest.raises(ConfigError, match=r"solver.alpha .* got -1.0"):
        validate_config(plain)
    plain.solver.alpha, plain.solver.l1_ratio = [0.1], [0.5, 1.01]
    with pytest.raises(ConfigError, match=r"solver.l1_ratio .* got 1.01"):
        validate_config(plain)


def _assert_one_clean_error(proc, key, out):
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, text[-2000:]
    assert key in errors[0], errors[0]
    assert result_files(out) == [] and temp_leftovers(out) == []


def _run_probed(args, tmp_path):
    """run_cli with tests/_hub_probe/sitecustomize.py loaded in the subprocess: returns the
    process, its output folder and what it reached for (hub look-ups, network connections,
    whether a transformers model module was imported)."""
    probe = tmp_path / "probe.json"
    path = os.pathsep.join(filter(None, [str(PROBE_DIR), os.environ.get("PYTHONPATH", "")]))
    proc, out = run_cli(args, tmp_path, env_extra={"PYTHONPATH": path, "GPURECON_TEST_PROBE": str(probe)})
    assert probe.exists(), "the probe did not run in the CLI subprocess:\n" + (proc.stdout + proc.stderr)[-2000:]
    return proc, out, json.loads(probe.read_text())


@pytest.mark.parametrize("overrides,key", CONFIG_ERRORS, ids=[" ".join(c[0]) for c in CONFIG_ERRORS])
def test_config_error_is_one_message_naming_the_key_before_anything_is_made(overrides, key, tmp_path):
    proc, out, reached = _run_probed([*SMALL, *overrides], tmp_path)
    _assert_one_clean_error(proc, key, out)
    assert not (tmp_path / "cache").exists()  # nothing generated, loaded or cached
    # nothing was fetched or built before the error: no hub look-up, no connection, no model
    assert reached["try_to_load_from_cache"] == reached["hf_hub_download"] == 0, reached
    assert reached["snapshot_download"] == reached["connect"] == 0, reached
    assert not reached["modeling"], reached
    # the failed run keeps its log, with the error in it
    log = (out / "__main__.log").read_text()
    assert key in log and "ERROR" in log


@pytest.mark.parametrize("overrides,key", [
    (["data.kind=foo"], "data.kind"), (["solver.cv=loocv"], "solver.cv"),
    (["solver.dtype=float16"], "solver.dtype"), (["solver.strategy=tpu"], "solver.strategy"),
    (["model=gpt2", "model.layr=3"], "model.layr"),
    (["target.kind=frame"], "target.kind"), (["model=wav2vec2", "model.pooling=max"], "model.pooling"),
])
def test_schema_errors_are_hydras_one_liner(overrides, key, tmp_path):
    proc, out = run_cli(overrides, tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and key in text
    assert "Traceback" not in text
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_offline_hub_checkpoint_fails_at_once_with_the_current_cli(tmp_path):
    proc, out, reached = _run_probed([*SMALL, "model=gpt2", "model.checkpoint=gpurecon-tests/not-cached"], tmp_path)
    _assert_one_clean_error(proc, "model.checkpoint", out)
    text = proc.stdout + proc.stderr
    assert "hf download gpurecon-tests/not-cached" in text and "huggingface-cli" not in text
    assert text.count("not in the local Hugging Face cache") == 1
    assert not (tmp_path / "cache").exists()
    # at once: one look-up in the local hub cache, no download attempt, no retries, no network
    assert reached["try_to_load_from_cache"] == 1, reached
    assert reached["hf_hub_download"] == reached["snapshot_download"] == reached["connect"] == 0, reached
    assert not reached["modeling"], reached


def _blocked_folder(tmp_path, how):
    """A folder the run cannot write: read-only by mode (not for root), or under a file."""
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "sub"
    (tmp_path / "a_file").write_text("not a folder")
    return tmp_path / "a_file" / "sub"


@pytest.mark.parametrize("how", ["chmod", "under_a_file"])
def test_unwritable_output_folder_is_one_line(how, tmp_path):
    folder = _blocked_folder(tmp_path, how)
    proc, _ = run_cli([*SMALL, f"hydra.run.dir={folder}"], tmp_path)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in text
    assert "hydra.run.dir" in text and str(folder) in text
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("how", ["chmod", "under_a_file"])
def test_unwritable_cache_dir_is_one_message(how, tmp_path):
    folder = _blocked_folder(tmp_path, how)
    proc, out = run_cli([*SMALL, f"cache_dir={folder}"], tmp_path)
    _assert_one_clean_error(proc, "cache_dir", out)


def test_failed_rerun_keeps_what_it_did_not_create(tmp_path):
    """A bad run into a folder holding the user's notes deletes nothing (overwrite=true lets it
    into the folder; without it the run is refused before anything is written)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("notes")
    proc, _ = run_cli([*SMALL, "subject=99", f"hydra.run.dir={mine}", "overwrite=true"], tmp_path)
    assert proc.returncode == 1
    assert (mine / "notes.txt").read_text() == "notes"
    assert "subject" in (mine / "__main__.log").read_text()


@pytest.mark.parametrize("stage", ["generation", "solver"])
def test_ctrl_c_is_one_line_exit_130_and_no_result_files(stage, tmp_path):
    """SIGINT (Ctrl-C) at a known point (the test hook sends it to the run itself)."""
    proc, out = run_cli([*SMALL, "data.n_words=30"], tmp_path,
                        env_extra={"GPURECON_TEST_KILL_AT": stage, "GPURECON_TEST_KILL_SIGNAL": "INT"})
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "KeyboardInterrupt" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if "interrupted" in line]) == 1
    assert result_files(out) == []
    assert temp_leftovers(tmp_path) == []   # the generator's temp folder and the staging are gone


def test_a_bug_leaves_no_result_files(tmp_path, monkeypatch):
    """An unexpected exception propagates (a traceback is fine) but the staging is discarded."""
    from gpurecon import experiment

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a stage")

    monkeypatch.setattr(experiment, "evaluate_fit", broken)
    cfg = _compose(["device=cpu", "data.n_channels=2", "data.n_words=12", "progress=false",
                    f"cache_dir={tmp_path / 'cache'}"])
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="a bug"):
        experiment.run(cfg, out)
    assert result_files(out) == ["notes.txt"] and temp_leftovers(out) == []


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    from gpurecon.data import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("ds") / "ibids", subjects=(3,), seed=2,
                                   n_channels=3, n_words=12, audio_sfreq=8000.0)


@pytest.mark.parametrize("overrides,key", [
    (["target.window=3.5"], "target.window"),                 # longer than the 3 s trial spacing
    (["solver.cv=kfold", "solver.n_splits=13"], "solver.n_splits"),   # 12 trials
    (["subject=4"], "subject"),                               # not in participants.tsv
])
def test_dataset_dependent_errors_name_the_key(overrides, key, dataset_root, tmp_path):
    """With data.root the recording decides: checked right after loading, before any filtering."""
    proc, out = run_cli([f"data.root={dataset_root}", "subject=3", "device=cpu", *overrides], tmp_path)
    _assert_one_clean_error(proc, key, out)
    assert not list((tmp_path / "cache").glob("targets/*.npz"))


@pytest.mark.parametrize("layer,ok", [(3, True), (-4, True), ("last", True), (4, False), (-5, False)])
def test_layer_range_is_checked_from_a_local_config_without_weights(tmp_path, layer, ok):
    """A local checkpoint folder holding only config.json (3 blocks: layers -4..3): the range
    is read from it at start-up, before any weights exist or are loaded."""
    from omegaconf import OmegaConf
    from transformers import GPT2Config

    from gpurecon.errors import ModelError
    from gpurecon.embeddings.stage import check_checkpoint

    GPT2Config(n_layer=3, n_embd=8, n_head=2).save_pretrained(tmp_path / "ckpt")
    cfg = OmegaConf.create({"name": "gpt2", "checkpoint": str(tmp_path / "ckpt"), "layer": layer})
    if ok:
        check_checkpoint(cfg)
    else:
        with pytest.raises(ModelError, match=rf"model.layer={layer} .*3 blocks.* -4..3"):
            check_checkpoint(cfg)
