"""Scanner profiles that change image texture, not only intensity scale.

Whole-brain radiomics z-scores each channel, so a pure scale change would be invisible; these
profiles differ in Rician noise level, point-spread blur, slice thickness (anisotropic resolution
along z), bias field strength, intensity non-linearity (a gamma curve) and Gibbs ringing
(k-space truncation along y). Each case jitters its scanner's settings a little.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from securefed.data.synth.fields import smooth_noise

__all__ = ["SCANNERS", "ScannerProfile", "acquire", "jitter"]


@dataclass(frozen=True)
class ScannerProfile:
    name: str
    description: str
    noise: float  # Rician sigma relative to white matter (~1)
    blur_mm: float  # Gaussian PSF sigma, all axes
    slice_mm: float  # slice thickness along z (axial), box profile
    bias: float  # std of the log bias field
    gamma: float  # output = input ** gamma (intensity non-linearity)
    gibbs: float  # fraction of k-space kept along y (1 = no ringing)
    scale: float  # stored intensity of white matter-like signal
    # (modality, tissue, mean) overrides of the tissue contrast (contrast.TISSUE_MEANS)
    contrast: tuple[tuple[str, str, float], ...] = ()


SCANNERS: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        # name, description, noise, blur_mm, slice_mm, bias, gamma, gibbs, scale
        ScannerProfile("siemens-3t", "3 T, thin slices, low noise, sharp", 0.015, 0.4, 1.0,
                       0.06, 1.00, 1.0, 900.0),
        ScannerProfile("ge-1.5t", "1.5 T, 3 mm slices, noisy, expansive gamma 0.75", 0.06,
                       0.8, 3.0, 0.12, 0.75, 1.0, 600.0),
        ScannerProfile("philips-3t", "3 T, Gibbs ringing, gamma 1.5 reconstruction", 0.025, 0.5,
                       1.5, 0.08, 1.50, 0.45, 1200.0),
        ScannerProfile("siemens-1.5t-thick", "1.5 T, 6 mm slices, blurred, gamma 1.15", 0.04,
                       1.5, 6.0, 0.08, 1.15, 1.0, 700.0),
        ScannerProfile("legacy-1.5t", "old 1.5 T, very noisy, strong non-linearity", 0.13,
                       1.0, 4.0, 0.12, 0.60, 0.7, 400.0),
        # Acquisitions whose TISSUE CONTRAST differs (the `shifted` preset): per-image z-scoring
        # cannot undo them, so a segmentation model trained elsewhere sees other images.
        ScannerProfile("ge-1.5t-weak-enhancement", "1.5 T, late or low-dose contrast agent: "
                       "the enhancing rim barely brighter than white matter in T1ce, necrosis "
                       "not darker than edema", 0.05, 0.8, 3.0, 0.10, 0.85, 1.0, 650.0,
                       (("t1ce", "et", 1.05), ("t1ce", "ncr", 0.55), ("t2", "ncr", 1.30))),
        ScannerProfile("philips-3t-flair-unsuppressed", "3 T, FLAIR without CSF suppression "
                       "(T2-like: CSF as bright as edema), T2 edema dimmer than CSF", 0.025,
                       0.5, 1.5, 0.08, 1.10, 0.8, 1100.0,
                       (("flair", "csf", 1.55), ("flair", "gm", 0.95), ("t2", "ed", 1.05))),
        # A shift CONFINED TO THE TUMOUR (`fets-1251-shifted`): a standard 3 T scanner whose
        # contrast agent barely enhances; healthy tissue is exactly siemens-3t's, so whole-brain
        # radiomics hardly sees it (its blind spot, docs/clustering.md).
        ScannerProfile("siemens-3t-enhancement-only", "3 T as siemens-3t; weak enhancement "
                       "only (the enhancing rim barely brighter than white matter in T1ce, "
                       "necrosis brighter): the shift is confined to the tumour", 0.015, 0.4,
                       1.0, 0.06, 1.00, 1.0, 900.0,
                       (("t1ce", "et", 1.05), ("t1ce", "ncr", 0.55))),
    )
}  # fmt: skip


def jitter(profile: ScannerProfile, rng: np.random.Generator) -> ScannerProfile:
    """Per-case variation of a scanner's settings (a few percent to ~10%)."""
    return replace(
        profile,
        noise=profile.noise * float(np.exp(rng.normal(0, 0.08))),
        blur_mm=profile.blur_mm * float(np.exp(rng.normal(0, 0.05))),
        bias=profile.bias * float(np.exp(rng.normal(0, 0.10))),
        gamma=profile.gamma * float(np.exp(rng.normal(0, 0.02))),
        scale=profile.scale * float(np.exp(rng.normal(0, 0.10))),
    )


def _interp_axis(volume: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of `volume` along `axis` at fractional indices `positions`."""
    n = volume.shape[axis]
    pos = np.clip(positions, 0, n - 1)
    i0 = np.minimum(np.floor(pos).astype(int), max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    w = (pos - i0).astype(np.float32)
    shape = [1] * volume.ndim
    shape[axis] = len(pos)
    w = w.reshape(shape)
    return np.take(volume, i0, axis=axis) * (1 - w) + np.take(volume, i1, axis=axis) * w


def _thick_slices(volume: np.ndarray, slice_mm: float, dz: float) -> np.ndarray:
    """Acquire slices of thickness slice_mm along z and interpolate back to the grid."""
    step = slice_mm / dz
    if step <= 1.05:
        return volume
    averaged = ndimage.uniform_filter1d(volume, size=max(1, round(step)), axis=2, mode="nearest")
    n = volume.shape[2]
    acquired = _interp_axis(averaged, np.arange(0, n - 1 + 1e-6, step), axis=2)
    return _interp_axis(acquired, np.arange(n) / step, axis=2).astype(np.float32)


def _gibbs(volume: np.ndarray, keep: float, axis: int = 1) -> np.ndarray:
    """Truncate k-space along `axis` (keep the central fraction): ringing at sharp edges."""
    if keep >= 0.999:
        return volume
    spectrum = np.fft.rfft(volume, axis=axis)
    cut = max(2, round(keep * spectrum.shape[axis]))
    index = [slice(None)] * volume.ndim
    index[axis] = slice(cut, None)
    spectrum[tuple(index)] = 0
    return np.fft.irfft(spectrum, n=volume.shape[axis], axis=axis).astype(np.float32)


def acquire(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    profile: ScannerProfile,
    spacing: tuple[float, float, float],
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Simulate the scanner on noise-free images; returns int16 volumes, skull-stripped (0 outside
    the brain) and at least 1 inside it (so FLAIR > 0 is exactly the brain mask)."""
    shape = brain.shape
    bias = np.exp(profile.bias * smooth_noise(rng, shape, spacing, 80.0)).astype(np.float32)
    sigma = [profile.blur_mm / s for s in spacing]
    inside = brain > 0.5
    out: dict[str, np.ndarray] = {}
    for name, clean in images.items():
        img = clean * bias
        if max(sigma) > 0.15:
            img = ndimage.gaussian_filter(img, sigma=sigma, mode="constant")
        img = _thick_slices(img, profile.slice_mm, spacing[2])
        img = _gibbs(img, profile.gibbs, axis=1)
        n1 = rng.standard_normal(shape, dtype=np.float32) * np.float32(profile.noise)
        n2 = rng.standard_normal(shape, dtype=np.float32) * np.float32(profile.noise)
        img = np.sqrt((img + n1) ** 2 + n2**2)  # Rician magnitude
        img = np.power(img, np.float32(profile.gamma))
        scaled = np.rint(img * np.float32(profile.scale))
        stored = np.clip(scaled, 1, 32767).astype(np.int16)
        stored[~inside] = 0
        out[name] = stored
    return out
