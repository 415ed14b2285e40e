"""Stage 1: read SingleWordProductionDutch-iBIDS (or its synthetic twin) into a :class:`Recording`.

``load_subject(root, subject)`` reads and cross-checks one participant; ``write_synthetic_dataset``
writes a dataset in the same layout with a planted encoding model, ``load_ground_truth`` reads
that model back.
"""

from .ibids import LAYOUT, available_subjects, load_subject, subject_id
from .recording import Recording, Trials
from .words import WORDS

__all__ = ["LAYOUT", "Recording", "Trials", "WORDS", "available_subjects", "load_ground_truth",
           "load_subject", "subject_id", "write_synthetic_dataset"]


def __getattr__(name: str):
    # Imported lazily so that `python -m gpurecon.data.synthetic` does not find the module
    # already imported (runpy warns about that) and `import gpurecon.data` stays light.
    if name in ("write_synthetic_dataset", "load_ground_truth"):
        from . import synthetic
        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
