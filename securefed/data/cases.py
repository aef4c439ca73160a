"""Case discovery for FeTS2022 / BraTS-style roots (file names only; no voxel is read here).

Layout: one folder per case, ``<ID>/<ID>_{flair,t1,t1ce,t2,seg}.nii.gz`` (or ``.nii``), e.g.
``FeTS2022_00123/FeTS2022_00123_t1ce.nii.gz`` or ``BraTS2021_00000/BraTS2021_00000_seg.nii.gz``.
Nothing here leaves the site: only paths and subject ids are handled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from securefed.errors import CaseError, NoCasesError
from securefed.protocol.schema import MODALITIES  # channel order of every image array

__all__ = [
    "LABELS",
    "MODALITIES",
    "REGIONS",
    "CaseFiles",
    "CaseProblem",
    "Discovery",
    "discover_cases",
]

LABELS: frozenset[int] = frozenset({0, 1, 2, 4})
"""BraTS labels: 0 background, 1 necrotic core, 2 edema, 4 enhancing tumour."""

REGIONS: dict[str, frozenset[int]] = {
    "TC": frozenset({1, 4}),
    "WT": frozenset({1, 2, 4}),
    "ET": frozenset({4}),
}
"""Scored regions: tumour core, whole tumour, enhancing tumour."""

_SUFFIXES = (".nii.gz", ".nii")
_KNOWN_KEYS = (*MODALITIES, "seg")
_CASE_NAME = re.compile(r"^(FeTS\d{4}|BraTS\d{4})_\d+$", re.IGNORECASE)


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case. ``images`` has the keys of MODALITIES in that order; ``seg`` is None
    for unlabelled cases (e.g. unseen test data)."""

    subject_id: str
    folder: Path
    images: dict[str, Path]
    seg: Path | None

    def files(self) -> dict[str, Path]:
        """Every file of the case, modality (or ``seg``) -> path."""
        out = dict(self.images)
        if self.seg is not None:
            out["seg"] = self.seg
        return out


@dataclass(frozen=True)
class CaseProblem:
    """Why a case was excluded: case id, offending file (or the partition file) and the reason."""

    subject_id: str
    file: str | None
    problem: str

    @classmethod
    def from_error(cls, exc: CaseError, subject_id: str | None = None) -> CaseProblem:
        subject = exc.case or subject_id or "?"
        file = None if exc.path is None else Path(str(exc.path)).name
        problem = str(exc)
        for prefix in (f"case {subject}: ", f"{file}: "):
            if problem.startswith(prefix):
                problem = problem[len(prefix) :]
        return cls(subject_id=subject, file=file, problem=problem)

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{self.subject_id} ({where}{self.problem})"


@dataclass(frozen=True)
class Discovery:
    """Result of :func:`discover_cases`: complete cases by subject id (sorted) and the problems of
    the folders that were not usable."""

    cases: dict[str, CaseFiles]
    problems: tuple[CaseProblem, ...]
    root: Path | None = None


def _case_files(folder: Path) -> dict[str, list[Path]]:
    """Map modality/seg key -> matching files named ``<folder>_<key>.nii[.gz]``."""
    found: dict[str, list[Path]] = {}
    prefix = folder.name + "_"
    for path in folder.iterdir():
        name = path.name
        if not path.is_file() or not name.startswith(prefix):
            continue
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                key = name[len(prefix) : -len(suffix)].lower()
                if key in _KNOWN_KEYS:
                    found.setdefault(key, []).append(path)
                break
    return found


def _case_from_folder(folder: Path) -> CaseFiles:
    """Build the CaseFiles of ``folder`` or raise CaseError (missing or duplicate modality)."""
    subject = folder.name
    found = _case_files(folder)
    for key, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(sorted(p.name for p in paths))
            raise CaseError(
                f"case {subject}: several files for '{key}' ({names}); keep exactly one",
                case=subject,
                path=paths[0],
            )
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        expected = ", ".join(f"{subject}_{m}.nii.gz" for m in missing)
        raise CaseError(
            f"case {subject}: missing modality {', '.join(missing)} (expected {expected} in "
            f"{folder}); add the file or remove the case folder",
            case=subject,
            path=folder / f"{subject}_{missing[0]}.nii.gz",
        )
    seg = found.get("seg")
    return CaseFiles(
        subject_id=subject,
        folder=folder,
        images={m: found[m][0] for m in MODALITIES},
        seg=seg[0] if seg else None,
    )


def _looks_like_case(folder: Path) -> bool:
    return bool(_CASE_NAME.match(folder.name)) or bool(_case_files(folder))


def _nested_hint(root: Path) -> str:
    """A hint when the cases sit one level deeper (e.g. MICCAI_FeTS2022_TrainingData/)."""
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            grandchildren = [p for p in child.iterdir() if p.is_dir()]
        except OSError:
            continue
        if any(_looks_like_case(g) for g in grandchildren):
            return f"; the cases seem to be in {child}: point securefed at that folder"
    return ""


def _outside(real_root: Path, paths: list[Path]) -> Path | None:
    """The first of ``paths`` whose real location is not under ``real_root`` (None: all are)."""
    for path in paths:
        if not path.resolve().is_relative_to(real_root):
            return path
    return None


def discover_cases(root: str | Path) -> Discovery:
    """Find the case folders under ``root`` (one level deep).

    A folder counts as a case when it is named like ``FeTS2022_00123`` / ``BraTS2021_00000`` or
    holds files named ``<folder>_<modality>.nii[.gz]``. Folders with a missing or duplicated
    modality, or a folder or file that links out of ``root``, are reported in ``problems`` and
    left out. Raises NoCasesError when ``root`` is not a folder or holds no case folder at all.
    """
    root = Path(root)
    if not root.is_dir():
        raise NoCasesError(f"{root} is not a folder; point securefed at the FeTS2022 data root")
    cases: dict[str, CaseFiles] = {}
    problems: list[CaseProblem] = []
    folders = (p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    candidates = sorted(p for p in folders if _looks_like_case(p))
    real_root = root.resolve()
    for folder in candidates:
        try:
            case = _case_from_folder(folder)
        except CaseError as exc:
            problems.append(CaseProblem.from_error(exc, folder.name))
            continue
        outside = _outside(real_root, [folder, *case.files().values()])
        if outside is not None:  # a symlink out of the data root: never followed
            problems.append(CaseProblem(
                case.subject_id, outside.name,
                "is a link that leaves the data root; copy the data into the root instead",
            ))  # fmt: skip
            continue
        cases[case.subject_id] = case
    if not candidates:
        raise NoCasesError(
            f"no case folders in {root} (expected e.g. FeTS2022_00001/FeTS2022_00001_flair.nii.gz)"
            + _nested_hint(root)
        )
    return Discovery(cases=cases, problems=tuple(problems), root=root)
