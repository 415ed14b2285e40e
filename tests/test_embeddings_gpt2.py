"""GPT-2 embeddings against direct transformers calls on the tiny offline model."""

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from _embeddings_helpers import fresh_cache, make_recording, shared_models
from gpurecon.embeddings import get_embedder
from gpurecon.embeddings.tiny import build_gpt2
from gpurecon.errors import DataError, ModelError

CPU = torch.device("cpu")
# In-vocabulary, out-of-vocabulary (several tokens), a numeral, the clitic, a repeat.
WORDS = ["hond", "vliegtuigje", "12", "'s", "fiets", "hond", "Zwaluwstaartvlinder"]


@functools.lru_cache(maxsize=1)
def _reference_model():
    folder = build_gpt2(shared_models(), "tiny")
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def _direct(words, layer):
    """Reference: each word alone through transformers, mean over its tokens."""
    tok, model = _reference_model()
    rows = []
    with torch.no_grad():
        for w in words:
            ids = torch.tensor([tok(w, add_special_tokens=False)["input_ids"]])
            out = model(input_ids=ids, output_hidden_states=True)
            if layer == "last":
                rows.append(out.last_hidden_state[0].mean(0))
            elif layer == "all":
                rows.append(torch.stack(out.hidden_states)[:, 0].mean(1))
            else:
                rows.append(out.hidden_states[layer][0].mean(0))
    return torch.stack(rows, dim=-2)


@pytest.mark.parametrize("layer", ["last", 2, -3, "all"])
def test_pooled_hidden_states_equal_direct_transformers_call(tmp_path, layer):
    rec = make_recording(WORDS)
    out = get_embedder("gpt2", checkpoint="tiny", layer=layer, batch_size=3).embed(
        rec, device=CPU, cache=fresh_cache(tmp_path))
    ref = _direct(WORDS, layer)
    assert out.X.dtype == torch.float32 and out.X.device == CPU
    assert out.X.shape == ref.shape
    torch.testing.assert_close(out.X, ref, rtol=0, atol=1e-5)
    assert out.meta["untrained"] is True and out.meta["dim"] == ref.shape[-1]
    if layer == "all":
        assert out.meta["layer"] == "all" and out.meta["n_layers"] == ref.shape[0]


def test_word_alone_equals_word_in_padded_batch(tmp_path):
    cache = None  # no cache: both calls must compute
    alone = get_embedder("gpt2", checkpoint="tiny", batch_size=1).embed(
        make_recording(["hond"]), device=CPU, cache=cache).X
    # "hond" is one token; the longest word forces 5+ tokens of padding around it.
    batch = get_embedder("gpt2", checkpoint="tiny", batch_size=64, layer="last").embed(
        make_recording(["Zwaluwstaartvlinder", "hond", "vliegtuigje"]), device=CPU, cache=cache).X
    torch.testing.assert_close(batch[1], alone[0], rtol=0, atol=1e-5)
    one_by_one = get_embedder("gpt2", checkpoint="tiny", batch_size=1).embed(
        make_recording(WORDS), device=CPU, cache=cache).X
    batched = get_embedder("gpt2", checkpoint="tiny", batch_size=7).embed(
        make_recording(WORDS), device=CPU, cache=cache).X
    torch.testing.assert_close(batched, one_by_one, rtol=0, atol=1e-5)
    torch.testing.assert_close(batched[0], batched[5])  # the repeated word, trial order kept


def test_layer_out_of_range_states_the_valid_range(tmp_path):
    emb = get_embedder("gpt2", checkpoint="tiny", layer=5)  # tiny GPT-2 has 4 blocks
    with pytest.raises(ModelError, match=r"model\.layer=5 .*-5\.\.4"):
        emb.embed(make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))


def test_hub_checkpoint_missing_offline_names_it_and_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    name = "gpurecon-tests/no-such-model-cached"
    emb = get_embedder("gpt2", checkpoint=name)
    with pytest.raises(ModelError) as err:
        emb.embed(make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))
    text = str(err.value)
    assert name in text and "hf download" in text and "model.checkpoint=" in text


def test_missing_local_checkpoint_path(tmp_path):
    with pytest.raises(ModelError, match="no such file or folder"):
        get_embedder("gpt2", checkpoint=str(tmp_path / "nowhere")).embed(
            make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))


@pytest.mark.parametrize("params, field", [
    (dict(layer="middle"), "layer"), (dict(batch_size=0), "batch_size"), (dict(dtype="float64"), "dtype")])
def test_bad_parameters(params, field):
    with pytest.raises(ValueError, match=field):
        get_embedder("gpt2", checkpoint="tiny", **params)


def test_half_precision_is_refused_on_cpu(tmp_path):
    emb = get_embedder("gpt2", checkpoint="tiny", dtype="float16")
    with pytest.raises(ValueError, match="CUDA"):
        emb.embed(make_recording(WORDS), device=CPU, cache=fresh_cache(tmp_path))


def test_empty_word_names_the_trial(tmp_path):
    with pytest.raises(DataError, match="trial 1"):
        get_embedder("gpt2", checkpoint="tiny").embed(
            make_recording(["hond", " "]), device=CPU, cache=fresh_cache(tmp_path))


def test_cached_hub_checkpoint_loads_offline_at_its_commit(tmp_path):
    """A hub name found in the local hub cache (offline) loads through the hub path and is
    identified by its commit; its vectors equal the same files loaded as a local folder."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--gpurecon-tests--tiny-gpt2"
    shutil.copytree(build_gpt2(shared_models(), "tiny"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "import sys, numpy as np, torch\n"
        "torch.set_num_threads(%d)\n"   # the same reduction order as this process's forward pass
        "sys.path.insert(0, sys.argv[2])\n"
        "from _embeddings_helpers import make_recording\n"
        "from gpurecon.embeddings import get_embedder\n"
        "out = get_embedder('gpt2', checkpoint='gpurecon-tests/tiny-gpt2').embed(\n"
        "    make_recording(%r), torch.device('cpu'), None)\n"
        "assert out.meta['revision'] == %r, out.meta\n"
        "assert out.meta['checkpoint_id'] == 'hub:gpurecon-tests/tiny-gpt2@' + %r\n"
        "np.save(sys.argv[1], out.X.numpy())\n") % (torch.get_num_threads(), WORDS, commit, commit)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "X.npy"), str(Path(__file__).parent)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    local = get_embedder("gpt2", checkpoint=str(repo / "snapshots" / commit)).embed(
        make_recording(WORDS), device=CPU, cache=None)
    np.testing.assert_array_equal(np.load(tmp_path / "X.npy"), local.X.numpy())
