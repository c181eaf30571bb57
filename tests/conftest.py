"""Shared test setup: make the repo root importable (the scripts are top-level modules)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
