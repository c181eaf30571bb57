"""Evaluation of a model on a whole split (validation after each epoch, test at the end), the test results a
run writes, and the summary over several runs.

`evaluate` stages every night of a loader (each rank its share under DDP), gathers the shares, keeps each
night once and returns the loss over scored epochs (unweighted, as the reference) with the pooled metrics
(accuracy, Cohen's kappa, weighted F1, per-class report, confusion matrix) and the per-subject kappa
(its median is the paper's headline figure).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sleepppg.checkpoints import file_sha256
from sleepppg.constants import IGNORE_INDEX
from sleepppg.distributed import DistContext, autocast
from sleepppg.figures import confusion_figure, save_figure
from sleepppg.metrics import compute_metrics, summary_stats
from sleepppg.runio import write_json
from sleepppg.runstate import RunSetup, TrainState
from sleepppg.trainingdata import batch_on_device, nonfinite_error, nonfinite_inputs, nonfinite_nights

log = logging.getLogger("sleepppg.evaluation")

SUMMARY_KEYS = ("test_accuracy_overall", "test_kappa_overall", "test_f1_overall", "test_median_kappa")


@torch.no_grad()
def predict(model, loader, device, *, n_inputs: int, amp: bool, progress: bool, desc: str,
            subjects: list[str], keep_probs: bool = False) -> dict:
    """Predictions of this rank's share of a loader built with return_index=True.

    Returns {"index": (N,), "preds": (N, W) int8, "labels": (N, W) int8, "loss_sum": (N,), "n_valid": (N,),
    "nonfinite": [[subject, input name], ...]} where loss_sum is the unweighted cross-entropy summed over each
    night's scored epochs and nonfinite lists this share's nights with NaN/Inf signals (read with the predictions,
    no sync of its own; `evaluate` raises on them once every rank has finished); with `keep_probs` also
    "probs": (N, W, 4) float32, the softmax of the logits (the test set's per-night CSVs).
    """
    from tqdm import tqdm

    model.eval()
    parts: dict[str, list] = {"index": [], "preds": [], "labels": [], "loss_sum": [], "n_valid": []}
    nonfinite: list[list[str]] = []
    if keep_probs:
        parts["probs"] = []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        inputs, labels_BW, index_B = batch_on_device(batch, n_inputs, device)
        nonfinite += nonfinite_nights(nonfinite_inputs(inputs), index_B, subjects)
        with autocast(device, amp):
            logits_BCW = model(*inputs)
        loss_BW = F.cross_entropy(logits_BCW.float(), labels_BW, ignore_index=IGNORE_INDEX, reduction="none")
        parts["index"].append(index_B.cpu().numpy())
        parts["preds"].append(logits_BCW.argmax(dim=1).to(torch.int8).cpu().numpy())
        parts["labels"].append(labels_BW.to(torch.int8).cpu().numpy())
        parts["loss_sum"].append(loss_BW.double().sum(dim=1).cpu().numpy())
        parts["n_valid"].append((labels_BW != IGNORE_INDEX).sum(dim=1).cpu().numpy())
        if keep_probs:
            parts["probs"].append(torch.softmax(logits_BCW.float(), dim=1).permute(0, 2, 1).cpu().numpy())
    if not parts["index"]:
        empty = {"index": np.zeros(0, dtype=np.int64), "preds": None, "labels": None,
                 "loss_sum": np.zeros(0), "n_valid": np.zeros(0, dtype=np.int64), "nonfinite": nonfinite}
        return {**empty, "probs": None} if keep_probs else empty
    return {**{k: np.concatenate(v) for k, v in parts.items()}, "nonfinite": nonfinite}


def merge_predictions(parts: list[dict]) -> dict:
    """Merge the shares of all ranks, keep each night once (DistributedSampler pads with repeats), sort by index."""
    parts = [{k: v for k, v in p.items() if k != "nonfinite"} for p in parts if p["index"].size]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["index"], return_index=True)
    return {k: v[first] for k, v in merged.items()}


def evaluation_metrics(pred: dict, subjects: list[str]) -> dict:
    """Loss over scored epochs plus compute_metrics (pooled and per-subject) for merged predictions."""
    labels_NW = pred["labels"].astype(np.int64)
    preds_NW = pred["preds"].astype(np.int64)
    sids_NW = np.broadcast_to(np.asarray(subjects, dtype=object)[pred["index"]][:, None], labels_NW.shape)
    metrics = compute_metrics(labels_NW, preds_NW, sids_NW)
    metrics["loss"] = float(pred["loss_sum"].sum() / max(int(pred["n_valid"].sum()), 1))
    metrics["median_kappa"] = metrics["per_subject_kappa_stats"]["median"]
    metrics["n_nights"] = int(labels_NW.shape[0])
    return metrics


def evaluate(model, loader, subjects, device, ctx: DistContext, *, n_inputs: int, amp: bool, desc: str,
             keep_probs: bool = False):
    """Whole-set metrics (gathered from every rank) and the merged predictions (with `keep_probs`, their
    probabilities too).

    Returns:
        (metrics, predictions): `evaluation_metrics` of the whole set, and the merged `predict` output.
    """
    share = predict(model, loader, device, n_inputs=n_inputs, amp=amp, progress=ctx.is_main, desc=desc,
                    subjects=subjects, keep_probs=keep_probs)
    shares = ctx.all_gather(share)
    bad = [night for s in shares for night in s["nonfinite"]]
    if bad:  # every rank raises the same error, after the gather: none is left waiting
        raise nonfinite_error(desc, bad)
    merged = merge_predictions(shares)
    if merged["index"].size != len(subjects):
        raise RuntimeError(f"{desc}: predictions cover {merged['index'].size} of {len(subjects)} nights")
    return evaluation_metrics(merged, subjects), merged


def build_test_results(run: RunSetup, state: TrainState, test: dict, tested: dict, tested_path: Path) -> dict:
    """The contents of results/test_results.json.

    Args:
        run: the run; state: its state at the end of training.
        test: `evaluate`'s metrics on the test set; tested: the checkpoint that was tested, read from
            `tested_path`.
    """
    stats = test["per_subject_kappa_stats"]
    return {
        "model_type": run.kind,
        "run_id": run.run_id,
        "seed": run.seed,
        "test_loss": test["loss"],
        "test_accuracy_overall": test["accuracy"],
        "test_kappa_overall": test["kappa"],
        "test_f1_overall": test["f1_weighted"],
        "test_median_kappa": test["median_kappa"],
        "classification_report": test["classification_report"],
        "confusion_matrix": test["confusion_matrix"],
        "training_history": state.history,
        "timing": state.timing,
        "best_epoch": state.best_epoch,  # 0: none (the last epoch was tested)
        "tested_epoch": int(tested["epoch"]),
        # the validation report of the test nights names the checkpoint it evaluates (path and sha256)
        "checkpoint": {"path": str(Path(tested_path).resolve()), "sha256": file_sha256(tested_path),
                       "model_kind": run.kind, "epoch": int(tested["epoch"])},
        "best_val_loss": tested["early_stopping"]["best_val_loss"],
        "select_best_by": state.select_best_by,
        "best_value": state.best_value,
        "parent_checkpoint": run.parent,
        "epochs_trained": state.epoch,
        "stopped_early": state.stopped,
        "patient_kappa_stats": {"n": stats["n"], "min": stats["min"], "max": stats["max"],
                                "mean": stats["mean"], "std": stats["std"], "median": stats["median"],
                                "25_percentile": stats["q1"], "75_percentile": stats["q3"]},
        "per_subject_kappa": test["per_subject_kappa"],
        "undefined_kappa_subjects": test["undefined_kappa_subjects"],
        "n_test_subjects": test["n_nights"],
        "n_test_epochs": test["n_epochs"],
        "test_subjects": list(run.datasets["test"].subjects),
        "class_weights": [float(w) for w in run.class_weights],
        "device": str(run.device),
        "world_size": run.ctx.world_size,
        "output_dir": str(run.run_dir),
    }


def write_test_results(results_dir: Path, results: dict) -> Path:
    """results/test_results.json and the test confusion matrix (confusion_matrix_epoch_final.png), both written
    atomically; an OSError (a full disk) names the file. Returns the JSON's path."""
    path = results_dir / "test_results.json"
    figure = results_dir / "confusion_matrix_epoch_final.png"
    try:
        write_json(path, results)
    except OSError as err:
        err.filename = str(path)
        raise
    try:
        save_figure(confusion_figure(results["confusion_matrix"], "Test, best checkpoint"), figure)
    except OSError as err:
        err.filename = str(figure)
        raise
    return path


def write_test_nights(csv_dir: Path, subjects: list[str], pred: dict) -> Path:
    """The test nights as inference's per-night CSVs (`<csv_dir>/<id>/<id>.csv`, sleepppg.outputs.write_csv),
    the input of the validation report. A night's rows stop at its last scored epoch: the rest of the
    1,200 windows is padding. Returns csv_dir.

    Args:
        pred: `evaluate`'s merged predictions with "probs" (keep_probs=True).
    """
    from sleepppg.outputs import write_csv

    for index, labels_W, probs_WC in zip(pred["index"], pred["labels"].astype(np.int64), pred["probs"]):
        sid = subjects[int(index)]
        scored = np.flatnonzero(labels_W != IGNORE_INDEX)
        n_epochs = int(scored[-1]) + 1 if scored.size else labels_W.size
        write_csv(csv_dir / sid / f"{sid}.csv", probs_WC[:n_epochs], true_W=labels_W[:n_epochs])
    return csv_dir


def summarize_runs(all_results: dict[str, list[dict]]) -> dict:
    """mean/median/std (and values) of the pooled test metrics over runs, per model."""
    summary = {}
    for kind, results in all_results.items():
        summary[kind] = {}
        for key in SUMMARY_KEYS:
            values = [r[key] for r in results if r[key] is not None and math.isfinite(r[key])]
            stats = summary_stats(values)
            summary[kind][key] = {"mean": stats["mean"], "median": stats["median"], "std": stats["std"],
                                  "values": values}
    return summary


def write_test_validation(results_dir: Path, subjects: list[str], test_pred: dict, evaluation_cfg: dict) -> None:
    """The test nights' CSVs in `results_dir`/csv/ and, with evaluation.validation_report, their validation
    report in `results_dir`/validation/; a report that cannot be made is a warning: the tested run stands."""
    from sleepppg.validation_study import report_after_run

    try:
        csv_dir = write_test_nights(results_dir / "csv", subjects, test_pred)
    except OSError as err:
        log.warning("no validation report: cannot write the test nights' CSVs: %s", err)
        return
    if not evaluation_cfg["validation_report"]:
        log.info("validation report not made (evaluation.validation_report: false); to make it: python "
                 "validation_report.py %s --out-dir %s", csv_dir, results_dir / "validation")
        return
    metadata_file = evaluation_cfg["metadata_file"]
    report = report_after_run([csv_dir], results_dir / "validation", metadata_file)
    if report is not None:
        log.info("validation report: %s", report)
