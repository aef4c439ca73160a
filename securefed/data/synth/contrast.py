"""Noise-free tissue contrast for the four modalities (relative units, white matter about 1).

T1: WM > GM > CSF, tumour hypointense. T1ce: as T1 with a bright enhancing rim.
T2: CSF and edema bright, WM darkest. FLAIR: CSF dark (suppressed), edema bright.
"""

from __future__ import annotations

import numpy as np

from securefed.data.cases import MODALITIES
from securefed.data.synth.fields import smooth_noise
from securefed.data.synth.tumour import TumourMasks

__all__ = ["MODALITIES", "TISSUE_MEANS", "render_contrasts"]


# Mean relative intensity per tissue: csf, gm, wm, edema, enhancing rim, necrosis.
TISSUE_MEANS: dict[str, dict[str, float]] = {
    "flair": {"csf": 0.12, "gm": 0.85, "wm": 0.65, "ed": 1.50, "et": 1.10, "ncr": 0.45},
    "t1": {"csf": 0.30, "gm": 0.62, "wm": 1.00, "ed": 0.55, "et": 0.65, "ncr": 0.35},
    "t1ce": {"csf": 0.30, "gm": 0.62, "wm": 1.00, "ed": 0.55, "et": 1.70, "ncr": 0.35},
    "t2": {"csf": 1.80, "gm": 0.85, "wm": 0.55, "ed": 1.40, "et": 1.10, "ncr": 1.60},
}


def render_contrasts(
    rng: np.random.Generator,
    gm: np.ndarray,
    wm: np.ndarray,
    csf: np.ndarray,
    brain: np.ndarray,
    tumour: TumourMasks,
    spacing: tuple[float, float, float],
    contrast: tuple[tuple[str, str, float], ...] = (),
) -> dict[str, np.ndarray]:
    """Partial-volume mixture of tissue means with anatomical texture, then the tumour on top.

    The same texture fields are used for every modality (they are anatomy, not scanner).
    ``contrast``: a scanner's (modality, tissue, mean) overrides of ``TISSUE_MEANS`` (an
    acquisition whose tissue contrast differs: weak enhancement, unsuppressed FLAIR), which no
    per-image intensity normalisation undoes.
    """
    means = {m: dict(v) for m, v in TISSUE_MEANS.items()}
    for modality, tissue, value in contrast:
        means[modality][tissue] = float(value)
    total = gm + wm + csf
    norm = np.where(total > 1e-3, brain / np.maximum(total, 1e-3), 0).astype(np.float32)
    pgm, pwm, pcsf = gm * norm, wm * norm, csf * norm
    shape = gm.shape
    tissue_tex = 1.0 + 0.04 * smooth_noise(rng, shape, spacing, 4.0)
    tumour_tex = 1.0 + 0.10 * smooth_noise(rng, shape, spacing, 5.0)
    per_case = {m: rng.uniform(0.95, 1.05, 6) for m in MODALITIES}  # biological variation
    s_ed = tumour.soft_wt - tumour.soft_tc
    s_et = tumour.soft_tc - tumour.soft_ncr
    s_ncr = tumour.soft_ncr
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        mu = means[m]
        k = per_case[m]
        healthy = (pcsf * mu["csf"] * k[0] + pgm * mu["gm"] * k[1] + pwm * mu["wm"] * k[2]) * (
            tissue_tex
        )
        # Edema is infiltrated tissue: keep some of the underlying anatomy visible.
        edema = (0.35 * healthy + 0.65 * mu["ed"] * k[3] * brain) * tumour_tex
        image = (
            (1.0 - tumour.soft_wt) * healthy
            + s_ed * edema
            + s_et * mu["et"] * k[4] * tumour_tex
            + s_ncr * mu["ncr"] * k[5] * tumour_tex
        )
        out[m] = (image * brain).astype(np.float32)
    return out
