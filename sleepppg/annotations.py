"""Sleep stages from annotation XML, in two dialects told apart by the root element:

- NSRR XML (`PSGAnnotation`): `ScoredEvent`s with `EventType` `Stages|Stages`, runs of 30-s epochs;
- Compumedics Profusion XML (`CMPStudyConfig`): one `<SleepStage>` integer per `<EpochLength>`-s epoch.

Both give one label per 30-s epoch from the recording start: Wake 0, N1/N2 Light 1, N3/stage 4 Deep 2, REM 3,
-1 unscored; stage spellings are read by the one table of sleepppg.stages (`wake|0`, `REM|5`, codes 0-5), and
an unknown one is counted and reported by value, or refuses the night when it covers half of it or more.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np

from sleepppg.constants import IGNORE_INDEX, WINDOW_SECONDS, WINDOWS_PER_SUBJECT
from sleepppg.errors import BadRecordingError
from sleepppg.stages import RK_CODES, nsrr_concept_class, rk_code_class, unknown_stage_report

log = logging.getLogger("sleepppg.annotations")

NSRR_ROOT = "PSGAnnotation"  # root element of NSRR XML
PROFUSION_ROOT = "CMPStudyConfig"  # root element of Compumedics Profusion XML
# Profusion <SleepStage> integer -> 4-class label: the R&K codes of sleepppg.stages (0 Wake, 1 N1 / 2 N2 -> Light,
# 3 N3 / 4 stage 4 -> Deep, 5 REM, 6 movement / 9 unscored -> -1); another integer is an unknown stage
PROFUSION_STAGE_TO_CLASS = RK_CODES
EPOCH_TOLERANCE = 1e-6  # in epochs: XML times like 29.9999999 s count as the 30-s boundary


# ----------------------------------------------------------------------------------------------------------
# Labels: NSRR and Profusion XML -> Wake 0, Light 1 (N1, N2), Deep 2 (N3, stage 4), REM 3, -1 otherwise


def _child_text(event: ET.Element, tag: str) -> str | None:
    child = event.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def _parse_xml(xml_path: str | os.PathLike) -> ET.Element:
    """The root element of an annotation file; BadRecordingError 'missing_xml', 'unreadable_xml' (no read
    permission, an I/O error) or 'malformed_xml' (not well-formed XML)."""
    try:
        with open(xml_path, "rb") as fh:
            return ET.parse(fh).getroot()
    except FileNotFoundError:
        raise BadRecordingError(f"XML not found: {xml_path}", kind="missing_xml") from None
    except PermissionError:
        raise BadRecordingError(f"unreadable XML {xml_path}: no permission to read it", kind="unreadable_xml") from None
    except OSError as err:
        raise BadRecordingError(f"unreadable XML {xml_path}: {err.strerror or err}", kind="unreadable_xml") from None
    except (ET.ParseError, UnicodeDecodeError, ValueError) as err:
        raise BadRecordingError(f"malformed XML {xml_path}: {err}", kind="malformed_xml") from None


def xml_to_labels(xml_path: str | os.PathLike, n_windows: int = WINDOWS_PER_SUBJECT,
                  warnings: list[str] | None = None) -> np.ndarray:
    """Annotation XML -> one 4-class label per 30-s epoch (Wake 0, Light 1, Deep 2, REM 3, -1 unscored).

    The dialect is read from the root element: `PSGAnnotation` is NSRR XML (`nsrr_labels`), `CMPStudyConfig`
    is Compumedics Profusion XML (`profusion_labels`). Both give the same labels for the same scoring.

    Args:
        warnings: a list that gets the night's warnings (unknown stage values left unscored), if given.
    Returns:
        int64 array (n_windows,).
    Raises:
        BadRecordingError with `path` = the XML: kind 'missing_xml', 'unreadable_xml', 'malformed_xml',
            'no_stage_events', 'unknown_xml_dialect' (a root of neither dialect: no stages are guessed from it),
            'unknown_stages' (half of the stage epochs or more carry unknown values) or
            'unsupported_epoch_length'.
    """
    try:
        root = _parse_xml(xml_path)
        name = Path(xml_path).name
        if root.tag in (NSRR_ROOT, PROFUSION_ROOT):
            found: list[str] = []
            read = nsrr_labels if root.tag == NSRR_ROOT else profusion_labels
            labels = read(root, name, n_windows, found)
            if warnings is None:  # nobody collects them: the log is where they are seen
                for text in found:
                    log.warning("%s", text)
            else:
                warnings.extend(found)
            return labels
        raise BadRecordingError(f"{name}: neither NSRR XML (root <{NSRR_ROOT}>) nor Profusion XML (root "
                                f"<{PROFUSION_ROOT}>): the root element is <{root.tag}>", kind="unknown_xml_dialect")
    except BadRecordingError as err:
        err.path = str(xml_path)  # the failure list names the XML, not the EDF
        raise


def nsrr_labels(root: ET.Element, name: str, n_windows: int = WINDOWS_PER_SUBJECT,
                warnings: list[str] | None = None) -> np.ndarray:
    """NSRR XML stage runs -> one 4-class label per 30-s epoch.

    Epoch i covers [30 i, 30 i + 30) s from the recording start; a stage event (EventType 'Stages|Stages')
    labels every epoch whose start lies in [Start, Start + Duration). Where runs overlap, the later event in
    the file wins. Concepts map through sleepppg.stages.nsrr_concept_class (Movement and Unscored -> -1);
    epochs no run covers stay -1; events past `n_windows` epochs are ignored. An unknown concept leaves its
    epochs -1 and is counted (sleepppg.stages.unknown_stage_report).

    Args:
        root: the parsed `<PSGAnnotation>` element; name: the file name, for messages.
        warnings: gets a warning naming the unknown concepts and their epochs, if any.
    Raises:
        BadRecordingError: kind 'malformed_xml' (a stage event without a numeric Start/Duration),
            'no_stage_events' or 'unknown_stages'.
    """
    labels = np.full(n_windows, IGNORE_INDEX, dtype=np.int64)
    n_stage_events, n_stage_epochs, unknown = 0, 0, Counter()
    for event in root.iter("ScoredEvent"):
        if _child_text(event, "EventType") != "Stages|Stages":
            continue
        n_stage_events += 1
        concept = _child_text(event, "EventConcept")
        try:
            start = float(_child_text(event, "Start"))
            duration = float(_child_text(event, "Duration"))
        except (TypeError, ValueError):
            raise BadRecordingError(f"{name}: stage event {n_stage_events} has no numeric "
                                    "Start/Duration", kind="malformed_xml") from None
        if not math.isfinite(start + duration) or duration <= 0:  # NaN, inf, or a sum that overflows
            continue
        first = max(0, math.ceil(start / WINDOW_SECONDS - EPOCH_TOLERANCE))
        stop = min(n_windows, math.ceil((start + duration) / WINDOW_SECONDS - EPOCH_TOLERANCE))
        if first < stop:
            label = nsrr_concept_class(concept)
            n_stage_epochs += stop - first
            if label is None:
                unknown[concept] += stop - first
            labels[first:stop] = IGNORE_INDEX if label is None else label
    if n_stage_events == 0:
        raise BadRecordingError(f"{name}: no stage events (EventType 'Stages|Stages')", kind="no_stage_events")
    found = unknown_stage_report(unknown, n_stage_epochs, name)
    if warnings is not None:
        warnings.extend(found)
    return labels


def profusion_labels(root: ET.Element, name: str, n_windows: int = WINDOWS_PER_SUBJECT,
                     warnings: list[str] | None = None) -> np.ndarray:
    """Compumedics Profusion XML -> one 4-class label per 30-s epoch.

    Profusion lists one `<SleepStage>` integer per scoring epoch of `<EpochLength>` seconds, from the recording
    start, inside `<SleepStages>`: 0 Wake, 1 N1, 2 N2, 3 N3, 4 stage 4, 5 REM, 6 movement and 9 unscored
    (PROFUSION_STAGE_TO_CLASS, the same classes as the NSRR concepts); another integer is an unknown stage, left
    unscored and counted (sleepppg.stages.unknown_stage_report, in Profusion epochs). With 30-s epochs stage i is
    the label of epoch i. Another EpochLength is put onto 30-s epochs exactly: a 30-s epoch gets a label when every
    Profusion epoch overlapping it has that label, else -1 (it mixes stages, or runs past the scoring).

    Args:
        root: the parsed `<CMPStudyConfig>` element; name: the file name, for messages.
    Raises:
        BadRecordingError: kind 'no_stage_events' (no `<SleepStage>`), 'malformed_xml' (a stage that is not an
            integer), 'unknown_stages' or 'unsupported_epoch_length' (EpochLength missing, not a number or not
            > 0).
    """
    stages = root.findall("SleepStages/SleepStage")
    if not stages:
        raise BadRecordingError(f"{name}: Profusion XML without stages (no <SleepStages>/<SleepStage>)",
                                kind="no_stage_events")
    epoch_text = (root.findtext("EpochLength") or "").strip()
    try:
        epoch_s = Fraction(epoch_text).limit_denominator(1000)
    except (ValueError, ZeroDivisionError):
        epoch_s = None
    if epoch_s is None or epoch_s <= 0:
        raise BadRecordingError(f"{name}: EpochLength {epoch_text!r} is not a positive number of seconds",
                                kind="unsupported_epoch_length")
    classes = np.empty(len(stages), dtype=np.int64)
    unknown = Counter()
    for i, stage in enumerate(stages):
        try:
            code = int((stage.text or "").strip())
        except ValueError:
            raise BadRecordingError(f"{name}: SleepStage {i + 1} is not an integer: {stage.text!r}",
                                    kind="malformed_xml") from None
        label = rk_code_class(code)
        if label is None:
            unknown[str(code)] += 1
        classes[i] = IGNORE_INDEX if label is None else label
    found = unknown_stage_report(unknown, len(stages), name, unit="Profusion epoch")
    if warnings is not None:
        warnings.extend(found)
    labels = np.full(n_windows, IGNORE_INDEX, dtype=np.int64)
    n_mixed = 0
    for j in range(n_windows):
        first = WINDOW_SECONDS * j // epoch_s  # Profusion epochs overlapping [30 j, 30 j + 30)
        stop = math.ceil(Fraction(WINDOW_SECONDS * (j + 1)) / epoch_s)
        if stop > classes.size:
            break
        covering = classes[first:stop]
        if (covering == covering[0]).all():
            labels[j] = covering[0]
        else:
            n_mixed += 1
    if epoch_s != WINDOW_SECONDS:
        log.info("%s: Profusion epochs of %s s put onto 30-s epochs; %d of them mix stages and are left "
                 "unscored (-1)", name, epoch_s, n_mixed)
    return labels
