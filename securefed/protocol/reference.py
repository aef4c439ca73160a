"""Generate the field reference of the protocol schema (protocols/README.md embeds it; a test
checks that the embedded copy is current)."""

from __future__ import annotations

import typing

from pydantic import BaseModel

from securefed.protocol.schema import Protocol

__all__ = [
    "reference_markdown",
    "describe",
    "all_field_paths",
    "BEGIN_MARK",
    "END_MARK",
    "FIELD_DOCS",
]

BEGIN_MARK = "<!-- BEGIN GENERATED FIELD REFERENCE -->"
END_MARK = "<!-- END GENERATED FIELD REFERENCE -->"


def _type_name(annotation: object) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a!r}`".replace("'", '"') for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "[" + ", ".join(_type_name(a) for a in args) + "]"
    if annotation is type(None):
        return "none"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if isinstance(value, BaseModel):
        return "(table)"
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        value = list(value)
    return f"`{value!r}`".replace("'", '"')


def describe(path: str) -> str:
    """The documented meaning of a field (dotted path; list items as ``sites[].id``)."""
    return FIELD_DOCS.get(path, "")


def _rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in typing.get_args(ann)] or [ann]
        sub = next(
            (a for a in [ann, *inner] if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
        path = f"{prefix}{name}"
        if sub is not None and typing.get_origin(ann) is not tuple:
            if not field.is_required() and field.default is None:  # an optional table
                rows.append((path, "table (optional)", "unset", describe(path)))
            nested.append((path, sub))
            continue
        if sub is not None:  # a list of tables, e.g. [[sites]]
            rows.append((path, f"list of [[{name}]] tables", _default(field), describe(path)))
            nested.append((f"{path}[]", sub))
            continue
        rows.append((path, _type_name(ann), _default(field), describe(path)))
    for path, sub in nested:
        rows.extend(_rows(sub, f"{path}."))
    return rows


def all_field_paths() -> list[str]:
    return [row[0] for row in _rows(Protocol, "")]


def reference_markdown() -> str:
    """Markdown tables of every field, one per section."""
    out: list[str] = []
    sections: dict[str, list[tuple[str, str, str, str]]] = {}
    for row in _rows(Protocol, ""):
        head = row[0].split(".")[0].removesuffix("[]")
        section = head if "." in row[0] else "(top level)"
        sections.setdefault(section, []).append(row)
    for section, rows in sections.items():
        title = section if section == "(top level)" else f"[{section}]"
        model_field = Protocol.model_fields.get(section)
        doc = ""
        if model_field is not None:
            ann = model_field.annotation
            cand = [ann, *typing.get_args(ann)]
            sub = next((a for a in cand if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if sub is not None and sub.__doc__:
                doc = " ".join(sub.__doc__.split())
        out.append(f"### {title}\n")
        if doc:
            out.append(doc + "\n")
        out.append("| field | type | default | meaning |")
        out.append("|---|---|---|---|")
        for name, typ, default, desc in rows:
            out.append(f"| `{name}` | {typ} | {default} | {desc} |")
        out.append("")
    return "\n".join(out)


FIELD_DOCS: dict[str, str] = {
    "schema_version": "Schema version of this file; always 1 for this schema.",
    "sites": "The sites (hospitals); required in deployment, optional in simulation (then one site "
    "per partition id, named site-<id>).",
    "sites[].id": "Site name used in keys, envelopes, ledgers and logs.",
    "sites[].partition_id": "The institution's Partition_ID in the partition file.",
    "sites[].signing_key": "Fingerprint of the site's Ed25519 public key (`securefed keys new`).",
    "sites[].encryption_key": "Fingerprint of the site's HPKE public key.",
    "study.name": "Short identifier of the study.",
    "study.description": "Free text for the governance board.",
    "study.mode": "simulation: one machine, unsafe_ options allowed; deployment: real sites, every "
    "key pinned, protocol signed.",
    "data.layout": "Case folder layout (FeTS2022_XXXXX/FeTS2022_XXXXX_<mod>.nii.gz).",
    "data.partitioning": "Which partition file assigns cases to institutions.",
    "data.split_seed": "Seed of the per-institution train/val/test split (paper: 0).",
    "data.test_fraction": "Share of each institution's cases held out for testing (paper: 0.15).",
    "data.val_fraction": "Fraction of the remaining cases used for validation (paper: 0.20).",
    "data.held_out_partitions": "Institutions that take no part in training; their cases are "
    "routed to cluster models by radiomics and scored apart (unseen sites).",
    "server.id": "Name of the coordinating server.",
    "server.signing_key": "Fingerprint of the server's Ed25519 public key.",
    "server.encryption_key": "Fingerprint of the server's HPKE public key (sites seal to it).",
    "governance.signing_key": "Fingerprint of the governance key that signs this protocol "
    "(`securefed protocol sign`); required in deployment.",
    "privacy.unit": "Unit of privacy: one patient (all of a patient's values and volumes).",
    "privacy.neighbouring": "Neighbouring datasets: replace one patient, or add/remove one.",
    "privacy.total_epsilon": "Per-site epsilon over every release of the study (inf: no DP).",
    "privacy.total_delta": "Per-site delta over every release of the study.",
    "privacy.accountant": "Composition accountant (dp-accounting): RDP or PLD.",
    "privacy.unsafe_seeded_noise": "Draw DP noise from a seeded PRNG (reproducible, NOT private); "
    "simulation only.",
    "privacy.unsafe_noise_seed": "Seed used when unsafe_seeded_noise is true.",
    "radiomics.bin_width": "pyradiomics binWidth on z-scored intensities (paper: 0.09).",
    "radiomics.binning": "per-image (pyradiomics standard) or shared dataset-wide bin edges.",
    "radiomics.mask": "Region described: whole brain (FLAIR > 0) or brain minus tumour.",
    "radiomics.normalisation": "z-score over the cropped box (paper) or over brain voxels only.",
    "radiomics.feature_classes": "pyradiomics feature classes (shape and diagnostics never).",
    "release.mode": "plain: 372 values per case sealed in transit, no DP; local-dp: clipped and "
    "noised per case at the site; secure-aggregate: no per-case vector leaves a site.",
    "release.mechanism": "DP mechanism of the local-dp release.",
    "release.epsilon": "Epsilon of the local-dp release (allocated from privacy.total_epsilon).",
    "release.delta": "Delta of the local-dp release (0 for laplace).",
    "release.bounds": "Per-feature clipping bounds (JSON from `securefed features bounds`), "
    "derived from data that is not the study's.",
    "release.bounds.file": "Bounds file, relative to the protocol's folder.",
    "release.bounds.sha256": "SHA-256 the bounds file must have.",
    "release.projection": "Lower-dimensional release fixed in advance: none, a feature subset, a "
    "seeded random projection, or a pinned matrix file.",
    "release.subset": "Feature names released with projection = subset.",
    "release.dimension": "Released dimension with projection = random.",
    "release.projection_seed": "Seed of the random projection (public, fixed in advance).",
    "release.projection_file": "Pinned projection matrix with projection = file.",
    "release.projection_file.file": "Projection file, relative to the protocol's folder.",
    "release.projection_file.sha256": "SHA-256 the projection file must have.",
    "clustering.algorithm": "Server-side estimator: Gaussian mixture (paper), k-means or "
    "agglomerative.",
    "clustering.k": "Number of clusters (paper: 10, fixed by hand).",
    "clustering.k_selection": "fixed, or choose k in [k_min, k_max] by BIC (GMM) or silhouette.",
    "clustering.k_min": "Smallest k tried when k is selected.",
    "clustering.k_max": "Largest k tried when k is selected.",
    "clustering.scaling": "Per-feature scaling: 2nd..98th percentile of train+val (paper), or the "
    "protocol's declared bounds (required for local-dp).",
    "clustering.percentile_low": "Lower percentile of the percentile scaling.",
    "clustering.percentile_high": "Upper percentile of the percentile scaling.",
    "clustering.pca_components": "PCA components before clustering (paper: 30).",
    "clustering.covariance_type": "GaussianMixture covariance type (paper: tied).",
    "clustering.n_init": "Restarts of the estimator (paper: 20).",
    "clustering.max_iter": "EM/Lloyd iterations per restart (paper: 100).",
    "clustering.seed": "Random state of the estimator (paper: 6).",
    "clustering.secure.algorithm": "Secure-aggregate clustering: a DP histogram of projected "
    "points, or DP k-means on noised sums and counts.",
    "clustering.secure.epsilon": "Epsilon of the whole secure clustering stage, per site.",
    "clustering.secure.delta": "Delta of the whole secure clustering stage, per site.",
    "clustering.secure.iterations": "Rounds of noised aggregates (dp-kmeans; refinement steps).",
    "clustering.secure.bins_per_dimension": "Histogram resolution per projected dimension.",
    "clustering.secure.min_sites_per_aggregate": "Fewest sites whose data may enter one "
    "aggregate; fewer -> refused.",
    "training.model": "Segmentation network (the paper's small DynUNet).",
    "training.optimizer": "Local optimiser (paper: SGD without momentum).",
    "training.lr": "Learning rate of the global FedAvg phase (paper: 0.05).",
    "training.momentum": "SGD momentum (paper: 0).",
    "training.weight_decay": "Weight decay (paper: 1e-5).",
    "training.batch_size": "Local batch size (paper: 1; use >= 2 on CPU).",
    "training.crop_size": "Training crop in voxels (paper: 128^3).",
    "training.crop_sampling": "random crops (paper) or tumour-centred sampling.",
    "training.tumour_crop_fraction": "Share of crops centred on tumour with tumour-centred "
    "sampling.",
    "training.spacing_mm": "Resample volumes to this isotropic spacing before training; unset "
    "keeps 1 mm.",
    "training.loss": "dice = MONAI DiceLoss on sigmoid outputs (paper); dice-bce adds a binary "
    "cross-entropy per region (TC, WT, ET each on its own), which also penalises false positives "
    "in crops without tumour.",
    "training.server_lr": "Server learning rate on the aggregate update of the global phase "
    "(FedAvgM, Hsu et al. 2019; 1 with momentum 0 = plain FedAvg, the paper). CFFL finetuning "
    "always uses plain FedAvg.",
    "training.server_momentum": "Server momentum on the aggregate update of the global phase "
    "(FedAvgM); applied by the server to the securely aggregated model, so it sees nothing more "
    "than with FedAvg.",
    "training.augmentation": "Random flips/intensity augmentation during local training.",
    "training.global_rounds": "FedAvg rounds of the global phase (paper: 300).",
    "training.local_epochs": "Local epochs per round (paper: 1).",
    "training.local_steps": "Cap on local optimiser steps per round (unset: full epochs).",
    "training.finetune_rounds": "FedAvg rounds per cluster in the CFFL phase (paper: 50).",
    "training.finetune_lr": "Learning rate of the CFFL phase (paper: 0.02).",
    "training.local_epochs_baseline": "Epochs of the local and local-finetune baselines.",
    "training.local_finetune_lr": "Learning rate of local finetuning (paper: 0.005).",
    "training.baselines": "Methods to run and report; cffl-ideal and centralized are "
    "simulation-only, non-private upper bounds.",
    "training.aggregation": "How model updates are combined: plain FedAvg (the server sees each "
    "site's update) or Flower SecAgg+ (the server unmasks only the sum).",
    "training.min_sites_per_aggregate": "Fewest sites per federated aggregate; smaller clusters "
    "follow small_cluster_policy.",
    "training.small_cluster_policy": "A cluster with too few sites keeps the global model "
    "(fallback-global, the only policy served; the report names such clusters). Merging with a "
    "neighbouring cluster is not offered: it would finetune on cases of another scanner group.",
    "training.seed": "Seed of crop sampling and initialisation.",
    "training.dp_sgd.enabled": "Train with DP-SGD (Opacus) at the sites.",
    "training.dp_sgd.epsilon": "Epsilon of the training stage, per site.",
    "training.dp_sgd.delta": "Delta of the training stage, per site.",
    "training.dp_sgd.max_grad_norm": "Per-sample gradient clipping norm.",
    "secure_aggregation.num_shares": "SecAgg+ shares per client secret (>= 3, <= number of sites).",
    "secure_aggregation.reconstruction_threshold": "Shares needed to reconstruct (< num_shares); "
    "the round survives dropouts while this many remain.",
    "secure_aggregation.clipping_range": "SecAgg+ clipping range of the quantised values.",
    "secure_aggregation.quantization_range": "SecAgg+ quantisation range (integer levels).",
    "secure_aggregation.max_weight": "Largest sample-count weight (keep near the largest site).",
    "secure_aggregation.timeout_s": "Seconds a SecAgg+ stage waits for clients before dropping "
    "them.",
    "evaluation.roi_size": "Sliding-window size for inference (paper: 128^3).",
    "evaluation.overlap": "Sliding-window overlap (paper: 0.5).",
    "evaluation.blend": "Sliding-window blending (paper: gaussian).",
    "evaluation.threshold": "Sigmoid threshold for the TC/WT/ET masks (paper: 0.5).",
    "evaluation.hd95": "Also compute HD95 (MONAI).",
    "evaluation.postprocess": "none (paper) or keep the largest connected whole-tumour component "
    "and restrict TC/ET to it.",
}


def rewrite_readme(path: str = "protocols/README.md") -> None:
    """Replace the generated section of protocols/README.md in place."""
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head, rest = text.split(BEGIN_MARK, 1)
    tail = rest.split(END_MARK, 1)[1]
    p.write_text(f"{head}{BEGIN_MARK}\n{reference_markdown()}\n{END_MARK}{tail}", encoding="utf-8")


if __name__ == "__main__":  # pragma: no cover - documentation helper
    rewrite_readme()
