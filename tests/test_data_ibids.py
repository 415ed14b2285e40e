"""load_subject's cross-checks and bad-input errors, on corrupted copies of a small synthetic dataset."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from gpurecon.data import load_subject, subject_id, write_synthetic_dataset
from gpurecon.data.ibids import decode_strings
from gpurecon.errors import DataError, GpureconError

SUB = "sub-02"
STEM = f"{SUB}_task-wordProduction"
N_CHANNELS, N_WORDS = 6, 8


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("ibids") / "ds", subjects=(2, 4), seed=1,
                                   n_channels=N_CHANNELS, n_words=N_WORDS, audio_sfreq=8000.0)


@pytest.fixture
def ds(pristine, tmp_path) -> Path:
    """A private copy to corrupt."""
    return Path(shutil.copytree(pristine, tmp_path / "ds"))


def path(root: Path, suffix: str) -> Path:
    return root / SUB / "ieeg" / f"{STEM}_{suffix}"


def read_tsv(p: Path) -> pd.DataFrame:
    return pd.read_csv(p, sep="\t", keep_default_na=False, dtype=str)


def write_tsv(p: Path, df: pd.DataFrame) -> None:
    df.to_csv(p, sep="\t", index=False)


def edit_json(p: Path, **fields) -> None:
    obj = json.loads(p.read_text())
    obj.update(fields)
    p.write_text(json.dumps(obj))


def replace_dataset(nwb: Path, name: str, data: np.ndarray) -> None:
    """Rewrite one NWB acquisition's data array with h5py, keeping its attributes."""
    with h5py.File(nwb, "r+") as f:
        old = f[f"acquisition/{name}/data"]
        attrs = dict(old.attrs)
        del f[f"acquisition/{name}/data"]
        new = f.create_dataset(f"acquisition/{name}/data", data=data)
        for k, v in attrs.items():
            new.attrs[k] = v


def raises(root, match: str, subject=SUB) -> DataError:
    with pytest.raises(DataError, match=match) as info:
        load_subject(root, subject)
    assert isinstance(info.value, GpureconError)
    return info.value


# ----------------------------------------------------------------------------- subject ids

@pytest.mark.parametrize("given", [2, "2", "02", "sub-02", np.int64(2), " sub-02 "])
def test_subject_id_accepts_numbers_and_bids_ids(given, pristine):
    assert subject_id(given) == "sub-02"
    assert subject_id(given, pristine) == "sub-02"


@pytest.mark.parametrize("given", ["abc", 0, -1, True, 2.0, "sub-", None])
def test_subject_id_rejects_malformed(given):
    with pytest.raises(DataError, match="subject"):
        subject_id(given)


def test_subject_out_of_range_lists_valid_subjects(pristine):
    err = raises(pristine, "participants.tsv", subject=3)
    assert "sub-02" in str(err) and "sub-04" in str(err) and "sub-03" in str(err)


def test_subject_out_of_range_without_participants_uses_folders(ds):
    (ds / "participants.tsv").unlink()
    err = raises(ds, "folders", subject=7)
    assert "sub-02, sub-04" in str(err)
    assert load_subject(ds, 4).subject == "sub-04"


# ----------------------------------------------------------------------------- missing inputs

def test_missing_root_explains_layout_and_synthetic(tmp_path):
    err = raises(tmp_path / "nowhere", "does not exist")
    assert "python -m gpurecon.data.synthetic" in str(err) and "task-wordProduction_ieeg.nwb" in str(err)


def test_missing_subject_folder(ds):
    shutil.rmtree(ds / SUB)
    err = raises(ds, "subject folder")
    assert str(ds / SUB) in str(err) and "data=synthetic" in str(err)


@pytest.mark.parametrize("suffix", ["ieeg.nwb", "ieeg.json", "channels.tsv", "events.tsv",
                                    "space-ACPC_electrodes.tsv"])
def test_missing_file_lists_what_was_looked_for(ds, suffix):
    path(ds, suffix).unlink()
    err = raises(ds, "missing")
    assert "looked for" in str(err) and str(path(ds, suffix)) in str(err)
    assert "gpurecon.data.synthetic" in str(err)


def test_electrodes_name_without_task_is_accepted(ds, pristine):
    path(ds, "space-ACPC_electrodes.tsv").rename(ds / SUB / "ieeg" / f"{SUB}_space-ACPC_electrodes.tsv")
    rec = load_subject(ds, SUB)
    np.testing.assert_array_equal(rec.coords, load_subject(pristine, SUB).coords)
    assert rec.files["electrodes"].name == f"{SUB}_space-ACPC_electrodes.tsv"


def test_electrodes_merge_on_name_with_missing_and_extra_contacts(ds):
    p = path(ds, "space-ACPC_electrodes.tsv")
    electrodes = read_tsv(p)
    names = read_tsv(path(ds, "channels.tsv"))["name"].tolist()
    dropped = names[2]
    shuffled = electrodes[electrodes.name != dropped].iloc[::-1]       # order must not matter
    write_tsv(p, shuffled)
    rec = load_subject(ds, SUB)
    reference = electrodes.set_index("name")[["x", "y", "z"]].astype(float)
    for c, name in enumerate(names):
        if name == dropped:
            assert np.isnan(rec.coords[c]).all()
        else:
            np.testing.assert_array_equal(rec.coords[c], reference.loc[name].to_numpy())


# ----------------------------------------------------------------------------- damaged NWB

def test_garbage_nwb(ds):
    path(ds, "ieeg.nwb").write_bytes(np.random.default_rng(0).bytes(4096))
    err = raises(ds, "not an HDF5")
    assert "ieeg.nwb" in str(err)


def test_truncated_nwb(ds):
    nwb = path(ds, "ieeg.nwb")
    data = nwb.read_bytes()
    nwb.write_bytes(data[: len(data) // 3])
    err = raises(ds, "truncated")
    assert "ieeg.nwb" in str(err)


def test_nwb_without_an_acquisition(ds):
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        del f["acquisition/Audio"]
    err = raises(ds, "acquisition")
    assert "Audio" in str(err) and "iEEG" in str(err)


def test_stimulus_length_must_match_ieeg(ds):
    with h5py.File(path(ds, "ieeg.nwb"), "r") as f:
        stim = f["acquisition/Stimulus/data"][()]
    replace_dataset(path(ds, "ieeg.nwb"), "Stimulus", stim[:-10])
    raises(ds, "Stimulus has")


def test_stimulus_as_bytes_is_decoded():
    out = decode_strings(np.array([b"huis", b"", b"'s", "zee".encode()], dtype=object))
    assert out.tolist() == ["huis", "", "'s", "zee"] and out.dtype.kind == "U"
    assert decode_strings(np.array([b"9 ", b"12"])).tolist() == ["9", "12"]
    assert decode_strings(np.array(["caf\u00e9".encode()], dtype=object)).tolist() == ["caf\u00e9"]


# ----------------------------------------------------------------------------- channels

def test_channels_tsv_row_count_must_match_nwb_columns(ds):
    p = path(ds, "channels.tsv")
    write_tsv(p, read_tsv(p).iloc[:-1])
    err = raises(ds, "columns")
    assert "channels.tsv" in str(err) and f"{N_CHANNELS - 1} channels" in str(err)


def test_seeg_channel_count_in_ieeg_json_is_checked(ds):
    edit_json(path(ds, "ieeg.json"), SEEGChannelCount=N_CHANNELS + 3)
    err = raises(ds, "SEEGChannelCount")
    assert "ieeg.json" in str(err)


def test_duplicate_channel_names(ds):
    p = path(ds, "channels.tsv")
    df = read_tsv(p)
    df.loc[1, "name"] = df.loc[0, "name"]
    write_tsv(p, df)
    raises(ds, "duplicate channel")


def test_nan_samples_name_the_channels(ds):
    names = read_tsv(path(ds, "channels.tsv"))["name"].tolist()
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        data = f["acquisition/iEEG/data"]
        data[100, 1] = np.nan
        data[5, 4] = np.inf
    err = raises(ds, "NaN or infinite")
    assert names[1] in str(err) and names[4] in str(err) and names[0] not in str(err).split(":")[-1]


def test_flat_channel_warns_and_is_marked_bad(ds):
    names = read_tsv(path(ds, "channels.tsv"))["name"].tolist()
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        data = f["acquisition/iEEG/data"]
        column = np.full(data.shape[0], 3.5, dtype=data.dtype)
        data[:, 3] = column
    with pytest.warns(UserWarning, match="flat") as record:
        rec = load_subject(ds, SUB)
    assert any(names[3] in str(w.message) for w in record)
    assert rec.bad_channels == [names[3]]
    assert rec.good_channels.tolist() == [i != 3 for i in range(N_CHANNELS)]


def test_clean_dataset_loads_without_warnings(pristine):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = load_subject(pristine, SUB)
    assert rec.bad_channels == []


def mark_status(root: Path, rows: dict[int, str]) -> list[str]:
    """Set channels.tsv ``status`` of the given rows; return the channel names."""
    p = path(root, "channels.tsv")
    df = read_tsv(p)
    for row, value in rows.items():
        df.loc[row, "status"] = value
    write_tsv(p, df)
    return df["name"].tolist()


def test_status_bad_channels_are_excluded_with_their_reason(ds, pristine):
    names = mark_status(ds, {1: "bad", 4: "BAD", 2: "n/a", 3: ""})
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a status is no surprise: no warning, only a log line
        rec = load_subject(ds, SUB)
    assert rec.bad_channels == [names[1], names[4]]
    assert rec.bad_reasons == {names[1]: "status bad in channels.tsv",
                               names[4]: "status bad in channels.tsv"}
    assert rec.good_channels.tolist() == [i not in (1, 4) for i in range(N_CHANNELS)]
    # the data and the coordinates stay complete and aligned by name: the stages drop the rows
    full = load_subject(pristine, SUB)
    np.testing.assert_array_equal(rec.seeg, full.seeg)
    electrodes = read_tsv(path(ds, "space-ACPC_electrodes.tsv")).set_index("name")
    kept = [n for n, ok in zip(rec.channel_names, rec.good_channels) if ok]
    np.testing.assert_array_equal(rec.coords[rec.good_channels],
                                  electrodes.loc[kept, ["x", "y", "z"]].to_numpy(float))


def test_flat_channels_are_found_among_the_status_good_ones(ds):
    names = mark_status(ds, {0: "bad", 3: "bad"})
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        f["acquisition/iEEG/data"][:, 3] = 1.0
        f["acquisition/iEEG/data"][:, 5] = 2.0
    with pytest.warns(UserWarning, match="flat") as record:
        rec = load_subject(ds, SUB)
    assert rec.bad_channels == [names[0], names[3], names[5]]
    assert rec.bad_reasons[names[5]] == "flat (constant signal)"
    assert rec.bad_reasons[names[3]] == "status bad in channels.tsv"   # already out: not tested
    assert any(names[5] in str(w.message) for w in record)
    assert not any(names[3] in str(w.message) for w in record)   # only the unexpected one warned


def test_wild_bad_contacts_do_not_make_the_good_ones_look_flat(ds):
    """The flat test's scale comes from the status-good channels only: a majority of bad
    contacts with huge values must not push the good ones under the flat threshold."""
    names = mark_status(ds, {i: "bad" for i in range(4)})
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        data = f["acquisition/iEEG/data"]
        data[:, :4] = data[:, :4] * 1e15
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rec = load_subject(ds, SUB)
    assert rec.bad_channels == names[:4]


def test_all_channels_bad_is_one_error_naming_the_file_and_column(ds):
    mark_status(ds, {i: "bad" for i in range(N_CHANNELS)})
    err = raises(ds, r"no channel is left for the targets")
    assert str(path(ds, "channels.tsv")) in str(err) and "column status" in str(err)
    assert f"{N_CHANNELS} of {N_CHANNELS} have status bad" in str(err)


def test_the_last_good_channel_flat_leaves_none(ds):
    mark_status(ds, {i: "bad" for i in range(1, N_CHANNELS)})
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        f["acquisition/iEEG/data"][:, 0] = 0.0
    with pytest.warns(UserWarning, match="flat"):
        err = raises(ds, r"no channel is left")
    assert "1 flat (constant signal)" in str(err)


def test_all_channels_flat_is_one_error(ds):
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        data = f["acquisition/iEEG/data"]
        data[...] = np.zeros(data.shape, dtype=data.dtype)
    with pytest.warns(UserWarning, match="flat"):
        raises(ds, rf"no channel is left .* and {N_CHANNELS} flat")


def test_unknown_status_value_names_the_allowed_ones(ds):
    mark_status(ds, {2: "noisy"})
    raises(ds, r"column status line 4 is 'noisy'; allowed values: good, bad, n/a")


# ----------------------------------------------------------------------------- events

@pytest.mark.parametrize("column", ["onset", "trial_type", "value"])
def test_events_missing_column(ds, column):
    p = path(ds, "events.tsv")
    write_tsv(p, read_tsv(p).drop(columns=[column]))
    err = raises(ds, f"missing column\\(s\\) {column}")
    assert "events.tsv" in str(err)


def test_events_without_sample_column_use_onset(ds, pristine):
    p = path(ds, "events.tsv")
    write_tsv(p, read_tsv(p).drop(columns=["sample"]))
    np.testing.assert_array_equal(load_subject(ds, SUB).trials.sample, load_subject(pristine, SUB).trials.sample)


def test_onset_past_the_end(ds):
    p = path(ds, "events.tsv")
    df = read_tsv(p)
    with h5py.File(path(ds, "ieeg.nwb"), "r") as f:
        duration = f["acquisition/iEEG/data"].shape[0] / 1024.0
    df.loc[len(df) - 2, "onset"] = repr(duration + 5.0)
    df.loc[len(df) - 2, "sample"] = str(int((duration + 5.0) * 1024))
    write_tsv(p, df)
    err = raises(ds, "past the end")
    assert "events.tsv" in str(err) and "onset" in str(err)


def test_sample_column_must_agree_with_onset(ds):
    p = path(ds, "events.tsv")
    df = read_tsv(p)
    df.loc[2, "sample"] = str(int(df.loc[2, "sample"]) + 50)
    write_tsv(p, df)
    err = raises(ds, "column sample")
    assert "events.tsv" in str(err)


def test_event_words_must_match_the_stimulus_track(ds):
    p = path(ds, "events.tsv")
    df = read_tsv(p)
    words = df.index[df.trial_type == "word"]
    df.loc[words[0], "value"], df.loc[words[1], "value"] = df.loc[words[1], "value"], df.loc[words[0], "value"]
    write_tsv(p, df)
    err = raises(ds, "Stimulus")
    assert "value" in str(err) and "2 of" in str(err)


def test_events_without_word_rows(ds):
    p = path(ds, "events.tsv")
    df = read_tsv(p)
    df["trial_type"] = "fixation"
    write_tsv(p, df)
    raises(ds, "trial_type 'word'")


def test_malformed_tsv_line(ds):
    p = path(ds, "events.tsv")
    p.write_text(p.read_text() + "1.0\t2.0\n")
    raises(ds, "line")


def test_non_numeric_onset(ds):
    p = path(ds, "events.tsv")
    df = read_tsv(p)
    df.loc[0, "onset"] = "soon"
    write_tsv(p, df)
    raises(ds, "onset")


# ----------------------------------------------------------------------------- audio and rates

def test_audio_shorter_than_last_trial(ds):
    with h5py.File(path(ds, "ieeg.nwb"), "r") as f:
        audio = f["acquisition/Audio/data"][()]
    replace_dataset(path(ds, "ieeg.nwb"), "Audio", audio[: len(audio) // 2])
    err = raises(ds, "shorter than the last trial")
    assert "Audio" in str(err) and "events.tsv" in str(err)


def test_rate_mismatch_in_ieeg_json(ds):
    edit_json(path(ds, "ieeg.json"), SamplingFrequency=2048)
    err = raises(ds, "SamplingFrequency")
    assert "2048" in str(err) and "1024" in str(err) and "ieeg.json" in str(err)


def test_rate_mismatch_in_nwb(ds):
    with h5py.File(path(ds, "ieeg.nwb"), "r+") as f:
        f["acquisition/iEEG/starting_time"].attrs["rate"] = 512.0
    err = raises(ds, "rate mismatch")
    assert "512" in str(err)


def test_missing_sampling_frequency_field(ds):
    p = path(ds, "ieeg.json")
    obj = json.loads(p.read_text())
    del obj["SamplingFrequency"]
    p.write_text(json.dumps(obj))
    raises(ds, "missing field SamplingFrequency")


def test_invalid_json(ds):
    path(ds, "ieeg.json").write_text("{not json")
    raises(ds, "not valid JSON")


def test_line_frequency_comes_from_ieeg_json(ds):
    edit_json(path(ds, "ieeg.json"), PowerLineFrequency=60)
    assert load_subject(ds, SUB).line_freq == 60.0


# ----------------------------------------------------------------------------- provenance

def test_source_is_real_unless_marked_synthetic(ds):
    assert load_subject(ds, SUB).source == "synthetic"
    edit_json(ds / "dataset_description.json", GeneratedBy=[{"Name": "MNE-BIDS"}], GpureconSynthetic=None)
    assert load_subject(ds, SUB).source == "real"
    (ds / "dataset_description.json").unlink()
    rec = load_subject(ds, SUB)
    assert rec.source == "real" and "dataset_description" not in rec.files


def test_files_lists_every_file_read(pristine):
    rec = load_subject(pristine, SUB)
    assert rec.files["nwb"] == path(pristine, "ieeg.nwb")
    assert rec.files["ieeg_json"] == path(pristine, "ieeg.json")
    assert rec.files["channels"] == path(pristine, "channels.tsv")
    assert rec.files["events"] == path(pristine, "events.tsv")
    assert rec.files["electrodes"] == path(pristine, "space-ACPC_electrodes.tsv")
    assert rec.files["participants"] == pristine / "participants.tsv"


@pytest.mark.parametrize("shift_ms, ok", [(-20, True), (-300, False)])
def test_events_slightly_before_the_stimulus_flip_pass_far_ones_fail(ds, shift_ms, ok):
    p = path(ds, "events.tsv")
    df = read_tsv(p)
    shift = int(round(shift_ms / 1000 * 1024))
    df["sample"] = (df["sample"].astype(int) + shift).astype(str)
    df["onset"] = (df["sample"].astype(int) / 1024).map(repr)
    write_tsv(p, df)
    if ok:
        assert len(load_subject(ds, SUB).trials) == N_WORDS
    else:
        raises(ds, "Stimulus")
