"""The synthetic cohort every script of this repository is developed and tested on (nobody can share MESA).

Modules, from the night's physiology to the files:

- `signals`: per-subject random streams and signal building blocks (noise, events, resampling);
- `hypnogram`: the physiological state of each 30-s epoch and the NSRR stage codes a scorer writes;
- `physiology`: beat times, breathing, pulse amplitude, SpO2 and scored events under a hypnogram;
- `waveforms`: PPG, EKG, EEG, respiration and the rest of MESA's montage drawn from the physiology;
- `mesa`: the MESA-shaped EDF and NSRR / Profusion annotation XML of one night;
- `dreamt`: the DREAMT-shaped 64-Hz CSV of one night;
- `cohort`: choosing IDs and writing a whole cohort (`make_cohort`), in worker processes if asked.

The entry point is `make_synthetic_mesa.py`.
"""
