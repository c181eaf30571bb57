"""Staging nights with a trained PPG-only model: the per-night pipeline every input kind shares
(prepare -> forward -> outputs), its one error boundary per night, the run record and the run's metrics.

Pipeline (`run_pipeline`): each night is prepared (read, preprocessed or taken from the cache: a `prepare`
function of sleepppg.nights) in background threads, at most a few nights ahead; the nights that are ready are
forwarded in batches of at most `inference.batch_size`; each night's CSV and hypnograms are written in another
thread (sleepppg.outputs). Every step of one night runs inside `RunRecord.attempt`, the per-night boundary:
any exception becomes a listed failure (`failed` in result.json: subject, file, step, kind, reason) and the
other nights go on; only Ctrl-C stops the run, and what was staged before it is still recorded.

Forward (`predict_proba`): the model served with its BatchNorm layers folded into the convolutions
(`fold_batchnorm`: same outputs up to float rounding); on CUDA under bf16 autocast when asked; probabilities
in float32. Only recorded epochs are staged: a night's probabilities stop at its last recorded epoch, and the
epochs of a gap in the recording get NaN (not staged).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch

from sleepppg.cache import cache_settings
from sleepppg.constants import IGNORE_INDEX, N_CLASSES, SAMPLES_PER_WINDOW, WINDOW_SECONDS
from sleepppg.errors import SetupError
from sleepppg.metrics import compute_metrics, summary_stats
from sleepppg.nights import (
    Hdf5Selection,
    Night,
    NightJob,
    id_clash_reasons,
    prepare_edf_night,
    prepare_hdf5_night,
    prepare_labelled_night,
    refuse_clashing_night,
    unique_ids,
)
from sleepppg.outputs import OutputWriter, predicted_stages
from sleepppg.paths import OutputPathError
from sleepppg.quality import EpochPulse, epoch_pulse, ppg_quality, quality_warnings
from sleepppg.report import compared_reports, report_difference, sleep_report
from sleepppg.runio import json_safe

log = logging.getLogger("sleepppg.staging")
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------
# Model forward


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Inference-only speed-up, same outputs up to float rounding: inside every nn.Sequential, fold a
    BatchNorm1d (eval statistics) into the Conv1d before it, and let a LeakyReLU that follows another layer
    work in place (its input is a fresh intermediate). Modifies and returns `model` (in eval mode)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if isinstance(conv, torch.nn.Conv1d) and isinstance(bn, torch.nn.BatchNorm1d) and bn.track_running_stats:
                seq._modules[first] = fuse_conv_bn_eval(conv, bn)
                seq._modules[second] = torch.nn.Identity()
        for name in names[1:]:
            if isinstance(seq._modules[name], torch.nn.LeakyReLU):
                seq._modules[name].inplace = True
    return model


def predict_proba(model: torch.nn.Module, windows_BWS: np.ndarray, device: torch.device,
                  bf16: bool = False) -> np.ndarray:
    """Stage probabilities for a batch of nights.

    Args:
        windows_BWS: float32 (B, n_windows, 1024) preprocessed PPG.
        bf16: autocast to bfloat16 (CUDA only).
    Returns:
        float32 (B, n_windows, 4): softmax over the 4 classes of the model's logits.
    """
    if windows_BWS.ndim != 3 or windows_BWS.shape[2] != SAMPLES_PER_WINDOW:
        raise ValueError(f"expected (B, n_windows, {SAMPLES_PER_WINDOW}) windows, got {windows_BWS.shape}")
    B, W, S = windows_BWS.shape
    ppg_B1T = torch.from_numpy(np.ascontiguousarray(windows_BWS, dtype=np.float32)).reshape(B, 1, W * S)
    ppg_B1T = ppg_B1T.to(device, non_blocking=True)
    with torch.inference_mode():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
            logits_BCW = model(ppg_B1T)
        if logits_BCW.shape != (B, N_CLASSES, W):
            raise ValueError(f"model returned {tuple(logits_BCW.shape)}, expected {(B, N_CLASSES, W)}")
        probs_BWC = torch.softmax(logits_BCW.float(), dim=1).permute(0, 2, 1)
    return probs_BWC.cpu().numpy()


def stage_nights(model: torch.nn.Module, nights: list[Night], device: torch.device, bf16: bool) -> list[np.ndarray]:
    """Forward a batch of nights together; returns each night's probabilities (n_recorded, 4) over its staged
    epochs, NaN on the epochs of a gap in the recording."""
    windows_BWS = np.stack([n.ppg_windows_WS for n in nights])
    probs_BWC = predict_proba(model, windows_BWS, device, bf16)
    for i, night in enumerate(nights):
        probs_BWC[i, night.info.get("gap_epochs") or []] = np.nan  # gaps in the recording are not staged
    return [probs_BWC[i, :n.n_recorded] for i, n in enumerate(nights)]


# ----------------------------------------------------------------------------------------------------------
# The run record and its per-night boundary


@dataclasses.dataclass
class RunRecord:
    """What a run has done so far (kept up to date, so an interrupted run can still report it)."""

    nights: list[dict] = dataclasses.field(default_factory=list)  # result entries of staged nights
    failed: list[dict] = dataclasses.field(default_factory=list)  # {subject_id, file, step, kind, reason}
    scored: list[tuple[str, np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)  # (id, true, pred)

    def attempt(self, nights: Sequence[NightJob | Night], step: str, work: Callable[[], T],
                kind: str | None = None) -> T | None:
        """The per-night error boundary: run `work()` (which returns a value, never None) for `nights` at
        `step` ("reading", "staging", "writing outputs"). Whatever it raises (a file that breaks the reader, a
        flat PPG, a forward pass out of memory) is logged and listed as a failure of each of `nights`, and None
        is returned so the run goes on with the other nights. Ctrl-C (KeyboardInterrupt) and an output path
        refused by sleepppg.paths (a full disk, a link planted in the output tree: every later night would
        fail alike) pass through and stop the run.

        Args:
            kind: the failure's kind; default the exception's `kind` (BadRecordingError), else its type name.
        """
        try:
            return work()
        except OutputPathError:  # a refused output path, a full disk: every later night would fail alike
            raise
        except Exception as err:  # noqa: BLE001 - the one per-night boundary: whatever a broken night raises
            for night in nights:
                self._fail(night, step, err, kind)
            return None

    def _fail(self, job_or_night: NightJob | Night, step: str, err: Exception, kind: str | None) -> None:
        reason = f"{type(err).__name__}: {err}"
        path = getattr(job_or_night, "path", None) or getattr(job_or_night, "source_file", None)
        kind = kind or getattr(err, "kind", None) or type(err).__name__
        log.error("%s: failed while %s %s: %s", job_or_night.subject_id, step, path, reason)
        self.failed.append({"subject_id": job_or_night.subject_id, "file": str(Path(path).resolve()) if path else None,
                            "step": step, "kind": kind, "reason": reason})

    def add(self, entry: dict, scored: tuple[str, np.ndarray, np.ndarray] | None) -> None:
        """Record a staged night whose outputs are written: its result entry and (with labels) its hypnograms."""
        self.nights.append(entry)
        if scored is not None:
            self.scored.append(scored)


def night_entry(night: Night, probs_WC: np.ndarray, pulse: EpochPulse | None = None) -> tuple[dict, dict | None]:
    """The result.json entry of one staged night (outputs left to the writer) and its performance when it has
    labels. `pulse`: the night's `epoch_pulse` over its staged epochs, when the caller has it."""
    pred_W = predicted_stages(probs_WC)
    quality = ppg_quality(night.ppg_windows_WS, night.n_recorded, night.info.get("gap_epochs") or (), pulse)
    warnings = list(night.info.get("warnings") or []) + quality_warnings(quality)  # the reader's first
    if night.info.get("labels_error"):
        warnings.append(night.info["labels_error"])
    warnings += night.info.pop("labels_warnings", [])  # unknown stage values left unscored (not a key of its own)
    if night.info.get("windows_left_out"):
        left_out = night.info["windows_left_out"]
        warnings.append(f"{left_out['count']} of {night.n_recorded} windows not staged: {left_out['reason']}")
    if night.truncated:
        warnings.append(f"recording longer than the model's span: only its first "
                        f"{night.n_recorded * WINDOW_SECONDS / 3600:.2f} h are staged")
    for text in warnings:
        log.warning("%s: %s", night.subject_id, text)
    true_W = None if night.labels_W is None else night.labels_W[:night.n_recorded]
    # with scored stages, predicted and scored statistics cover the same epochs: those both staged and scored
    reports = None if true_W is None else compared_reports(true_W, pred_W)
    entry = {"subject_id": night.subject_id, "source_file": str(night.source_file),
             "n_epochs_staged": night.n_recorded, "hours_staged": night.n_recorded * WINDOW_SECONDS / 3600,
             "truncated": night.truncated, **night.info, "signal_quality": quality, "warnings": warnings,
             "sleep_report": sleep_report(pred_W) if reports is None else reports[0]}
    performance = None
    if true_W is not None:
        # only epochs both staged and scored are compared (a gap in the recording is not staged)
        m = compute_metrics(np.where(pred_W == IGNORE_INDEX, IGNORE_INDEX, true_W), pred_W)
        performance = {"accuracy": m["accuracy"], "kappa": json_safe(m["kappa"]), "n_epochs_compared": m["n_epochs"]}
        entry["performance"] = performance
    if reports is not None:
        entry["sleep_report_scored"] = reports[1]
        entry["sleep_report_difference"] = report_difference(*reports)
    return entry, performance


# ----------------------------------------------------------------------------------------------------------
# The per-night pipeline, shared by every input kind: prepare (read / preprocess / cache) -> stage -> write


def prefetch(jobs: Sequence, prepare: Callable, lookahead: int,
             workers: int = 1) -> Iterable[tuple[Any, concurrent.futures.Future, bool]]:
    """Run `prepare(job)` for each job in `workers` background threads, at most `lookahead` jobs ahead of
    the consumer, and yield (job, future, next_is_ready) in job order. The EDF reading and filtering of the
    next nights then overlap the model's forward pass of the current ones (scipy, numpy and torch release the
    GIL in their loops, so threads run in parallel), while memory stays bounded to `lookahead` nights."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as pool:
        pending: collections.deque = collections.deque()
        remaining = iter(jobs)
        for job in itertools.islice(remaining, max(1, lookahead)):
            pending.append((job, pool.submit(prepare, job)))
        try:
            while pending:
                job, future = pending.popleft()
                concurrent.futures.wait([future])
                nxt = next(remaining, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(prepare, nxt)))
                yield job, future, bool(pending) and pending[0][1].done()
        finally:
            for _, future in pending:  # consumer stopped early (error, Ctrl-C): drop the queued work
                future.cancel()


def _finish_night(night: Night, probs_WC: np.ndarray, writer: OutputWriter) -> tuple:
    """(the night as a job, without its signal; its entry; its scored hypnograms; the started output writes)."""
    pulse = epoch_pulse(night.ppg_windows_WS[:night.n_recorded])  # once: for result.json and the CSV's column
    entry, performance = night_entry(night, probs_WC, pulse)
    pred_W = predicted_stages(probs_WC)  # -1 on epochs not staged (a gap), which are then not compared
    scored = (None if night.labels_W is None else
              (night.subject_id, np.where(pred_W == IGNORE_INDEX, IGNORE_INDEX, night.labels_W[:night.n_recorded]),
               pred_W))
    return (NightJob(night.subject_id, night.source_file), entry, scored,
            writer.submit(night, probs_WC, performance, pulse.pulse_W))


def run_pipeline(model, jobs: Sequence[NightJob], prepare: Callable[[NightJob], Night], record: RunRecord, *,
                 device: torch.device, bf16: bool, batch_size: int, workers: int, run_dir: Path | None,
                 flags: dict) -> None:
    """Stage `jobs`: `prepare` each night in `workers` background threads, forward the nights that are ready in
    batches of at most `batch_size` (never waiting for a night while others are ready, so preparing and forward
    overlap), write the outputs in another thread. Each step of a night runs inside `record.attempt`, so a
    night that fails is listed in `record.failed` and the others go on; a night enters `record.nights` once
    its outputs are written, so an interrupted run still reports the nights finished before it.

    A new input format plugs in with its own `prepare(job) -> Night`.
    """
    from tqdm import tqdm

    writing: collections.deque = collections.deque()  # (job, entry, scored, future of outputs), staging order

    def record_written(wait: bool) -> None:
        while writing and (wait or writing[0][3].done()):
            job, entry, scored, future = writing.popleft()
            outputs = record.attempt([job], "writing outputs", future.result, kind="write_failed")
            if outputs is not None:
                entry["outputs"] = outputs
                record.add(entry, scored)

    def stage(nights: list[Night]) -> None:
        probs = record.attempt(nights, "staging", functools.partial(stage_nights, model, nights, device, bf16))
        for night, probs_WC in zip(nights, probs or ()):
            staged = record.attempt([night], "staging", functools.partial(_finish_night, night, probs_WC, writer))
            if staged is not None:
                writing.append(staged)
        bar.update(len(nights))
        record_written(wait=False)

    with OutputWriter(run_dir, flags) as writer, tqdm(total=len(jobs), desc="nights", unit="night",
                                                      disable=None) as bar:
        try:
            batch: list[Night] = []
            for job, future, next_ready in prefetch(jobs, prepare, batch_size + workers, workers):
                night = record.attempt([job], "reading", future.result)
                if night is None:
                    bar.update(1)
                else:
                    batch.append(night)
                if batch and (len(batch) == batch_size or not next_ready):
                    stage(batch)
                    batch = []
            if batch:
                stage(batch)
        finally:
            record_written(wait=True)


def run_edf_mode(model, n_windows: int, cfg: dict, edf_paths: list[Path], run_dir: Path | None,
                 device: torch.device, flags: dict, record: RunRecord | None = None,
                 label_files: dict[str, Path] | None = None) -> RunRecord:
    """Stage every EDF, or with inference.ppg_file every recording of any format (preprocessed, or read from
    the cache); with `label_files` (sleepppg.scoring.find_label_files) each night with a label file is staged
    with its scored stages, as in HDF5 mode; returns the run record."""
    pre_cfg, inf_cfg = cfg["preprocessing"], cfg["inference"]
    record = RunRecord() if record is None else record
    jobs = [NightJob(sid, path) for sid, path in zip(unique_ids(edf_paths, pre_cfg["id_pattern"]), edf_paths)]
    # preprocessing threads: preprocessing.workers (0 = one per CPU core). On a GPU box they keep the GPU fed;
    # on a small CPU box the forward pass dominates and extra threads simply wait.
    workers = max(1, min(pre_cfg["workers"] or os.cpu_count() or 1, len(jobs)))
    prepare = functools.partial(prepare_edf_night, cache_root=Path(inf_cfg["cache_root"]),
                                settings=cache_settings(cfg, n_windows))
    clashes = id_clash_reasons(edf_paths, pre_cfg["id_pattern"])  # S3 and S003: both refused, by both names
    if clashes:
        prepare = functools.partial(refuse_clashing_night, prepare=prepare, clashes=clashes)
    if label_files:
        prepare = functools.partial(prepare_labelled_night, prepare=prepare, label_files=label_files,
                                    n_windows=n_windows)
    run_pipeline(model, jobs, prepare, record, device=device, bf16=cfg["gpu"]["mixed_precision"],
                 batch_size=inf_cfg["batch_size"], workers=workers, run_dir=run_dir, flags=flags)
    return record


def run_hdf5_mode(model, n_windows: int, cfg: dict, sel: Hdf5Selection, run_dir: Path | None,
                  device: torch.device, flags: dict, record: RunRecord | None = None) -> RunRecord:
    """Stage the selected test nights from the processed HDF5 file; returns the run record (with the scored
    hypnograms for the metrics).

    Raises:
        SetupError: the processed PPG file cannot be opened.
    """
    import h5py

    record = RunRecord() if record is None else record
    jobs = [NightJob(sid, sel.ppg_file, sel.starts[sid]) for sid in sel.subjects]
    try:
        ppg_h5 = h5py.File(sel.ppg_file, "r")
    except OSError as err:
        raise SetupError(f"cannot open the processed PPG file {sel.ppg_file}: {err}") from None
    with ppg_h5:  # one reading thread: h5py serialises access to a file anyway
        run_pipeline(model, jobs, functools.partial(prepare_hdf5_night, ppg_h5=ppg_h5, n_windows=n_windows),
                     record, device=device, bf16=cfg["gpu"]["mixed_precision"],
                     batch_size=cfg["inference"]["batch_size"], workers=1, run_dir=run_dir, flags=flags)
    return record


def run_metrics(record: RunRecord) -> dict | None:
    """Per-subject mean/std and pooled metrics over the staged nights with labels (None when there are none)."""
    if not record.scored:
        return None
    by_sid = {e["subject_id"]: e["performance"] for e in record.nights if "performance" in e}
    accs = [by_sid[sid]["accuracy"] for sid, _, _ in record.scored]
    kappas = [by_sid[sid]["kappa"] for sid, _, _ in record.scored if by_sid[sid]["kappa"] is not None]
    pooled = compute_metrics(np.concatenate([t for _, t, _ in record.scored]),
                             np.concatenate([p for _, _, p in record.scored]),
                             np.concatenate([np.full(t.size, sid) for sid, t, _ in record.scored]))
    acc_stats, kappa_stats = summary_stats(accs), summary_stats(kappas)
    return {"subjects": len(record.scored), "acc_mean": acc_stats["mean"], "acc_std": acc_stats["std"],
            "kappa_mean": kappa_stats["mean"], "kappa_std": kappa_stats["std"],
            "kappa_median": kappa_stats["median"], "per_subject_accuracy": acc_stats,
            "per_subject_kappa": kappa_stats, "pooled": pooled}
