"""``model.layer`` spelled two ways is one setting: Wav2Vec2's config default is the string
"23", the command line gives the integer 23; resume/overwrite (run_folder) and the report must
treat them as the same run, and different layers as different runs."""

from types import SimpleNamespace

from gpurecon.report.settings import result_settings
from gpurecon.run_folder import differences, settings


def _cfg(layer):
    return {"model": {"name": "wav2vec2", "layer": layer, "checkpoint": "tiny"}, "subject": 1}


def test_run_folder_sees_one_layer_in_two_spellings_and_two_layers_as_different():
    assert differences(settings(_cfg("23")), settings(_cfg(23))) == []
    assert differences(settings(_cfg(["Last", "3"])), settings(_cfg(["last", 3]))) == []
    assert differences(settings(_cfg("23")), settings(_cfg(22))) == ["model.layer: 23 there, 22 asked"]


def _run(layer):
    summary = {"config": _cfg(layer), "solver": {}}
    return SimpleNamespace(_cache={}, summary=summary, data="synthetic",
                           _get=lambda *keys, default=None: default)


def test_report_settings_see_one_layer_in_two_spellings():
    a, b, c = result_settings(_run("23")), result_settings(_run(23)), result_settings(_run(12))
    assert a == b
    assert a["model.layer"] != c["model.layer"]
