"""`--resume`: which checkpoint a killed run continues from, with which config, and whether it may.

- `find_resume_point`: `--resume PATH` (a checkpoint, a run folder or its checkpoints/ folder) or, without a
  PATH, the newest run of the model under output.save_dir; an unreadable last.pth falls back to the newest
  intact checkpoint of the run, saying so. The checkpoint must lie in the checkpoints/ folder of a run folder
  (with config.json beside it: `check_run_folder`), and belong to that run (`check_run_identity`: the run_uid
  of the checkpoint is the one in checkpoints/run.json); else the resume is refused before anything is
  written. A checkpoint and a folder that both lack a run_uid (a run made by an older version) are accepted
  with a warning.
- `resumed_config`: the config given with `--config` (it must then match the run's), else the one saved in
  the checkpoint, with `--epochs`/`--runs` applied.
- `check_resume`: refuses (SetupError, naming what changed) when the data files (path, size, mtime), the split
  or a config key that shapes training changed since the run started, unless `--resume-anyway`;
  training.select_best_by never changes on resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sleepppg.config import adopt_recorded_parent_hash, validate_config
from sleepppg.errors import ConfigError, SetupError
from sleepppg.runstate import LAST_CHECKPOINT, RUN_IDENTITY_FILE, load_checkpoint, read_run_identity

log = logging.getLogger("sleepppg.resume")

# --resume accepts changes of these config keys/sections (they do not change what is trained, or, for the
# epoch count, are meant to: train longer); any other changed key is refused without --resume-anyway
RESUME_FREE_KEYS = ("training.num_epochs", "training.num_runs")
RESUME_FREE_SECTIONS = ("preprocessing", "inference")


@dataclass
class Resume:
    """A checkpoint to continue from, and the run folder it belongs to."""

    path: Path
    ckpt: dict

    @property
    def run_dir(self) -> Path:
        return self.path.resolve().parent.parent


def newest_run_checkpoint(save_dir: Path, model_kind: str) -> Path:
    """checkpoints/last.pth of the most recently updated `<model_kind>_*` run under save_dir."""
    candidates = [p for p in save_dir.glob(f"{model_kind}_*/checkpoints/{LAST_CHECKPOINT}") if p.is_file()]
    if not candidates:
        raise SetupError(f"--resume: no {model_kind} run with checkpoints/{LAST_CHECKPOINT} under {save_dir}")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def resolve_resume_path(path: str) -> Path:
    """A checkpoint file, a run folder (-> checkpoints/last.pth) or a checkpoints folder (-> last.pth)."""
    p = Path(path)
    for candidate in (p, p / "checkpoints" / LAST_CHECKPOINT, p / LAST_CHECKPOINT):
        if candidate.is_file():
            return candidate
    raise SetupError(f"--resume: {path} is neither a checkpoint file nor a run folder holding "
                     f"checkpoints/{LAST_CHECKPOINT}")


def check_run_folder(path: Path) -> None:
    """Refuse (SetupError, naming what is missing) a checkpoint that does not lie in the checkpoints/ folder of
    a run folder of this project, with the run's config.json beside it: a resume writes into the folder above
    checkpoints/, and a checkpoint anywhere else would make a run layout wherever it lies."""
    folder = path.resolve().parent
    if folder.name != "checkpoints":
        raise SetupError(f"--resume {path}: not inside a run folder (a checkpoint to resume lies in "
                         f"<run folder>/checkpoints/, this one in {folder}); give the run folder, or start a new "
                         "run from its weights with --init-from")
    if not (folder / "config.json").is_file():
        raise SetupError(f"--resume {path}: {folder} is not the checkpoints/ folder of a run (no config.json "
                         "beside the checkpoint); give the run folder, or start a new run from its weights with "
                         "--init-from")


def check_run_identity(resume: Resume) -> None:
    """Refuse (SetupError) a checkpoint that belongs to another run than the folder it lies in: its run_uid
    differs from the one in checkpoints/run.json, or only one of them has one (a checkpoint copied from
    elsewhere). Both without one (a run of an older version): accepted, with a warning."""
    folder_uid = read_run_identity(resume.run_dir)
    ckpt_uid = resume.ckpt.get("run_uid")
    if folder_uid is None and ckpt_uid is None:
        log.warning("%s and its run folder carry no run identity (a run made by an older version): cannot check "
                    "that the checkpoint belongs to this run folder", resume.path)
        return
    if folder_uid == ckpt_uid:
        return
    if ckpt_uid is None:
        why = f"it carries no run id, while the run folder is run {folder_uid}"
    elif folder_uid is None:
        why = f"it belongs to run {ckpt_uid}, while the run folder has no checkpoints/{RUN_IDENTITY_FILE}"
    else:
        why = f"it belongs to run {ckpt_uid}, the run folder is run {folder_uid}"
    raise SetupError(f"--resume: {resume.path} is not a checkpoint of the run folder {resume.run_dir} ({why}); "
                     "resume the run it was written by from its own folder, or start a new run from its weights "
                     "with --init-from")


def load_resume_point(path: Path) -> Resume:
    """The checkpoint at `path`; when it cannot be read (a truncated or corrupt file, e.g. a disk that filled
    up), the newest intact checkpoint beside it (checkpoint_epoch_N.pth, best_model.pth), saying so."""
    try:
        return Resume(path, load_checkpoint(path))
    except SetupError as err:
        problem = str(err)
    others = sorted((p for p in path.parent.glob("*.pth") if p.name != path.name),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for other in others:
        try:
            ckpt = load_checkpoint(other)
        except SetupError as err:
            log.warning("%s", err)
            continue
        log.warning("%s; resuming from the newest intact checkpoint instead: %s (epoch %d; later epochs are "
                    "trained again)", problem, other, ckpt["epoch"])
        return Resume(other, ckpt)
    raise SetupError(f"{problem}; no other intact checkpoint in {path.parent} to resume from")


def find_resume_point(resume_arg: str, model: str, save_dir: str | None) -> Resume:
    """The checkpoint `--resume [PATH]` names (`model`: --model; `save_dir`: output.save_dir, for no PATH)."""
    if resume_arg == "":
        if model == "both":
            raise SetupError("--resume without a PATH needs --model ppg_only or --model real_ecg")
        ckpt_path = newest_run_checkpoint(Path(save_dir), model)
    else:
        ckpt_path = resolve_resume_path(resume_arg)
    check_run_folder(ckpt_path)
    resume = load_resume_point(ckpt_path)
    check_run_identity(resume)
    if model != "both" and model != resume.ckpt["model_kind"]:
        raise SetupError(f"--resume {ckpt_path} holds a {resume.ckpt['model_kind']} model, not {model}")
    return resume


def resumed_config(resume: Resume, given_cfg: dict | None, overrides: dict) -> dict:
    """The config a resumed run trains with: `given_cfg` (from --config) when there is one, else the run's
    own saved config with `overrides` ({"section.key": value}, from --epochs/--runs) applied and validated."""
    if given_cfg is not None:
        return given_cfg
    saved = dict(resume.ckpt["config"])
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        saved[section] = {**saved[section], key: value}
    try:
        return validate_config(saved)
    except ConfigError as err:
        raise ConfigError(f"the config saved in {resume.path}: {err}") from None


def _flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def resume_changes(ckpt: dict, cfg: dict, fingerprint: dict) -> list[str]:
    """What differs between the run in `ckpt` and a resume with `cfg` on data `fingerprint`: config keys that
    shape training (not num_epochs/num_runs, preprocessing or inference), data file signatures, split sets."""
    changes = []
    old, new = _flatten(ckpt["config"]), _flatten(cfg)
    for key in sorted(set(old) | set(new)):
        if key in RESUME_FREE_KEYS or key.split(".")[0] in RESUME_FREE_SECTIONS:
            continue
        if old.get(key) != new.get(key):
            changes.append(f"config {key}: {old.get(key)!r} -> {new.get(key)!r}")
    saved = ckpt.get("data_fingerprint")
    if saved is None:
        log.warning("this checkpoint holds no data fingerprint: cannot check that the data and split are unchanged")
        return changes
    for key, signature in saved["files"].items():
        now = fingerprint["files"].get(key)
        if now != signature:
            detail = ", ".join(f"{k} {signature.get(k) if signature else None} -> {now.get(k) if now else None}"
                               for k in ("path", "size", "mtime_ns")
                               if (signature or {}).get(k) != (now or {}).get(k))
            changes.append(f"{key} changed ({detail})")
    for name in ("train", "val", "test"):
        before, after = set(saved["split"][name]), set(fingerprint["split"][name])
        if before != after:
            added, gone = sorted(after - before), sorted(before - after)
            changes.append(f"the {name} subjects changed ({len(added)} added, e.g. {added[:3]}; {len(gone)} gone, "
                           f"e.g. {gone[:3]})")
    return changes


def check_resume(resume: Resume, cfg: dict, fingerprint: dict, anyway: bool) -> None:
    """Refuse to resume (SetupError) when the setup changed since the run started, unless `anyway`
    (--resume-anyway: each change is logged as a warning); a changed training.select_best_by is refused even
    then. A fine-tuning run's recorded parent hash is adopted into `cfg` first (its YAML has none)."""
    saved = resume.ckpt["config"]["training"]
    adopt_recorded_parent_hash(cfg["training"], saved)
    changes = resume_changes(resume.ckpt, cfg, fingerprint)
    if cfg["training"]["select_best_by"] != saved.get("select_best_by", "val_loss"):
        raise SetupError(f"cannot resume {resume.run_dir} with training.select_best_by "
                         f"{cfg['training']['select_best_by']!r}: its best_model.pth was chosen by "
                         f"{saved.get('select_best_by', 'val_loss')!r} (not even with --resume-anyway); start a "
                         "new run to select by another figure")
    if changes and not anyway:
        raise SetupError(f"refusing to resume {resume.run_dir}: since it started, " + "; ".join(changes)
                         + ". Start a new run, or pass --resume-anyway to continue on the new setup")
    for change in changes:
        log.warning("--resume-anyway: continuing although %s", change)
