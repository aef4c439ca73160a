"""Synthetic federation generator: MNI152 anatomy, one tumour per case, four contrasts, scanner
profiles that change texture, FeTS2022 layout on disk (see docs/synthetic-data.md).

Nothing here is site data: the generator only writes simulated cases and their ground truth
(truth.csv), which the pipeline never reads unless it is handed explicitly.
"""

from securefed.data.synth.presets import PRESETS, CaseSpec, Institution, Preset, plan_cases
from securefed.data.synth.scanners import SCANNERS, ScannerProfile
from securefed.data.synth.writer import TRUTH_COLUMNS, SynthResult, synthesize

__all__ = [
    "PRESETS",
    "SCANNERS",
    "TRUTH_COLUMNS",
    "CaseSpec",
    "Institution",
    "Preset",
    "ScannerProfile",
    "SynthResult",
    "plan_cases",
    "synthesize",
]
