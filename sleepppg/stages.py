"""Sleep-stage spellings: the one table that turns what a scorer or an export wrote into the 4 classes (Wake 0,
Light 1, Deep 2, REM 3; -1 unscored), shared by the NSRR and Profusion XML reader (sleepppg.annotations), the
DREAMT reader (sleepppg.dreamt) and inference's CSV hypnograms (sleepppg.scoring).

Names are compared ignoring case and surrounding spaces:

- Wake: W, Wake, WK, Awake, Stage W
- Light: N1, N2, S1, S2, NREM1, NREM2, Stage 1, Stage 2, Light
- Deep: N3, N4, S3, S4, NREM3, NREM4, Stage 3, Stage 4, SWS, Deep (R&K stage 4 is AASM N3)
- REM: R, REM, Stage R
- unscored (-1): empty, ?, U, Unscored, Unknown, M, MT, Movement, A, Artifact, Missing

Numbers have two readings, so each source says which: CSV hypnograms write the 4-class index (0..3, -1);
NSRR concepts (`Stage 4 sleep|4`) and Profusion `<SleepStage>` write the R&K code (0 Wake, 1-2 Light, 3-4 Deep,
5 REM, 6 movement and 9 unscored -> -1). An NSRR concept is read by its exact text (`Wake|0`,
sleepppg.constants.CONCEPT_TO_CLASS), else by its name in any case (`wake|0`, `REM|5`), else by its code.

Anything else is an unknown spelling, never guessed: `unknown_stage_report` counts the epochs of each unknown
value; a night where at least half of the stage-carrying epochs are unknown is refused naming the values, a
night with fewer keeps them unscored with a warning that names each value and its count.
"""

from __future__ import annotations

from collections import Counter

from sleepppg.constants import CONCEPT_TO_CLASS, IGNORE_INDEX
from sleepppg.errors import BadRecordingError

STAGE_SPELLINGS = {  # lower case -> 4-class label
    **dict.fromkeys(("w", "wake", "wk", "awake", "stage w"), 0),
    **dict.fromkeys(("n1", "n2", "s1", "s2", "nrem1", "nrem2", "stage 1", "stage 2", "light"), 1),
    **dict.fromkeys(("n3", "n4", "s3", "s4", "nrem3", "nrem4", "stage 3", "stage 4", "sws", "deep"), 2),
    **dict.fromkeys(("r", "rem", "stage r"), 3),
    **dict.fromkeys(("", "?", "u", "unscored", "unknown", "m", "mt", "movement", "a", "artifact", "missing"),
                    IGNORE_INDEX),
}
CLASS_NUMBERS = {"0": 0, "1": 1, "2": 2, "3": 3, "-1": IGNORE_INDEX}  # a 4-class index written as a number
RK_CODES = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: IGNORE_INDEX, 9: IGNORE_INDEX}  # R&K code -> class
_SLEEP_SUFFIX = " sleep"  # NSRR names: "Stage 2 sleep", "REM sleep"
UNKNOWN_SHARE_REFUSED = 0.5  # at least this share of stage-carrying epochs unknown: the night is refused
_SHOWN_VALUES = 5  # unknown values named in one message


def stage_class(text: str, numbers: bool = True) -> int | None:
    """The 4-class label of a stage name (any case, see the module docstring) or, with `numbers`, of a 4-class
    index written as a number ('0'..'3', '-1', also '2.0' as a table with empty cells exports it); None for an
    unknown spelling."""
    key = text.strip().lower()
    label = STAGE_SPELLINGS.get(key)
    if label is not None or not numbers:
        return label
    try:
        number = float(key)
    except ValueError:
        return None
    return CLASS_NUMBERS.get(str(int(number))) if number.is_integer() else None


def rk_code_class(code: int) -> int | None:
    """The 4-class label of an R&K stage code (NSRR concept codes, Profusion <SleepStage>); None if unknown."""
    return RK_CODES.get(code)


def nsrr_concept_class(concept: str | None) -> int | None:
    """The 4-class label of an NSRR EventConcept ('Stage 4 sleep|4', 'wake|0', 'REM|5'); None if unknown."""
    if concept is None:
        return None
    if concept in CONCEPT_TO_CLASS:
        return CONCEPT_TO_CLASS[concept]
    name, _, code = concept.partition("|")
    name = name.strip().lower()
    label = STAGE_SPELLINGS.get(name.removesuffix(_SLEEP_SUFFIX) if name.endswith(_SLEEP_SUFFIX) else name)
    if label is not None:
        return label
    try:
        return rk_code_class(int(code.strip()))
    except ValueError:
        return None


def unknown_stage_report(unknown: Counter, n_stage_epochs: int, name: str, unit: str = "epoch") -> list[str]:
    """Warnings for the unknown stage values of one night (`unknown`: value -> epochs carrying it), which are
    left unscored; none when there are none.

    Args:
        n_stage_epochs: epochs that carry any stage value, known or not (the share's denominator).
        name: the file, for messages; unit: what was counted ('epoch', 'Profusion epoch', 'sample').
    Raises:
        BadRecordingError: kind 'unknown_stages' when at least half of the stage-carrying epochs are unknown:
            the night's scoring is not one this reader knows, naming the values.
    """
    if not unknown:
        return []
    total = sum(unknown.values())
    values = ", ".join(f"{value!r} in {count:,} {unit}{'s' if count != 1 else ''}"
                       for value, count in unknown.most_common(_SHOWN_VALUES))
    more = f" and {len(unknown) - _SHOWN_VALUES} more value(s)" if len(unknown) > _SHOWN_VALUES else ""
    if total >= UNKNOWN_SHARE_REFUSED * max(n_stage_epochs, 1):
        raise BadRecordingError(f"{name}: {total:,} of {n_stage_epochs:,} {unit}s carry a stage this reader does "
                                f"not know ({values}{more}); known spellings: W, N1, N2, N3, N4, R, Wake, REM "
                                "... (docs/cohorts.md)", kind="unknown_stages")
    return [f"{name}: unknown stage {values}{more}: left unscored"]
