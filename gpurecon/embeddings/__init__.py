"""Stage 3: one vector per word trial from FastText, GPT-2, Wav2Vec 2.0 XLS-R, or the planted truth.

::

    from gpurecon.embeddings import get_embedder
    out = get_embedder("gpt2", checkpoint="tiny").embed(recording, device=device, cache=cache)
    out.X, out.meta

``checkpoint="tiny"`` selects deterministic untrained offline models (see :mod:`.tiny`).
Model modules (transformers, gensim) are imported only when their embedder is built.
"""

from .base import MODEL_NAMES, Embedder, Embeddings, get_embedder

__all__ = ["MODEL_NAMES", "Embedder", "Embeddings", "get_embedder"]
