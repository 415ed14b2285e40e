"""Device selection, and CPU-vs-CUDA agreement of every numeric stage (CUDA parts skip here)."""

import numpy as np
import pytest
import torch

from gpurecon.device import describe_device, resolve_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_auto_and_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert describe_device(torch.device("cpu")) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_a_gpu_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="device='cuda'.*no CUDA"):
        resolve_device("cuda")


@pytest.mark.parametrize("bad", ["gpu", "tpu", 3])
def test_unknown_device_names_the_choices(bad):
    with pytest.raises(ValueError, match="auto.*cpu.*cuda"):
        resolve_device(bad)


@CUDA
def test_solver_cuda_matches_cpu_and_sklearn():
    from sklearn.linear_model import ElasticNet as SkEnet

    from gpurecon.solver import cross_val_predict, leave_one_out

    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 80))
    Y = X[:, :5] @ rng.normal(size=(5, 7)) + rng.normal(size=(30, 7))
    cpu = cross_val_predict(X, Y, 0.1, 0.5, device="cpu").predictions
    gpu = cross_val_predict(X, Y, 0.1, 0.5, device="cuda").predictions
    assert gpu.device.type == "cuda"
    scale = np.abs(Y).max()
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-3 * scale)
    masks = leave_one_out(30)
    ref = np.stack([SkEnet(alpha=0.1, l1_ratio=0.5, tol=1e-8, max_iter=100000)
                    .fit(X[m], Y[m]).predict(X[~m])[0] for m in masks])
    np.testing.assert_allclose(gpu[0].cpu().numpy(), ref, atol=1e-3 * scale)


@CUDA
def test_gpt2_tiny_cuda_matches_cpu(tmp_path):
    from gpurecon.cache import Cache
    from gpurecon.data import write_synthetic_dataset, load_subject
    from gpurecon.embeddings import get_embedder

    root = write_synthetic_dataset(tmp_path / "ds", n_channels=4, n_words=10, audio_sfreq=8000.0)
    rec = load_subject(root, 1)
    cache = Cache(tmp_path / "cache")
    cpu = get_embedder("gpt2", checkpoint="tiny").embed(rec, device="cpu", cache=None).X
    gpu = get_embedder("gpt2", checkpoint="tiny").embed(rec, device="cuda", cache=cache).X
    assert gpu.device.type == "cuda"
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=1e-4)
