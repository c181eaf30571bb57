"""The inputs of a validation report: per-night CSVs written by inference, the run that made them, and subject
metadata (NSRR's harmonized table).

A night CSV (`<run>/csv/<id>/<id>.csv`, inference_ppg_only.write_csv) has one row per staged epoch, columns
epoch,time_hours,pred_idx,pred_name,true_idx,true_name,mismatch,p_wake,p_light,p_deep,p_rem,pulse (pulse is
not read here); a gap epoch has an empty pred_idx and empty probabilities, an unscored epoch an empty
true_idx. The night's ID is the file stem. Epochs are compared only where they are both staged (a prediction)
and scored (a label).

NSRR writes `nsrrid` without leading zeros (1, 10) while MESA file names keep them (0001): IDs are matched on
the one ID rule (sleepppg.ids.id_key: leading zeros and letter case ignored).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from sleepppg.constants import IGNORE_INDEX, N_CLASSES
from sleepppg.errors import BadRecordingError, SetupError
from sleepppg.ids import id_key

PROBA_COLUMNS = ("p_wake", "p_light", "p_deep", "p_rem")  # softmax outputs, in class order 0..3
REQUIRED_COLUMNS = ("epoch", "pred_idx", "true_idx", *PROBA_COLUMNS)
POOLED = "pooled"  # the report's row of all nights together: no night may have this ID
NSRR_ID_COLUMN = "nsrrid"
# NSRR harmonized variables: age (years), sex (male/female), BMI (kg/m2), AHI (events/h: >= 3% desaturation or
# arousal, AASM 2015 hypopnea rule)
NSRR_COVARIATES = ("nsrr_age", "nsrr_sex", "nsrr_bmi", "nsrr_ahi_hp3r_aasm15")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Night:
    """One night in time order, epoch e at index e (epochs missing from the CSV are neither staged nor scored).

    pred_E / true_E: stage 0..3, -1 where not staged (a gap) / not scored; probs_EC: (n_epochs, 4), NaN where
    not staged.
    """

    night_id: str
    path: Path
    pred_E: np.ndarray
    true_E: np.ndarray
    probs_EC: np.ndarray

    @property
    def compared_E(self) -> np.ndarray:
        """True where the epoch is both staged and scored: the only epochs any statistic uses."""
        return (self.pred_E != IGNORE_INDEX) & (self.true_E != IGNORE_INDEX)


def find_night_csvs(paths: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """The night CSVs: each PATH is a CSV file or a folder searched recursively for *.csv (files under
    `exclude`, the report's own output folder, are skipped).

    Raises:
        SetupError: a PATH that does not exist, no CSV at all, or two CSVs with the same stem (the night ID).
    """
    exclude = None if exclude is None else Path(exclude).resolve()
    found: list[Path] = []
    for spec in paths:
        path = Path(spec)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(p for p in path.rglob("*.csv")
                            if p.is_file() and (exclude is None or not p.resolve().is_relative_to(exclude)))
        else:
            raise SetupError(f"input not found: {path}")
    if not found:
        raise SetupError(f"no night CSV (*.csv) found in {', '.join(str(p) for p in paths)}")
    by_id: dict[str, Path] = {}
    for path in found:
        if path.stem == POOLED:
            raise SetupError(f"{path}: '{POOLED}' names the row of all nights together; rename the file")
        if path.stem in by_id and by_id[path.stem].resolve() != path.resolve():
            raise SetupError(f"two CSVs for night {path.stem}: {by_id[path.stem]} and {path}; give one run's folder")
        by_id[path.stem] = path
    return list(by_id.values())


def _stage_column(values, name: str, path: Path) -> np.ndarray:
    """A stage column (0..3, empty = -1) as int64; BadRecordingError naming the file on anything else."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    text_given = values.notna() & (values.astype(str).str.strip() != "")
    bad = (text_given & numbers.isna()) | (numbers.notna() & ~numbers.isin(range(N_CLASSES)))
    if bad.any():
        raise BadRecordingError(f"{path}: column {name} holds {values[bad].iloc[0]!r} (row {int(bad.idxmax()) + 2}); "
                                f"expected 0..{N_CLASSES - 1} or empty", kind="bad_csv", path=path)
    return numbers.fillna(IGNORE_INDEX).to_numpy(dtype=np.int64)


def read_night(path: str | os.PathLike) -> Night:
    """Read one night CSV (format in the module docstring).

    Raises:
        BadRecordingError (kind "bad_csv"): the file cannot be read, lacks a column, or holds a value out of range.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise BadRecordingError(f"{path}: cannot read it as a CSV: {' '.join(str(err).split())[:200]}",
                                kind="bad_csv", path=path) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise BadRecordingError(f"{path}: not a night CSV of inference (missing column {', '.join(missing)})",
                                kind="bad_csv", path=path)
    epochs = pd.to_numeric(table["epoch"], errors="coerce")
    if epochs.isna().any() or (epochs < 0).any() or (epochs % 1 != 0).any() or not epochs.is_monotonic_increasing \
            or epochs.duplicated().any():
        raise BadRecordingError(f"{path}: the epoch column must be distinct whole numbers >= 0 in increasing order",
                                kind="bad_csv", path=path)
    pred, true = _stage_column(table["pred_idx"], "pred_idx", path), _stage_column(table["true_idx"], "true_idx", path)
    probs = table[list(PROBA_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    staged = pred != IGNORE_INDEX
    if np.isnan(probs[staged]).any() or not np.allclose(probs[staged].sum(axis=1), 1.0, atol=1e-3):
        raise BadRecordingError(f"{path}: a staged epoch lacks probabilities, or they do not sum to 1",
                                kind="bad_csv", path=path)
    # place each row at its epoch; epochs absent from the file are neither staged nor scored
    n = int(epochs.max()) + 1 if len(epochs) else 0
    index = epochs.to_numpy(dtype=np.int64)
    pred_E, true_E = np.full(n, IGNORE_INDEX, np.int64), np.full(n, IGNORE_INDEX, np.int64)
    probs_EC = np.full((n, N_CLASSES), np.nan)
    pred_E[index], true_E[index] = pred, true
    probs_EC[index[staged]] = probs[staged]
    return Night(path.stem, path, pred_E, true_E, probs_EC)


RUN_RESULTS = ("result.json", "test_results.json")  # inference's run record; training's results/ record


def run_checkpoints(csv_paths: Sequence[Path]) -> list[dict]:
    """The checkpoint of each run the CSVs come from: `<run>/csv/<id>/<id>.csv` -> the `checkpoint` entry (path,
    sha256, model_kind, epoch) of `<run>/result.json` (inference) or `<run>/test_results.json` (a training
    run's results/ folder); an unreadable file is logged and left out."""
    runs = sorted({p.resolve().parents[2] for p in csv_paths if p.resolve().parent.parent.name == "csv"})
    found = []
    for run in runs:
        for result in (run / name for name in RUN_RESULTS):
            if not result.is_file():
                continue
            try:
                checkpoint = json.loads(result.read_text()).get("checkpoint") or {}
            except (OSError, ValueError, AttributeError) as err:
                log.warning("cannot read the checkpoint from %s: %s", result, err)
                continue
            if checkpoint.get("path"):
                keys = ("path", "sha256", "model_kind", "epoch")
                found.append({"run": str(run), **{k: checkpoint.get(k) for k in keys}})
    return found


def read_metadata(path: str | os.PathLike, id_column: str = NSRR_ID_COLUMN,
                  covariates: Sequence[str] = NSRR_COVARIATES):
    """Subject metadata: one row per subject, indexed by the zero-free ID, with the covariate columns (numbers
    where a column is numeric; empty cells NaN).

    Raises:
        SetupError: the file cannot be read; the ID column or a covariate column is missing (named, with the
            columns the file has); two rows for the same subject.
    """
    import pandas as pd

    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise SetupError(f"cannot read metadata {path}: {' '.join(str(err).split())[:200]}") from None
    for column, flag in [(id_column, "--id-column"), *[(c, "--covariates") for c in covariates]]:
        if column not in table.columns:
            raise SetupError(f"metadata {path} has no column {column!r} ({flag}); its columns: "
                             f"{', '.join(table.columns[:30])}")
    ids = table[id_column].fillna("").str.strip()
    if (ids == "").any():
        raise SetupError(f"metadata {path}: row {int((ids == '').idxmax()) + 2} has no {id_column}")
    table.index = pd.Index([id_key(i) for i in ids], name="subject")
    duplicated = table.index[table.index.duplicated()]
    if len(duplicated):
        raise SetupError(f"metadata {path}: subject {duplicated[0]} has more than one row ({id_column})")
    out = table[list(covariates)].copy()
    for column in covariates:
        numbers = pd.to_numeric(out[column], errors="coerce")
        if numbers.notna().sum() == out[column].notna().sum():  # every given value is a number
            out[column] = numbers
    return out


def match_metadata(night_ids: Sequence[str], metadata) -> tuple:
    """The metadata row of each night (by sleepppg.ids.id_key; all NaN where there is none), the nights without.

    Returns:
        (DataFrame indexed by night ID, list of night IDs without metadata)
    """
    keys = [id_key(n) for n in night_ids]
    rows = metadata.reindex(keys)
    rows.index = list(night_ids)
    missing = [n for n, k in zip(night_ids, keys) if k not in metadata.index]
    return rows, missing
