"""Builders shared by the tests (one place): tiny MESA-like EDF + NSRR XML recordings, a raw cohort of them
and the extraction command on it, and tiny processed HDF5 files written straight in the extractor's format.

- `write_edf`, `write_xml`, `make_cohort`, `run_cli`: raw recordings for extraction, inference and the
  verifiers (nights of 10-20 min, `W` = 40 windows per subject);
- `write_processed`: mesa_ppg_with_labels.h5, mesa_real_ecg.h5 and mesa_subject_index.h5 for the model,
  dataset, training and inference tests. Their PPG is a pulse-like wave whose rate and regularity depend on
  the stage, plus per-subject offsets and noise, so a small model can learn it, but not perfectly;
- `synthetic_night`: the synthetic cohort's Pleth and EKG of one subject, as raw 256-Hz arrays;
- `fake_edf`, `read_csv`, `assert_png`, `npy_data_offset`: a stand-in input file and checks of what inference
  writes.
"""
from __future__ import annotations

import functools
import zipfile
from pathlib import Path

import h5py
import numpy as np

from sleepppg.constants import SAMPLES_PER_WINDOW, TARGET_FS
from sleepppg.edf import EDF_SIGNAL_FIELDS
from sleepppg.ids import sleepppg_test_subjects

REPO = Path(__file__).resolve().parents[1]
W = 40  # windows per subject in the raw-recording tests (20 min); real data uses 1,200

# ----------------------------------------------------------------------------------------------------------
# Raw recordings (EDF + NSRR XML)


def write_xml(path: Path, stages: list[tuple[str, float, float]], other_events: bool = True) -> Path:
    """An NSRR XML with `Recording Start Time` first, the stage runs (concept, start s, duration s) and
    some non-stage events interleaved."""
    events = ['<ScoredEvent><EventType/><EventConcept>Recording Start Time</EventConcept><Start>0</Start>'
              '<Duration>36000.0</Duration><ClockTime>00.00.00 22.00.00</ClockTime></ScoredEvent>']
    for k, (concept, start, duration) in enumerate(stages):
        events.append(f"<ScoredEvent><EventType>Stages|Stages</EventType><EventConcept>{concept}</EventConcept>"
                      f"<Start>{start}</Start><Duration>{duration}</Duration></ScoredEvent>")
        if other_events and k % 2 == 0:
            events.append("<ScoredEvent><EventType>Arousals|Arousals</EventType><EventConcept>Arousal|Arousal ()"
                          f"</EventConcept><Start>{start + 5}</Start><Duration>10</Duration></ScoredEvent>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n<PSGAnnotation>'
                    "<SoftwareVersion>Compumedics</SoftwareVersion><EpochLength>30</EpochLength><ScoredEvents>"
                    + "".join(events) + "</ScoredEvents></PSGAnnotation>\n")
    return path


def write_edf(path: Path, minutes: float = 12, seed: int = 0, fs_ppg: float = 256, ppg_label: str | None = "Pleth",
              ecg: bool = True, flat_ppg: bool = False) -> Path:
    """A small MESA-like EDF (1-s data records): EKG at 256 Hz, the PPG channel `ppg_label` at `fs_ppg` Hz (a
    ~1-Hz pulse with a 0.25-Hz respiratory wave and noise; constant when `flat_ppg`; left out when `ppg_label`
    is None), Thor at 32 Hz and SpO2 at 1 Hz. `ecg=False` leaves the EKG out."""
    import edfio

    rng = np.random.default_rng(seed)
    seconds = int(minutes * 60)
    n = int(seconds * fs_ppg)
    t = np.arange(n) / fs_ppg
    hr = 1.0 + 0.2 * rng.random()
    ppg = 60 * np.sin(2 * np.pi * hr * t) + 20 * np.sin(2 * np.pi * 0.25 * t) + 5 * rng.standard_normal(n)
    if flat_ppg:
        ppg = np.full(n, 12.0)
    signals = []
    if ecg:
        te = np.arange(seconds * 256) / 256
        ekg = 0.8 * np.sin(2 * np.pi * hr * te) ** 15 + 0.05 * rng.standard_normal(te.size)
        signals.append(edfio.EdfSignal(ekg, 256, label="EKG", physical_dimension="mV", physical_range=(-2, 2)))
    if ppg_label is not None:
        signals.append(edfio.EdfSignal(ppg, fs_ppg, label=ppg_label, physical_range=(-200, 200)))
    signals += [
        edfio.EdfSignal(np.sin(2 * np.pi * 0.25 * np.arange(seconds * 32) / 32), 32, label="Thor",
                        physical_range=(-2, 2)),
        edfio.EdfSignal(np.full(seconds, 95.0), 1, label="SpO2", physical_dimension="%", physical_range=(0, 100)),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    edfio.Edf(signals).write(path)
    return path


@functools.lru_cache(maxsize=2)
def synthetic_night(minutes: int = 40) -> tuple[np.ndarray, np.ndarray, float]:
    """(Pleth, EKG, median heart rate in bpm) of one synthetic subject (sleepppg.synthetic, as
    make_synthetic_mesa.py draws them), raw at 256 Hz: a realistic PPG and an ECG of the same heart beats."""
    from sleepppg.synthetic.hypnogram import simulate_states
    from sleepppg.synthetic.physiology import simulate_physiology
    from sleepppg.synthetic.signals import subject_rng
    from sleepppg.synthetic.waveforms import FS_RESP, movement_artefact, synth_ecg, synth_ppg

    rng = subject_rng(7, "0042")
    phys = simulate_physiology(rng, simulate_states(rng, minutes * 2))
    artefact = movement_artefact(rng, phys["movements"], minutes * 60, FS_RESP)
    ecg = synth_ecg(subject_rng(7, "0042", 3), phys, minutes * 60, artefact)
    ppg = synth_ppg(rng, phys, minutes * 60, 256, artefact)
    return ppg, ecg, 60 / float(np.median(np.diff(phys["beats"])))


STAGE_CYCLE = ["Wake|0", "Stage 1 sleep|1", "Stage 2 sleep|2", "Stage 3 sleep|3", "REM sleep|5",
               "Stage 4 sleep|4", "Movement|6", "Unscored|9"]


def make_cohort(root: Path, ids: list[str], minutes: float = 12, no_ecg: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """EDF + XML per ID under root/edfs and root/xml (IDs in `no_ecg` without an EKG channel);
    returns (edf_dir, xml_dir)."""
    edf_dir, xml_dir = root / "edfs", root / "xml"
    for k, sid in enumerate(ids):
        write_edf(edf_dir / f"mesa-sleep-{sid}.edf", minutes=minutes, seed=k, ecg=sid not in no_ecg)
        stages = [(STAGE_CYCLE[(j + k) % len(STAGE_CYCLE)], 90.0 * j, 90.0) for j in range(int(minutes * 60 // 90))]
        write_xml(xml_dir / f"mesa-sleep-{sid}-nsrr.xml", stages)
    return edf_dir, xml_dir


def run_cli(edf_dir: Path, xml_dir: Path, out_dir: Path, *extra: str) -> int:
    """extract_mesa_data.main on a raw cohort, `W` windows per subject, one worker (plus `extra` flags)."""
    import extract_mesa_data as ex

    return ex.main(["--edf-dir", str(edf_dir), "--xml-dir", str(xml_dir), "--out-dir", str(out_dir),
                    "--windows-per-subject", str(W), "--workers", "1", *extra])


# ----------------------------------------------------------------------------------------------------------
# Processed files (the extractor's HDF5 format, written directly)

# Stage -> (pulse rate in Hz, beat-to-beat jitter); Wake fast/irregular, Deep slow/regular, REM irregular.
_STAGE_RATE = {0: (1.25, 0.12), 1: (1.0, 0.05), 2: (0.85, 0.02), 3: (1.15, 0.15)}


def _hypnogram(rng: np.random.Generator, n_windows: int, n_scored: int) -> np.ndarray:
    labels = np.full(n_windows, -1, dtype=np.int64)
    i = 0
    while i < n_scored:
        stage = int(rng.choice(4, p=[0.25, 0.4, 0.15, 0.2]))
        run = int(rng.integers(3, 12))
        labels[i:min(i + run, n_scored)] = stage
        i += run
    return labels


def _ppg_for(rng: np.random.Generator, labels: np.ndarray, hr_offset: float) -> np.ndarray:
    t = np.arange(SAMPLES_PER_WINDOW) / TARGET_FS
    out = np.zeros((labels.size, SAMPLES_PER_WINDOW), dtype=np.float32)
    for w, stage in enumerate(labels):
        if stage < 0:
            continue
        rate, jitter = _STAGE_RATE[int(stage)]
        f = rate + hr_offset + jitter * rng.standard_normal()
        phase = 2 * np.pi * np.cumsum(np.full_like(t, f) * (1 + jitter * rng.standard_normal(t.size))) / TARGET_FS
        out[w] = np.sin(phase) + 0.3 * np.sin(2 * phase) + 0.3 * rng.standard_normal(t.size)
    return out


def write_processed(out_dir: str | Path, n_subjects: int = 12, windows_per_subject: int = 40,
                    n_test: int = 3, seed: int = 0, with_ecg: bool = True,
                    short_subjects: tuple[str, ...] = ()) -> dict:
    """Write mesa_ppg_with_labels.h5, mesa_real_ecg.h5 and mesa_subject_index.h5 under `out_dir`.

    Args:
        n_subjects: subjects in total; the first `n_test` IDs come from the SleepPPG-Net test list, the rest
            are other 4-digit IDs.
        windows_per_subject: windows per night (1,200 in real data; small here for speed).
        short_subjects: IDs (among those written) stored with one window fewer, i.e. invalid for the split.
    Returns:
        {"ppg": path, "ecg": path, "index": path, "subjects": [ids in file order]}
    """
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_ids = sleepppg_test_subjects()[:n_test]
    others = [f"{i:04d}" for i in range(9000, 9000 + n_subjects - n_test)]
    subjects = sorted(test_ids + others)
    ppg, ecg, labels, sids, counts = [], [], [], [], {}
    for sid in subjects:
        n = windows_per_subject - (1 if sid in short_subjects else 0)
        lab = _hypnogram(rng, n, n_scored=n - int(rng.integers(0, 4)))
        sig = _ppg_for(rng, lab, hr_offset=0.1 * rng.standard_normal())
        ppg.append(sig)
        ecg.append(np.roll(sig, 3, axis=1) if with_ecg else np.zeros_like(sig))
        labels.append(lab)
        sids += [sid.encode()] * n
        counts[sid] = n
    ppg_all, ecg_all = np.concatenate(ppg), np.concatenate(ecg)
    lab_all, sid_all = np.concatenate(labels), np.array(sids, dtype="S4")
    paths = {"ppg": out_dir / "mesa_ppg_with_labels.h5", "ecg": out_dir / "mesa_real_ecg.h5",
             "index": out_dir / "mesa_subject_index.h5"}
    with h5py.File(paths["ppg"], "w") as f:
        f["ppg"], f["labels"], f["subject_ids"] = ppg_all, lab_all, sid_all
        f.attrs.update(sampling_rate=TARGET_FS, window_duration=30, samples_per_window=SAMPLES_PER_WINDOW,
                       total_windows=len(lab_all), total_subjects=len(subjects))
    with h5py.File(paths["ecg"], "w") as f:
        f["ecg"], f["labels"], f["subject_ids"] = ecg_all, lab_all, sid_all
        f["has_real_ecg"] = np.full(len(lab_all), with_ecg)
        f["real_ecg_indices"] = np.arange(len(lab_all)) if with_ecg else np.zeros(0, dtype=np.int64)
        f.attrs.update(windows_with_real_ecg=len(lab_all) if with_ecg else 0,
                       windows_without_real_ecg=0 if with_ecg else len(lab_all))
    with h5py.File(paths["index"], "w") as f:
        start = 0
        for sid in subjects:
            g = f.create_group(f"subjects/{sid}")
            g["window_indices"] = np.arange(start, start + counts[sid])
            g.attrs.update(n_windows=counts[sid], has_ecg=with_ecg)
            start += counts[sid]
        f.attrs.update(total_subjects=len(subjects), total_windows=len(lab_all))
    return {**{k: str(v) for k, v in paths.items()}, "subjects": subjects}


# ----------------------------------------------------------------------------------------------------------
# Hand-made EDF/BDF files (digital values written byte by byte), for hostile-header tests and the fuzz test


def edf_field_offset(n_signals: int, field: str, signal: int | None = None) -> tuple[int, int]:
    """(byte offset, width) of a header field: a fixed-header field by name, or a signal field of `signal`."""
    fixed = {"version": (0, 8), "header_bytes": (184, 8), "n_records": (236, 8), "record_s": (244, 8),
             "n_signals": (252, 4)}
    if signal is None:
        return fixed[field]
    offset = 256
    for name, width in EDF_SIGNAL_FIELDS:
        if name == field:
            return offset + signal * width, width
        offset += width * n_signals
    raise KeyError(field)


def set_field(data: bytes, n_signals: int, field: str, text: str | bytes, signal: int | None = None) -> bytes:
    offset, width = edf_field_offset(n_signals, field, signal)
    raw = text if isinstance(text, bytes) else text.encode("latin-1")
    return data[:offset] + raw.ljust(width)[:width] + data[offset + width:]


def annotation_channel(onsets: list[float | None], spr: int = 30, bdf: bool = False) -> dict:
    """An "EDF Annotations" channel for `write_raw_edf`: per data record one time-keeping TAL
    (`+onset\x14\x14\x00`, the record's start in s), or none where the onset is None; `spr` samples per record
    (2 bytes each, 3 in a BDF)."""
    width = 3 if bdf else 2
    raw = b""
    for onset in onsets:
        tal = b"" if onset is None else f"{onset:+.10g}\x14\x14\x00".encode()
        raw += tal.ljust(width * spr, b"\x00")
    if bdf:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int64)
        digital = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        digital -= (digital & 0x800000) << 1
    else:
        digital = np.frombuffer(raw, "<i2").astype(np.int64)
    top = 2**23 if bdf else 2**15
    return dict(label="EDF Annotations", spr=spr, digital=digital, pmin=-1, pmax=1, dmin=-top, dmax=top - 1, dim="")


def write_raw_edf(path: Path, channels: list[dict], record_s: float = 1.0, bdf: bool = False,
                  edf_plus: str = "") -> Path:
    """A hand-made EDF (or BDF) from digital values: channels of dict(label, spr, digital (int array),
    pmin, pmax, dmin, dmax, dim). `edf_plus` "EDF+C" or "EDF+D" marks the header's reserved field (add an
    `annotation_channel` for the records' onsets)."""
    n_records = len(channels[0]["digital"]) // channels[0]["spr"]
    ns = len(channels)
    head = (b"\xffBIOSEMI" if bdf else b"0".ljust(8)) + b"X X X X".ljust(80) + b"Startdate X X X X".ljust(80)
    reserved = edf_plus.encode() or (b"24BIT" if bdf else b"")
    head += b"01.01.01" + b"22.00.00" + str(256 * (ns + 1)).encode().ljust(8) + reserved.ljust(44)
    head += str(n_records).encode().ljust(8) + f"{record_s:g}".encode().ljust(8) + str(ns).encode().ljust(4)
    columns = {"label": lambda c: c["label"], "transducer": lambda c: "", "physical_dimension": lambda c: c["dim"],
               "physical_min": lambda c: f"{c['pmin']:g}", "physical_max": lambda c: f"{c['pmax']:g}",
               "digital_min": lambda c: str(c["dmin"]), "digital_max": lambda c: str(c["dmax"]),
               "prefiltering": lambda c: "", "samples_per_record": lambda c: str(c["spr"]), "reserved": lambda c: ""}
    for name, width in EDF_SIGNAL_FIELDS:
        head += b"".join(columns[name](c).encode("latin-1").ljust(width) for c in channels)
    body = bytearray()
    for r in range(n_records):
        for c in channels:
            values = np.asarray(c["digital"][r * c["spr"]:(r + 1) * c["spr"]], dtype=np.int64)
            if bdf:  # the low 3 bytes of each little-endian two's-complement value
                body += (values & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
            else:
                body += values.astype("<i2").tobytes()
    path.write_bytes(bytes(head) + bytes(body))
    return path


def channels_for_raw_edf(seconds: int = 120, seed: int = 0, bdf: bool = False) -> list[dict]:
    rng = np.random.default_rng(seed)
    top = 2**23 - 1 if bdf else 32767
    t = np.arange(seconds * 256) / 256
    pleth = (0.4 * top * np.sin(2 * np.pi * 1.1 * t) + 0.05 * top * rng.standard_normal(t.size)).astype(np.int64)
    ekg = (0.3 * top * np.sin(2 * np.pi * 1.1 * t) ** 9 + 0.02 * top * rng.standard_normal(t.size)).astype(np.int64)
    spo2 = np.full(seconds, 950, dtype=np.int64)
    return [dict(label="EKG", spr=256, digital=ekg, pmin=-2.5, pmax=2.5, dmin=-top - 1, dmax=top, dim="mV"),
            dict(label="Pleth", spr=256, digital=pleth, pmin=-100, pmax=100, dmin=-top - 1, dmax=top, dim=""),
            dict(label="SpO2", spr=1, digital=spo2, pmin=0, pmax=100, dmin=0, dmax=1000, dim="%")]


def write_tiny_checkpoint(path: Path, n_windows: int, seed: int = 0) -> Path:
    """A checkpoint of an untrained SleepPPG-Net for n_windows-window nights (seeded weights), as training
    writes it: model kind and arguments, state dict, config, epoch, metrics."""
    import torch

    from multimodal_sleep_model import SleepPPGNet
    from sleepppg.checkpoints import checkpoint_model_fields

    torch.manual_seed(seed)
    model = SleepPPGNet(n_windows=n_windows)
    torch.save({**checkpoint_model_fields(model), "model_state_dict": model.state_dict(), "config": {},
                "epoch": 0, "metrics": {}}, path)
    return path


def interrupted_on_call(real, n: int):
    """A stand-in for the function `real` that raises KeyboardInterrupt (as Ctrl-C or a kill would) on its n-th
    call and passes every other call through; monkeypatch it in place of `real`."""
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper


# ----------------------------------------------------------------------------------------------------------
# Inference: stand-in recordings and what a run writes


def fake_edf(folder: Path, name: str = "mesa-sleep-0042.edf") -> Path:
    """A file with an EDF's name and 100 bytes of filler: enough for input resolution and cache signatures."""
    path = folder / name
    path.write_bytes(b"0" * 100)
    return path


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a CSV that inference wrote, every cell a string."""
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def assert_png(path: Path) -> None:
    """`path` is a PNG that matplotlib reads back as an image larger than 100 x 100 pixels with something drawn
    on it: not one uniform colour, and more than 1% of its pixels unlike the background."""
    import matplotlib.image as mpimg

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3].astype(float)
    background = np.median(rgb.reshape(-1, 3), axis=0)
    drawn = np.abs(rgb - background).max(axis=-1) > 0.1
    assert rgb.std() > 0.01 and drawn.mean() > 0.01, f"{path}: almost nothing drawn"


def npy_data_offset(path: Path) -> int:
    """Byte offset where a .npy file's array data starts (after its magic string and header)."""
    with open(path, "rb") as fh:
        major, _ = np.lib.format.read_magic(fh)
        (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(fh)
        return fh.tell()


def rewrite_torch_archive(path, pick=max, flip=True):
    """Rewrite the torch zip archive at `path` member by member, with one byte in the middle of one tensor record
    (data/<n>; the largest with pick=max, the smallest with min) flipped when `flip`. The zip's CRCs are
    computed anew, so only the tensor data differs. Returns the record's name."""
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        contents = {info.filename: archive.read(info) for info in infos}
    target = pick((i for i in infos if i.filename.split("/")[-2:-1] == ["data"]), key=lambda i: i.file_size)
    data = bytearray(contents[target.filename])
    data[len(data) // 2] ^= 0x01 if flip else 0x00
    contents[target.filename] = bytes(data)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for info in infos:
            archive.writestr(info, contents[info.filename])
    return target.filename


TINY_WINDOWS = 8  # a 4-min "night": cheap on CPU (model and checkpoint tests)


def model_inputs(batch=2, n_windows=TINY_WINDOWS, seed=0):
    """(ppg_B1T, ecg_B1T): seeded random nights of `n_windows` windows for the model tests."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g),
            torch.randn(batch, 1, n_windows * SAMPLES_PER_WINDOW, generator=g))


def model_forward(model, ppg, ecg):
    """The PPG-only model takes the PPG, the PPG+ECG model both."""
    from multimodal_sleep_model import SleepPPGNet

    return model(ppg) if ecg is None or isinstance(model, SleepPPGNet) else model(ppg, ecg)


def tmpfs_unavailable(probe: Path) -> str | None:
    """None when a small tmpfs can be mounted at the new folder `probe`, else the reason (tests that need a real
    full disk are then skipped)."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a small tmpfs needs root and mount(8)"
    probe.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        return f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}"
    subprocess.run(["umount", str(probe)], check=True)
    return None
