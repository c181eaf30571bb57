"""The MESA-shaped writer: one synthetic night as NSRR lays MESA out, an EDF and its annotation XML.

- `<root>/polysomnography/edfs/<stem>.edf`: a real EDF (edfio, 1-s data records) with MESA's channel names and
  rates: EKG, EEG1 and Pleth at 256 Hz, Flow, Thor, Abdo and Pos at 32 Hz, SpO2 and HR at 1 Hz (a night
  "without ECG" has no EKG channel); `full_montage` adds the rest of MESA's channels in MESA's order;
- `<root>/polysomnography/annotations-events-nsrr/<stem>-nsrr.xml`: NSRR XML (root `PSGAnnotation`,
  `EpochLength` 30, `ScoredEvents`): `Recording Start Time` first, then 30-s stage runs (`Stages|Stages`)
  interleaved in time order with arousals, hypopneas and SpO2 desaturations;
- `<root>/polysomnography/annotations-events-profusion/<stem>-profusion.xml`: Compumedics Profusion XML (root
  `CMPStudyConfig`, one `<SleepStage>` code per 30-s epoch), the same scoring.

The stem is `name_format` with the ID (MESA: `mesa-sleep-{id}`). Each file is written under a temporary name and
renamed, so a file that exists is whole.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from sleepppg.constants import WINDOW_SECONDS
from sleepppg.runio import atomic_output
from sleepppg.synthetic.hypnogram import STAGE_CONCEPTS, score_states, simulate_states, stage_runs
from sleepppg.synthetic.physiology import simulate_physiology
from sleepppg.synthetic.signals import subject_rng
from sleepppg.synthetic.waveforms import (
    FS_ECG,
    FS_EEG,
    FS_RESP,
    movement_artefact,
    synth_ecg,
    synth_eeg,
    synth_extra,
    synth_ppg,
    synth_resp,
)

EDF_SUBDIR = Path("polysomnography") / "edfs"
XML_SUBDIR = Path("polysomnography") / "annotations-events-nsrr"
PROFUSION_SUBDIR = Path("polysomnography") / "annotations-events-profusion"  # NSRR's folder for Profusion XML
MESA_NAME_FORMAT = "mesa-sleep-{id}"  # file stem; the XML adds -nsrr.xml / -profusion.xml, as NSRR names them
XML_FORMATS = ("nsrr", "profusion", "both")

EDF_START_DATE = datetime.date(1985, 1, 1)  # NSRR de-identified EDFs carry 01.01.85

# EDF channels: label -> (rate Hz, unit, physical range). MESA_ORDER is the order of a MESA EDF; the basic
# montage writes the channels the pipeline reads, `full_montage` adds the rest (their rates are
# plausible choices, not taken from MESA's documentation).
MESA_ORDER = ("EKG", "EOG-L", "EOG-R", "EMG", "EEG1", "EEG2", "EEG3", "Pres", "Flow", "Snore", "Thor", "Abdo",
              "Leg", "Therm", "Pos", "Pleth", "OxStatus", "SpO2", "HR", "DHR")
EXTRA_CHANNELS = ("EOG-L", "EOG-R", "EMG", "EEG2", "EEG3", "Pres", "Snore", "Leg", "Therm", "OxStatus", "DHR")
CHANNELS = {
    "EOG-L": (256, "uV", (-500.0, 500.0)),
    "EOG-R": (256, "uV", (-500.0, 500.0)),
    "EMG": (256, "uV", (-250.0, 250.0)),
    "EEG2": (FS_EEG, "uV", (-500.0, 500.0)),
    "EEG3": (FS_EEG, "uV", (-500.0, 500.0)),
    "Pres": (FS_RESP, "cmH2O", (-5.0, 5.0)),
    "Snore": (FS_RESP, "mV", (-3.0, 3.0)),
    "Leg": (FS_RESP, "uV", (-250.0, 250.0)),
    "Therm": (FS_RESP, "mV", (-3.0, 3.0)),
    "OxStatus": (1, "", (0.0, 255.0)),
    "DHR": (1, "bpm", (0.0, 250.0)),
    "EKG": (FS_ECG, "mV", (-5.0, 5.0)),
    "EEG1": (FS_EEG, "uV", (-500.0, 500.0)),
    "Flow": (FS_RESP, "mV", (-3.0, 3.0)),
    "Thor": (FS_RESP, "mV", (-3.0, 3.0)),
    "Abdo": (FS_RESP, "mV", (-3.0, 3.0)),
    "Pos": (FS_RESP, "", (0.0, 5.0)),
    "Pleth": (256, "", (-128.0, 128.0)),
    "SpO2": (1, "%", (0.0, 100.0)),
    "HR": (1, "bpm", (0.0, 250.0)),
}


def edf_path(out_root: str | Path, subject_id: str, name_format: str = MESA_NAME_FORMAT) -> Path:
    """`<root>/polysomnography/edfs/<stem>.edf`."""
    return Path(out_root) / EDF_SUBDIR / f"{name_format.format(id=subject_id)}.edf"


def xml_path(out_root: str | Path, subject_id: str, name_format: str = MESA_NAME_FORMAT,
             dialect: str = "nsrr") -> Path:
    """`<root>/polysomnography/annotations-events-nsrr/<stem>-nsrr.xml`, or the Profusion folder and
    `<stem>-profusion.xml` for dialect 'profusion'."""
    folder = XML_SUBDIR if dialect == "nsrr" else PROFUSION_SUBDIR
    return Path(out_root) / folder / f"{name_format.format(id=subject_id)}-{dialect}.xml"


def xml_dialects(xml_format: str) -> tuple[str, ...]:
    """The annotation dialects an --xml-format writes: 'both' -> ('nsrr', 'profusion')."""
    if xml_format not in XML_FORMATS:
        raise ValueError(f"xml_format must be one of {', '.join(XML_FORMATS)}, got {xml_format!r}")
    return ("nsrr", "profusion") if xml_format == "both" else (xml_format,)


def check_name_format(name_format: str) -> str:
    """Raise ValueError unless `name_format` is a file stem holding `{id}` once (e.g. 'cfs-visit5-{id}')."""
    try:
        stem = name_format.format(id="X")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"name format {name_format!r} is not a format string with only {{id}}: {err}") from None
    if name_format.count("{id}") != 1 or "/" in stem or "\\" in stem or stem in ("", ".", ".."):
        raise ValueError(f"name format {name_format!r} must be a file name holding {{id}} once, "
                         "e.g. 'cfs-visit5-{id}'")
    return name_format


def _fmt_seconds(x: float) -> str:
    return f"{x:.1f}"


def build_xml(codes: np.ndarray, events: list[tuple[float, str, str, float, str]], duration_s: int,
              start_clock: datetime.time) -> str:
    """NSRR annotation XML text (root PSGAnnotation; stage runs as `Stages|Stages` ScoredEvents).

    Args:
        codes: NSRR stage code per 30-s epoch.
        events: other scored events as (start_s, event_type, event_concept, duration_s, extra_xml).
        duration_s: recording length, s.
        start_clock: the recording's start time of day (matches the EDF header).
    """
    scored = [(float(first * WINDOW_SECONDS), 0, "Stages|Stages", STAGE_CONCEPTS[code],
               float(k * WINDOW_SECONDS), "") for code, first, k in stage_runs(codes)]
    scored += [(start, 1, etype, concept, dur, extra) for start, etype, concept, dur, extra in events]
    scored.sort(key=lambda e: (e[0], e[1]))
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="no"?>',
        "<PSGAnnotation>",
        "<SoftwareVersion>Compumedics</SoftwareVersion>",
        f"<EpochLength>{WINDOW_SECONDS}</EpochLength>",
        "<ScoredEvents>",
        "<ScoredEvent>",
        "<EventType/>",
        "<EventConcept>Recording Start Time</EventConcept>",
        "<Start>0</Start>",
        f"<Duration>{_fmt_seconds(duration_s)}</Duration>",
        f"<ClockTime>00.00.00 {start_clock.strftime('%H.%M.%S')}</ClockTime>",
        "</ScoredEvent>",
    ]
    for start, _, etype, concept, dur, extra in scored:
        lines += ["<ScoredEvent>", f"<EventType>{escape(etype)}</EventType>",
                  f"<EventConcept>{escape(concept)}</EventConcept>", f"<Start>{_fmt_seconds(start)}</Start>",
                  f"<Duration>{_fmt_seconds(dur)}</Duration>"]
        if extra:
            lines.append(extra)
        lines.append("</ScoredEvent>")
    lines += ["</ScoredEvents>", "</PSGAnnotation>", ""]
    return "\n".join(lines)


def _other_events(phys: dict) -> list[tuple[float, str, str, float, str]]:
    """The night's arousals, hypopneas and SpO2 desaturations as `build_xml` events."""
    events = [(a, "Arousals|Arousals", "Arousal|Arousal ()", d, "<SignalLocation>EEG1</SignalLocation>")
              for a, d in phys["arousals"]]
    events += [(a, "Respiratory|Respiratory", "Hypopnea|Hypopnea", d, "<SignalLocation>Flow</SignalLocation>")
               for a, d in phys["hypopneas"]]
    events += [(a, "Respiratory|Respiratory", "SpO2 desaturation|SpO2 desaturation", d,
                f"<SignalLocation>SpO2</SignalLocation>\n<SpO2Nadir>{nadir:.1f}</SpO2Nadir>\n"
                f"<SpO2Baseline>{base:.1f}</SpO2Baseline>") for a, d, nadir, base in phys["desaturations"]]
    return events


def build_profusion_xml(codes: np.ndarray, phys: dict) -> str:
    """Compumedics Profusion XML text of the same scoring as `build_xml`: root `CMPStudyConfig`,
    `EpochLength` 30, the other events as `ScoredEvent`s (Name, Start, Duration, Input) and one
    `<SleepStage>` integer per 30-s epoch in `<SleepStages>` (the NSRR stage code: 0 Wake, 1-4 NREM, 5 REM,
    6 movement, 9 unscored).

    Args:
        codes: NSRR stage code per 30-s epoch.
        phys: the night's `simulate_physiology` output (arousals, hypopneas, desaturations).
    """
    events = [(a, "Arousal ()", d, "EEG1", "") for a, d in phys["arousals"]]
    events += [(a, "Hypopnea", d, "Flow", "") for a, d in phys["hypopneas"]]
    events += [(a, "SpO2 desaturation", d, "SpO2",
                f"<LowestSpO2>{nadir:.1f}</LowestSpO2>\n<Desaturation>{base - nadir:.1f}</Desaturation>")
               for a, d, nadir, base in phys["desaturations"]]
    events.sort(key=lambda e: e[0])
    lines = ['<?xml version="1.0" encoding="UTF-8" standalone="no"?>', "<CMPStudyConfig>",
             f"<EpochLength>{WINDOW_SECONDS}</EpochLength>", "<ScoredEvents>"]
    for start, name, dur, signal, extra in events:
        lines += ["<ScoredEvent>", f"<Name>{escape(name)}</Name>", f"<Start>{_fmt_seconds(start)}</Start>",
                  f"<Duration>{_fmt_seconds(dur)}</Duration>", f"<Input>{signal}</Input>"]
        if extra:
            lines.append(extra)
        lines.append("</ScoredEvent>")
    lines += ["</ScoredEvents>", "<SleepStages>"]
    lines += [f"<SleepStage>{int(code)}</SleepStage>" for code in codes]
    lines += ["</SleepStages>", "</CMPStudyConfig>", ""]
    return "\n".join(lines)


def _edf_signal(data: np.ndarray, channel: str, fs: int, label: str | None = None):
    """An edfio signal with the channel's unit and physical range (data clipped into it)."""
    from edfio import EdfSignal

    _, unit, (lo, hi) = CHANNELS[channel]
    return EdfSignal(np.clip(data, lo, hi, out=data), fs, label=label or channel, physical_dimension=unit,
                     physical_range=(lo, hi))


def write_subject(out_root: str | Path, subject_id: str, hours: float, seed: int, with_ecg: bool = True,
                  fs_ppg: int = 256, ppg_label: str = "Pleth", full_montage: bool = False,
                  name_format: str = MESA_NAME_FORMAT, xml_format: str = "nsrr") -> tuple[Path, Path]:
    """Simulate one night and write its EDF and annotation XML (each atomically).

    Args:
        out_root: cohort root; files go to polysomnography/edfs and polysomnography/annotations-events-nsrr
            (Profusion XML: polysomnography/annotations-events-profusion).
        subject_id: the ID as text (MESA: 4 digits, leading zeros kept; any letters/digits/-/_ otherwise).
        hours: recording length; rounded to whole 30-s epochs (at least one).
        seed: cohort seed; the subject's RNG is seeded from (seed, ID).
        with_ecg: False omits the EKG channel.
        fs_ppg: PPG sampling rate, Hz; must be a whole number (1-s EDF data records).
        ppg_label: the PPG channel's label ("Pleth" in MESA).
        full_montage: also write MESA's other channels (EOG, EMG, EEG2/3, ...: ~2x the file size). The
            basic channels are identical either way (the extra ones use their own random stream).
        name_format: file stem with `{id}` (MESA: 'mesa-sleep-{id}'; CFS: 'cfs-visit5-{id}').
        xml_format: 'nsrr', 'profusion' or 'both' (the same scoring in each).
    Returns:
        (edf_path, xml_path): the NSRR XML's path, or the Profusion XML's when only that is written.
    """
    from edfio import Edf, Recording

    check_name_format(name_format)
    xml_dialects(xml_format)
    if float(fs_ppg) != int(fs_ppg) or fs_ppg <= 0:
        raise ValueError(f"fs_ppg must be a positive whole number of Hz (1-s EDF records), got {fs_ppg}")
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    fs_ppg = int(fs_ppg)
    n_epochs = max(1, int(round(hours * 3600 / WINDOW_SECONDS)))
    duration = n_epochs * WINDOW_SECONDS
    rng = subject_rng(seed, subject_id)
    start_clock = (datetime.datetime(2000, 1, 1, 20, 0) + datetime.timedelta(
        seconds=int(rng.integers(0, 4 * 3600)))).time()  # recordings start between 20:00 and 24:00
    states = simulate_states(rng, n_epochs)
    codes = score_states(rng, states)
    phys = simulate_physiology(rng, states)
    artefact_32 = movement_artefact(rng, phys["movements"], duration, FS_RESP)

    signals = {}  # channel -> EdfSignal (int16 inside, so each float array can go once converted)
    if with_ecg:  # own random stream: the other channels are the same with or without the EKG
        ecg = synth_ecg(subject_rng(seed, subject_id, 3), phys, duration, artefact_32)
        signals["EKG"] = _edf_signal(ecg, "EKG", FS_ECG)
        del ecg
    signals["EEG1"] = _edf_signal(synth_eeg(rng, phys, duration), "EEG1", FS_EEG)
    resp = synth_resp(rng, phys, duration, artefact_32)
    for channel, data in resp.items():
        signals[channel] = _edf_signal(data.copy(), channel, FS_RESP)
    signals["Pleth"] = _edf_signal(synth_ppg(rng, phys, duration, fs_ppg, artefact_32), "Pleth", fs_ppg,
                                   ppg_label)
    signals["SpO2"] = _edf_signal(phys["spo2_1hz"], "SpO2", 1)
    beats = phys["beats"]
    hr_1hz = np.round(np.interp(np.arange(duration) + 0.5, beats[1:], 60.0 / np.diff(beats)))
    signals["HR"] = _edf_signal(hr_1hz.copy(), "HR", 1)
    if full_montage:
        extra = synth_extra(subject_rng(seed, subject_id, 2), phys, duration, artefact_32, resp, hr_1hz)
        for channel in EXTRA_CHANNELS:
            signals[channel] = _edf_signal(extra.pop(channel), channel, CHANNELS[channel][0])

    edf = Edf([signals[c] for c in MESA_ORDER if c in signals], recording=Recording(startdate=EDF_START_DATE),
              starttime=start_clock, data_record_duration=1)
    edf_out = edf_path(out_root, subject_id, name_format)
    with atomic_output(edf_out) as tmp:
        edf.write(tmp)
    xml_outs = []
    for dialect in xml_dialects(xml_format):
        xml_outs.append(xml_path(out_root, subject_id, name_format, dialect))
        text = (build_xml(codes, _other_events(phys), duration, start_clock) if dialect == "nsrr"
                else build_profusion_xml(codes, phys))
        with atomic_output(xml_outs[-1]) as tmp:
            tmp.write_text(text)
    return edf_out, xml_outs[0]
