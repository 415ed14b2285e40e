"""A checkpoint folder never runs its own code, and never runs on weights it does not have.

Issue 17 section 1: a local folder whose config.json has ``auto_map`` made transformers ask
"Do you wish to run the custom code? [y/N]" and, answered ``y``, import the folder's .py file;
a GPT-2 folder relabelled ``model_type: bert`` (or one with missing / foreign weights) ran on
freshly initialised weights and was reported as trained. Each case here is built from the
offline tiny model, tampered with as an attacker or a broken download would, and run both
through the embedder and through ``python -m gpurecon`` answering ``y`` on stdin.
"""

from __future__ import annotations

import builtins
import json
import shutil
from pathlib import Path

import pytest
import torch

from _cli_helpers import SMALL, cli_env, result_files, temp_leftovers
from _embeddings_helpers import fresh_cache, make_recording, shared_models
from gpurecon.embeddings import get_embedder
from gpurecon.embeddings.checkpoints import (check_checkpoint_config, check_loading_info,
                                             load_pretrained, resolve_local)
from gpurecon.embeddings.tiny import build_gpt2, build_wav2vec2
from gpurecon.errors import ModelError

CPU = torch.device("cpu")
WORDS = ["huis", "fiets", "negen", "'s"]

# Imported by transformers only if it runs the folder's code: it leaves a marker file.
EVIL = """\
import pathlib
pathlib.Path({marker!r}).write_text("custom code ran")
from transformers import GPT2Config, GPT2Model


class EvilConfig(GPT2Config):
    model_type = "evil-gpt2"


class EvilModel(GPT2Model):
    config_class = EvilConfig
"""


def tiny_copy(tmp_path: Path, kind: str = "gpt2") -> Path:
    """A private copy of the offline tiny model folder (save_pretrained files) to tamper with."""
    build = build_gpt2 if kind == "gpt2" else build_wav2vec2
    return Path(shutil.copytree(build(shared_models(), "tiny"), tmp_path / f"ckpt-{kind}"))


def edit_config(folder: Path, **fields) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(fields)
    (folder / "config.json").write_text(json.dumps(config))


def with_custom_code(folder: Path, marker: Path, model_type: str | None = "evil-gpt2") -> Path:
    """The attack of the issue: auto_map pointing at a .py in the folder; with an unknown
    model_type transformers has no local class and would ask to run the folder's code."""
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    if model_type is None:
        config.pop("model_type", None)
    else:
        config["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def edit_weights(folder: Path, drop: str | None = None, add: dict | None = None) -> None:
    """Rewrite model.safetensors without the tensor ``drop`` and/or with extra tensors."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    if drop is not None:
        del tensors[drop]
    tensors.update(add or {})
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture
def answer_yes(monkeypatch):
    """Any prompt inside the process is answered "y", as `yes y | python -m gpurecon` would."""
    monkeypatch.setattr(builtins, "input", lambda *a, **k: "y")


# ----------------------------------------------------------------------------- custom code

@pytest.mark.parametrize("model_type", ["evil-gpt2", None, "gpt2"])
def test_custom_code_folder_is_refused_before_anything_runs(tmp_path, answer_yes, model_type):
    marker = tmp_path / "PWNED"
    folder = with_custom_code(tiny_copy(tmp_path), marker, model_type)
    with pytest.raises(ModelError, match=r"model.checkpoint=.*auto_map.*never runs code"):
        check_checkpoint_config("gpt2", str(folder))
    with pytest.raises(ModelError, match="auto_map"):
        get_embedder("gpt2", checkpoint=str(folder)).embed(make_recording(WORDS), CPU,
                                                           fresh_cache(tmp_path))
    assert not marker.exists()


def test_loader_itself_never_trusts_remote_code(tmp_path, answer_yes):
    """Past the start-up check (as if it were skipped), every from_pretrained still refuses
    to import the folder's code, even with "y" answered to any prompt."""
    marker = tmp_path / "PWNED"
    folder = with_custom_code(tiny_copy(tmp_path), marker)
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    ckpt = resolve_local(str(folder), "gpt2")
    with pytest.raises(ModelError, match="could not be loaded"):
        load_pretrained(ckpt, str(folder), "gpt2", AutoTokenizer, AutoModel, CPU, torch.float32)
    from gpurecon.embeddings.checkpoints import n_blocks_without_weights

    assert n_blocks_without_weights("gpt2", str(folder), None) is None
    with pytest.raises(ValueError):
        AutoConfig.from_pretrained(folder, trust_remote_code=False)  # what the code relies on
    assert not marker.exists()


def test_custom_code_in_the_tokenizer_config_is_refused(tmp_path, answer_yes):
    folder = tiny_copy(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"tokenizer_config.json declares custom code"):
        check_checkpoint_config("gpt2", str(folder))


def run_cli_answering_yes(args, tmp_path: Path):
    import subprocess
    import sys

    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "gpurecon", *args, f"hydra.run.dir={out}"],
                          cwd=tmp_path, env=cli_env(tmp_path), input="y\n" * 20,
                          capture_output=True, text=True, timeout=600)
    return proc, out


def assert_one_error(proc, out: Path, *needles: str) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    errors = [line for line in text.splitlines() if "[ERROR]" in line]
    assert len(errors) == 1, text[-3000:]
    for needle in ("model.checkpoint", *needles):
        assert needle in errors[0], errors[0]
    assert result_files(out) == [] and temp_leftovers(out) == []
    return errors[0]


def test_cli_refuses_custom_code_with_yes_on_stdin(tmp_path):
    marker = tmp_path / "PWNED"
    folder = with_custom_code(tiny_copy(tmp_path), marker)
    proc, out = run_cli_answering_yes([*SMALL, "model=gpt2", f"model.checkpoint={folder}"], tmp_path)
    assert_one_error(proc, out, "auto_map")
    assert not marker.exists()
    assert not (tmp_path / "cache").exists()   # refused at start-up: no data generated or read
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- wrong weights

@pytest.mark.parametrize("kind, wrong", [("gpt2", "bert"), ("gpt2", "wav2vec2"),
                                         ("wav2vec2", "hubert"), ("wav2vec2", "gpt2")])
def test_model_type_of_another_architecture_is_refused(tmp_path, kind, wrong):
    folder = tiny_copy(tmp_path, kind)
    check_checkpoint_config(kind, str(folder))   # the untouched copy passes
    edit_config(folder, model_type=wrong)
    with pytest.raises(ModelError, match=rf"model_type '{wrong}'; model={kind} loads model_type '{kind}'"):
        check_checkpoint_config(kind, str(folder))


def test_relabelled_gpt2_would_load_random_weights_and_the_loader_refuses(tmp_path):
    """Past the config check, loading reports the BertModel's weights as missing: refused."""
    from transformers import AutoModel, AutoTokenizer

    folder = tiny_copy(tmp_path)
    edit_config(folder, model_type="bert", hidden_size=32, num_attention_heads=4,
                num_hidden_layers=1, intermediate_size=64)
    with pytest.raises(ModelError, match=r"missing \(left at random initialisation\)"):
        load_pretrained(resolve_local(str(folder), "gpt2"), str(folder), "gpt2", AutoTokenizer,
                        AutoModel, CPU, torch.float32)


def test_missing_weight_is_refused_naming_the_key(tmp_path):
    folder = tiny_copy(tmp_path)
    edit_weights(folder, drop="h.1.mlp.c_fc.weight")
    with pytest.raises(ModelError, match=r"1 weight\(s\) missing .*h\.1\.mlp\.c_fc\.weight"):
        get_embedder("gpt2", checkpoint=str(folder)).embed(make_recording(WORDS), CPU, None)


def test_unexpected_weight_is_refused_naming_the_key(tmp_path):
    folder = tiny_copy(tmp_path)
    edit_weights(folder, add={"pooler.dense.weight": torch.zeros(4, 4)})
    with pytest.raises(ModelError, match=r"unexpected .*pooler\.dense\.weight"):
        get_embedder("gpt2", checkpoint=str(folder)).embed(make_recording(WORDS), CPU, None)


def test_pretraining_heads_of_the_same_architecture_are_accepted(tmp_path):
    """The study's XLS-R checkpoint is a Wav2Vec2ForPreTraining (legacy weight-norm names):
    its quantizer and projections are not weights of Wav2Vec2Model, yet every weight the
    model uses comes from the file: accepted, and the same embeddings as the bare model."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

    folder = tiny_copy(tmp_path, "wav2vec2")
    config = Wav2Vec2Config.from_pretrained(folder)
    base = get_embedder("wav2vec2", checkpoint=str(folder), window=0.5, pooling="mean")
    rec = make_recording(WORDS)
    expected = base.embed(rec, CPU, None).X
    full = Wav2Vec2ForPreTraining(config)
    full.wav2vec2.load_state_dict(_state(folder))
    full.save_pretrained(folder)
    # ... written as fairseq-era checkpoints are: weight-norm parts named weight_g / weight_v
    legacy = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v
              for k, v in _state(folder).items()}
    assert any(k.endswith("weight_g") for k in legacy)
    from safetensors.torch import save_file

    save_file(legacy, folder / "model.safetensors", metadata={"format": "pt"})
    got = get_embedder("wav2vec2", checkpoint=str(folder), window=0.5, pooling="mean").embed(rec, CPU, None)
    torch.testing.assert_close(got.X, expected)


def test_gpt2_lm_head_checkpoint_with_old_mask_buffers_is_accepted(tmp_path):
    """The hub's ``gpt2`` / ``GroNLP/gpt2-small-dutch`` are GPT2LMHeadModel checkpoints
    (``transformer.`` prefix, tied lm_head) and old ones carry the causal-mask buffers
    ``attn.bias``: every weight GPT2Model uses is there, so they load, with the same output."""
    from transformers import GPT2LMHeadModel

    folder = tiny_copy(tmp_path)
    rec = make_recording(WORDS)
    expected = get_embedder("gpt2", checkpoint=str(folder)).embed(rec, CPU, None).X
    GPT2LMHeadModel.from_pretrained(folder).save_pretrained(folder)
    n_layer = json.loads((folder / "config.json").read_text())["n_layer"]
    edit_weights(folder, add={f"transformer.h.{i}.attn.bias": torch.ones(1, 1, 4, 4)
                              for i in range(n_layer)})
    assert any(k.startswith("transformer.") for k in _state(folder))
    got = get_embedder("gpt2", checkpoint=str(folder)).embed(rec, CPU, None).X
    torch.testing.assert_close(got, expected)


def _state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_loading_report_check_in_isolation():
    clean = {"missing_keys": [], "unexpected_keys": ["quantizer.codevectors"], "mismatched_keys": [],
             "error_msgs": []}
    check_loading_info(clean, "wav2vec2", "x", "x")
    with pytest.raises(ModelError, match="quantizer"):
        check_loading_info(clean, "gpt2", "x", "x")     # not a GPT-2 head
    with pytest.raises(ModelError, match=r"mismatched shape: wte.weight"):
        check_loading_info({**clean, "unexpected_keys": [],
                            "mismatched_keys": [("wte.weight", (3, 2), (4, 2))]}, "gpt2", "x", "x")


@pytest.mark.parametrize("tamper, needle", [
    ("model_type", "model_type 'bert'"),
    ("missing", "h.0.attn.c_attn.weight"),
    ("unexpected", "extra.weight"),
])
def test_cli_refuses_wrong_weights_with_one_message(tmp_path, tamper, needle):
    folder = tiny_copy(tmp_path)
    if tamper == "model_type":
        edit_config(folder, model_type="bert")
    elif tamper == "missing":
        edit_weights(folder, drop="h.0.attn.c_attn.weight")
    else:
        edit_weights(folder, add={"extra.weight": torch.ones(3)})
    proc, out = run_cli_answering_yes([*SMALL, "model=gpt2", f"model.checkpoint={folder}"], tmp_path)
    assert_one_error(proc, out, needle)
    if tamper == "model_type":
        assert not (tmp_path / "cache").exists()   # a config check: before any data
