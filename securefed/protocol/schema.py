"""Study protocol v1: the strict schema.

The protocol is data, not code: every model is frozen, unknown keys are rejected and every
algorithm name comes from a closed list. Noise scales are never declared: they are derived from the
epsilon/delta budgets. Paths, devices and thread counts are site-local settings and never appear
here (files the protocol depends on, such as feature bounds, are pinned by their SHA-256).

A field never changes meaning; new fields get defaults so that older files keep their hash.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "FEATURE_CLASSES",
    "MODALITIES",
    "SCHEMA_VERSION",
    "ClusteringSpec",
    "DPSGDSpec",
    "DataSpec",
    "EvaluationSpec",
    "Fingerprint",
    "GovernanceSpec",
    "PartySpec",
    "PinnedFile",
    "PrivacySpec",
    "Protocol",
    "RadiomicsSpec",
    "ReleaseSpec",
    "SecureAggregationSpec",
    "SecureClusteringSpec",
    "Sha256",
    "SiteSpec",
    "StudyInfo",
    "TrainingSpec",
]

SCHEMA_VERSION = 1
MODALITIES: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
FeatureClass = Literal["firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm"]
FEATURE_CLASSES: tuple[FeatureClass, ...] = get_args(FeatureClass)

Fingerprint = Annotated[
    str,
    Field(pattern=r"^sha256:[0-9a-f]{64}$"),
]
Sha256 = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
Version = Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+[a-z0-9.+-]{0,20}$")]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
PositiveEpsilon = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
Delta = Annotated[float, Field(ge=0, lt=1)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
PartitionId = Annotated[int, Field(ge=1, le=1_000_000)]
Voxels = Annotated[int, Field(ge=1, le=512)]


class _Strict(BaseModel):
    # Every number is finite except where a field says otherwise (privacy.total_epsilon = inf:
    # no DP). A protocol file is validated strictly (parse_protocol): no string or boolean
    # stands in for a number.
    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        validate_default=True,
        use_attribute_docstrings=True,
        allow_inf_nan=False,
    )


class StudyInfo(_Strict):
    """Who runs the study and how: `simulation` (one machine, synthetic or research data) or
    `deployment` (real sites with their own keys)."""

    name: Identifier
    """Short identifier of the study."""
    description: str = ""
    """Free text for the governance board."""
    mode: Literal["simulation", "deployment"]
    """simulation: one machine, unsafe_ options allowed; deployment: real sites, every key pinned,
    protocol signed."""


class DataSpec(_Strict):
    """Data layout and the paper's per-institution seeded splits."""

    layout: Literal["fets2022"] = "fets2022"
    """Case folder layout (FeTS2022_XXXXX/FeTS2022_XXXXX_<mod>.nii.gz)."""
    partitioning: Literal["partitioning_1", "partitioning_2"] = "partitioning_1"
    """Which partition file assigns cases to institutions."""
    split_seed: Seed = 0
    """Seed of the per-institution train/val/test split (paper: 0)."""
    test_fraction: float = Field(0.15, gt=0, lt=1)
    """Share of each institution's cases held out for testing (paper: 0.15)."""
    val_fraction: float = Field(0.20, gt=0, lt=1)
    """Fraction of the remaining cases used for validation (paper: 0.20)."""
    held_out_partitions: tuple[PartitionId, ...] = Field((), max_length=10_000)
    """Institutions that take no part in training; their cases are routed to cluster models by
    radiomics and scored apart (unseen sites)."""


class SiteSpec(_Strict):
    """One hospital: its partition (institution) id and its public key fingerprints."""

    id: Identifier
    """Site name used in keys, envelopes, ledgers and logs."""
    partition_id: PartitionId
    """The institution's Partition_ID in the partition file."""
    signing_key: Fingerprint | None = None
    """Fingerprint of the site's Ed25519 public key (`securefed keys new`)."""
    encryption_key: Fingerprint | None = None
    """Fingerprint of the site's HPKE public key."""
    node_key: Fingerprint | None = None
    """Fingerprint of the site's SuperNode authentication key (`securefed site node-key`): the
    coordinator registers only this key for the site and maps the authenticated node to it;
    required to run a deployment (`securefed site supernode`, `federation coordinate`)."""


class PartySpec(_Strict):
    """The coordinating server."""

    id: Identifier = "server"
    """Name of the coordinating server."""
    signing_key: Fingerprint | None = None
    """Fingerprint of the server's Ed25519 public key."""
    encryption_key: Fingerprint | None = None
    """Fingerprint of the server's HPKE public key (sites seal to it)."""


class GovernanceSpec(_Strict):
    """The board whose key signs the protocol."""

    signing_key: Fingerprint | None = None
    """Fingerprint of the governance key that signs this protocol (`securefed protocol sign`);
    required in deployment. Informational for the sites: each site trusts the governance keys of
    its own site configuration (`securefed site init`), never a key written in the protocol."""
    securefed_version: Version | None = None
    """The securefed version this protocol was approved for; a site running another version
    refuses it (`securefed site verify`)."""
    supersedes: Sha256 | None = None
    """The protocol hash this amendment replaces: a site's ledger of that protocol continues
    under this one (its spend carries over, budgets never reset)."""
    approved_apps: tuple[Sha256, ...] = Field((), max_length=16)
    """Hashes of the Flower app bundles (FABs) the sites may run (`securefed protocol app-hash`
    prints the hash of the installed securefed's app); a site's SuperNode (`securefed site
    supernode`) refuses any other bundle before installing it, and refuses to start when this
    list is empty."""


class PrivacySpec(_Strict):
    """The privacy unit, the neighbouring relation and the total per-site budget."""

    unit: Literal["patient"] = "patient"
    """Unit of privacy: one patient (all of a patient's values and volumes)."""
    neighbouring: Literal["replace-one", "add-remove-one"] = "replace-one"
    """Neighbouring datasets: replace one patient, or add/remove one."""
    total_epsilon: float = Field(gt=0, allow_inf_nan=True)
    """Per-site epsilon over every release of the study (inf: no DP)."""
    total_delta: Delta = 1e-5
    """Per-site delta over every release of the study."""
    accountant: Literal["rdp", "pld"] = "rdp"
    """Composition accountant (dp-accounting): RDP, or PLD where every DP mechanism is continuous
    (plain features with floating-point DP-SGD only; the discrete mechanisms are accounted by
    RDP bounds, which PLD cannot compose)."""
    max_cases_per_patient: int = Field(1, ge=1, le=64)
    """Contribution bound: the cases of one patient (partition-file column Patient_ID) that enter
    a secure-aggregate clustering at most; sensitivities scale with it. A local-dp release sends
    one row per patient and DP-SGD samples patients, whatever this value."""
    unsafe_seeded_noise: bool = Field(False)
    """Draw DP noise from a seeded PRNG (reproducible, NOT private); simulation only."""
    unsafe_noise_seed: Seed | None = None
    """Seed used when unsafe_seeded_noise is true."""

    @model_validator(mode="after")
    def _seed_needs_flag(self) -> PrivacySpec:
        if self.unsafe_noise_seed is not None and not self.unsafe_seeded_noise:
            raise ValueError("unsafe_noise_seed is set but unsafe_seeded_noise is false")
        return self


class RadiomicsSpec(_Strict):
    """Whole-brain radiomics settings (the paper's defaults)."""

    bin_width: float = Field(0.09, gt=0, le=1000, allow_inf_nan=False)
    """pyradiomics binWidth on z-scored intensities (paper: 0.09)."""
    binning: Literal["per-image", "shared"] = "per-image"
    """per-image (pyradiomics standard) or shared dataset-wide bin edges."""
    mask: Literal["brain", "brain-without-tumour"] = "brain"
    """Region described: whole brain (FLAIR > 0) or brain minus tumour."""
    normalisation: Literal["crop-box", "brain"] = Field("crop-box")
    """z-score over the cropped box (paper) or over brain voxels only."""
    feature_classes: tuple[FeatureClass, ...] = FEATURE_CLASSES
    """pyradiomics feature classes (shape and diagnostics never)."""

    @model_validator(mode="after")
    def _unique_classes(self) -> RadiomicsSpec:
        if len(set(self.feature_classes)) != len(self.feature_classes) or not self.feature_classes:
            raise ValueError("feature_classes must be a non-empty list without repeats")
        return self


class PinnedFile(_Strict):
    """A file shipped with the protocol (relative to the protocol's folder), pinned by SHA-256."""

    file: str = Field(min_length=1)
    """The pinned file, relative to the protocol's folder."""
    sha256: Sha256
    """SHA-256 the pinned file must have (`sha256:<64 hex>`)."""

    @model_validator(mode="after")
    def _relative(self) -> PinnedFile:
        if self.file.startswith("/") or ".." in self.file.replace("\\", "/").split("/"):
            raise ValueError("file must be a relative path inside the protocol's folder")
        return self


class ReleaseSpec(_Strict):
    """What each site releases of its radiomic features, and how it is protected."""

    mode: Literal["plain", "local-dp", "secure-aggregate"] = "plain"
    """plain: 372 values per case sealed in transit, no DP; local-dp: clipped and noised per case at
    the site; secure-aggregate: no per-case vector leaves a site."""
    mechanism: Literal["gaussian", "laplace"] = "gaussian"
    """DP mechanism of the local-dp release."""
    epsilon: PositiveEpsilon | None = Field(None)
    """Epsilon of the local-dp release (allocated from privacy.total_epsilon)."""
    delta: Delta = 0.0
    """Delta of the local-dp release (0 for laplace)."""
    bounds: PinnedFile | None = Field(None)
    """Per-feature clipping bounds (JSON from `securefed features bounds`), derived from data that
    is not the study's."""
    projection: Literal["none", "subset", "random", "file"] = "none"
    """Lower-dimensional release fixed in advance: none, a feature subset, a seeded random
    projection, or a pinned matrix file."""
    subset: tuple[str, ...] = ()
    """Feature names released with projection = subset."""
    dimension: int | None = Field(None, ge=1, le=372)
    """Released dimension with projection = random."""
    projection_seed: Seed = 0
    """Seed of the random projection (public, fixed in advance)."""
    projection_file: PinnedFile | None = None
    """Pinned projection matrix with projection = file."""

    @model_validator(mode="after")
    def _consistent(self) -> ReleaseSpec:
        if self.mode == "plain" and self.epsilon is not None:
            raise ValueError("release.epsilon is set but release.mode is 'plain' (epsilon = inf)")
        if self.mode == "local-dp":
            if self.epsilon is None:
                raise ValueError("release.mode 'local-dp' needs release.epsilon")
            if self.bounds is None:
                raise ValueError("release.mode 'local-dp' needs release.bounds (clipping bounds)")
            if self.mechanism == "gaussian" and self.delta <= 0:
                raise ValueError("the gaussian mechanism needs release.delta > 0")
            if self.mechanism == "laplace" and self.delta != 0:
                raise ValueError("the laplace mechanism is pure DP: set release.delta = 0")
        if self.projection == "subset":
            if not self.subset:
                raise ValueError("release.projection 'subset' needs release.subset (feature names)")
            if len(set(self.subset)) != len(self.subset):
                raise ValueError("release.subset has repeated feature names")
        elif self.subset:
            raise ValueError("release.subset is only used with release.projection = 'subset'")
        if self.projection == "random" and self.dimension is None:
            raise ValueError("release.projection 'random' needs release.dimension")
        if self.projection == "file" and self.projection_file is None:
            raise ValueError("release.projection 'file' needs release.projection_file")
        return self


class SecureClusteringSpec(_Strict):
    """Secure-aggregate clustering: federated, DP-noised aggregates only (release.mode =
    'secure-aggregate')."""

    algorithm: Literal["dp-histogram", "dp-kmeans"] = "dp-histogram"
    """Secure-aggregate clustering: a DP histogram of projected points, or DP k-means on noised sums
    and counts."""
    epsilon: PositiveEpsilon = 1.0
    """Epsilon of the whole secure clustering stage, per site."""
    delta: Delta = 1e-6
    """Delta of the whole secure clustering stage, per site."""
    iterations: int = Field(3, ge=1, le=100)
    """Rounds of noised aggregates (dp-kmeans; refinement steps)."""
    bins_per_dimension: int = Field(8, ge=2, le=64)
    """Histogram resolution per projected dimension."""
    min_sites_per_aggregate: int = Field(2, ge=2, le=10_000)
    """Fewest sites whose data may enter one aggregate (at least 2); fewer -> refused."""
    max_colluding_sites: int = Field(0, ge=0, le=1000)
    """Sites that may collude with the server and remove their own noise shares (t). Each site
    adds noise of variance sigma^2 / (n - t) for n participants, so the n - t honest sites alone
    reach the calibrated sigma; 0 trusts every site (sigma^2 / n each). Must be below
    min_sites_per_aggregate; a round with n <= t participants is refused."""

    @model_validator(mode="after")
    def _collusion(self) -> SecureClusteringSpec:
        if self.max_colluding_sites >= self.min_sites_per_aggregate:
            raise ValueError(
                f"clustering.secure.max_colluding_sites ({self.max_colluding_sites}) must be "
                f"below min_sites_per_aggregate ({self.min_sites_per_aggregate}): at least one "
                "honest site's noise must remain in every aggregate"
            )
        return self


class ClusteringSpec(_Strict):
    """The paper's clustering (scaling, PCA, GMM) and the choice of k."""

    algorithm: Literal["gmm", "kmeans", "agglomerative"] = "gmm"
    """Server-side estimator: Gaussian mixture (paper), k-means or agglomerative."""
    k: int = Field(10, ge=1, le=1000)
    """Number of clusters (paper: 10, fixed by hand)."""
    k_selection: Literal["fixed", "bic", "silhouette"] = "fixed"
    """fixed, or choose k in [k_min, k_max] by BIC (GMM) or silhouette."""
    k_min: int = Field(2, ge=1, le=1000)
    """Smallest k tried when k is selected."""
    k_max: int = Field(12, ge=1, le=1000)
    """Largest k tried when k is selected."""
    scaling: Literal["percentile", "declared-bounds"] = "percentile"
    """Per-feature scaling: 2nd..98th percentile of train+val (paper), or the protocol's declared
    bounds (required for local-dp)."""
    percentile_low: float = Field(2.0, ge=0, lt=50)
    """Lower percentile of the percentile scaling."""
    percentile_high: float = Field(98.0, gt=50, le=100)
    """Upper percentile of the percentile scaling."""
    pca_components: int = Field(30, ge=1, le=372)
    """PCA components before clustering (paper: 30)."""
    covariance_type: Literal["full", "tied", "diag", "spherical"] = "tied"
    """GaussianMixture covariance type (paper: tied)."""
    n_init: int = Field(20, ge=1, le=1000)
    """Restarts of the estimator (paper: 20)."""
    max_iter: int = Field(100, ge=1, le=100_000)
    """EM/Lloyd iterations per restart (paper: 100)."""
    seed: Seed = 6
    """Random state of the estimator (paper: 6)."""
    secure: SecureClusteringSpec = SecureClusteringSpec()

    @model_validator(mode="after")
    def _k_range(self) -> ClusteringSpec:
        if self.k_min > self.k_max:
            raise ValueError(f"clustering.k_min ({self.k_min}) > clustering.k_max ({self.k_max})")
        if self.k_selection != "fixed" and not (self.k_min <= self.k <= self.k_max):
            raise ValueError("clustering.k must lie in [k_min, k_max] when k is selected")
        return self


class DPSGDSpec(_Strict):
    """Optional DP-SGD (Opacus) during federated training."""

    enabled: bool = False
    """Train with DP-SGD (Opacus) at the sites."""
    epsilon: PositiveEpsilon | None = None
    """Epsilon of the training stage, per site."""
    delta: Delta = 1e-6
    """Delta of the training stage, per site."""
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, allow_inf_nan=False)
    """Per-sample gradient clipping norm."""
    amplification: Literal["sampling", "none"] = "sampling"
    """Privacy amplification by the batch sampling. ``sampling``: under replace-one, fixed-size
    batches of distinct patients drawn without replacement, accounted by dp-accounting's RDP for
    sampling without replacement (Wang, Balle and Kasiviswanathan 2019; the site's train patients
    of the global phase are the population; finetuning rounds are charged unamplified); under
    add-remove-one, Poisson sampling at ``sampling_rate`` (batches may be empty: a noise-only
    step). ``none``: every step charged as the full Gaussian mechanism (no amplification)."""
    sampling_rate: float | None = Field(None, gt=0, le=1)
    """Poisson sampling rate of each patient per step (add-remove-one with amplification
    ``sampling`` only; a public constant, never computed from a site's count)."""
    population: int | None = Field(None, ge=2, le=1_000_000)
    """Sampling without replacement (replace-one with amplification ``sampling``): the public
    number of patient slots each step draws ``batch_size`` from. A site with fewer train patients
    pads to it with empty slots (their draws add no gradient: a noise-only share of the step); a
    site with more draws from all of its patients, a smaller sampling rate charged as this one
    (the bound only grows with the rate). Never a site's own count, so the plan and the charged
    events do not depend on the site's data."""
    noise: Literal["float", "discrete-gaussian"] = "float"
    """Noise of each step. ``float``: Opacus's Gaussian in floating point (``secure_mode``, a
    mitigation of the floating-point attack of Mironov 2012, not a proof; simulation only).
    ``discrete-gaussian`` (required in a deployment protocol):
    the clipped per-sample gradients rounded onto a lattice and exact discrete Gaussian noise from
    OpenDP (securefed.training.discrete_dpsgd), with ``amplification = "none"`` only; OpenDP's
    exact sampler makes a step of the 1.19 M-parameter model tens of seconds slower."""
    weight_noise: float = Field(32.0, gt=0, le=1e6, allow_inf_nan=False)
    """CFFL with ``release.mode = "secure-aggregate"`` (every site in every cluster's federation,
    securefed.federation.weighting): the standard deviation, in patients, of the Gaussian noise on
    each cluster round's summed weight (each site's weight: its expected patients per step over
    ``batch_size``). Each site adds an exact discrete Gaussian share sized for the honest sites of
    any aggregate (min(min_sites_per_aggregate, reconstruction_threshold) minus
    clustering.secure.max_colluding_sites); each cluster round is charged this Gaussian
    (sensitivity: one patient) with its DP-SGD steps, in the calibration too. Larger: a noisier
    finetuning step size, a smaller charge (32 over 40 cluster rounds: zCDP rho 0.02)."""

    @model_validator(mode="after")
    def _eps(self) -> DPSGDSpec:
        if self.enabled and self.epsilon is None:
            raise ValueError("training.dp_sgd.enabled needs training.dp_sgd.epsilon")
        return self


class ClientDPSpec(_Strict):
    """Optional client-level DP of the model updates under SecAgg+ (securefed.privacy.ddg): the
    distributed discrete Gaussian of Kairouz, Liu and Steinke (2021). Each site clips its round
    update, rotates, rounds and adds its share of discrete Gaussian noise before the SecAgg+
    masking, so the sum the server opens is DP for every site's whole dataset."""

    enabled: bool = False
    """Add client-level DP noise to every model update a site sends (needs aggregation
    ``secagg+``; not together with dp_sgd)."""
    epsilon: PositiveEpsilon | None = None
    """Epsilon of the training stage, per site, over every planned round (global rounds plus
    finetuning rounds for every cluster a site may join)."""
    delta: Delta = 1e-6
    """Delta of the training stage, per site."""
    clip_norm: float = Field(1.0, gt=0, le=1e6)
    """L2 bound of a site's model update (new weights minus the round's start model) per round."""
    max_colluding_sites: int = Field(0, ge=0, le=1000)
    """Sites that may collude with the server and remove their own noise shares (t): each share
    is sized so that the ``min(min_sites_per_aggregate, reconstruction_threshold) - t`` honest
    sites of any accepted aggregate give it the full noise."""
    max_sites: int | None = Field(None, ge=2, le=10_000)
    """The most sites of any aggregate (public): sizes the head room of the modular sum, so
    every site and the server derive one plan from the protocol alone, never from a count in the
    coordinator's message. Default: the protocol's listed sites; required when it lists none."""
    rounding_beta: float = Field(0.6065306597126334, ge=0, lt=1)
    """Conditional randomized rounding (Kairouz et al. 2021, Theorem 2): the rounding is drawn
    again until the rounded norm is within the bound at this beta (default exp(-1/2)); 0: plain
    rounding with the looser bound ``norm + sqrt(d)``."""

    @model_validator(mode="after")
    def _eps(self) -> ClientDPSpec:
        if self.enabled and self.epsilon is None:
            raise ValueError("training.client_dp.enabled needs training.client_dp.epsilon")
        return self


Baseline = Literal["local", "local-finetune", "fedavg", "cffl", "cffl-ideal", "centralized"]
BASELINES: tuple[Baseline, ...] = get_args(Baseline)


class TrainingSpec(_Strict):
    """Federated segmentation training: global FedAvg, then per-cluster finetuning (CFFL)."""

    model: Literal["dynunet-small", "dp-unet"] = "dynunet-small"
    """Segmentation network: the paper's small DynUNet, or the DP-SGD capable MONAI UNet (same
    widths, instance norm; always used when dp_sgd is enabled, and selectable without DP-SGD to
    compare the same model with and without it)."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    """Local optimiser (paper: SGD without momentum)."""
    lr: float = Field(0.05, gt=0, le=10, allow_inf_nan=False)
    """Learning rate of the global FedAvg phase (paper: 0.05)."""
    momentum: float = Field(0.0, ge=0, lt=1)
    """SGD momentum (paper: 0)."""
    weight_decay: float = Field(1e-5, ge=0, le=1)
    """Weight decay (paper: 1e-5)."""
    batch_size: int = Field(1, ge=1, le=1024)
    """Local batch size (paper: 1; use >= 2 on CPU)."""
    crop_size: tuple[Voxels, Voxels, Voxels] = (128, 128, 128)
    """Training crop in voxels (paper: 128^3)."""
    crop_sampling: Literal["random", "tumour-centred"] = "random"
    """random crops (paper) or tumour-centred sampling."""
    tumour_crop_fraction: float = Field(0.67, ge=0, le=1)
    """Share of crops centred on tumour with tumour-centred sampling."""
    spacing_mm: float | None = Field(None, gt=0, le=20, allow_inf_nan=False)
    """Resample volumes to this isotropic spacing before training; unset keeps 1 mm."""
    loss: Literal["dice", "dice-bce"] = Field("dice")
    """dice = MONAI DiceLoss on sigmoid outputs (paper); dice-bce adds a binary cross-entropy per
    region (TC, WT, ET each on its own), which also penalises false positives in crops without
    tumour."""
    augmentation: bool = False
    """Random flips/intensity augmentation during local training."""
    global_rounds: int = Field(300, ge=1, le=100_000)
    """FedAvg rounds of the global phase (paper: 300)."""
    local_epochs: int = Field(1, ge=1, le=10_000)
    """Local epochs per round (paper: 1)."""
    local_steps: int | None = Field(None, ge=1, le=1_000_000)
    """Local optimiser steps per round: a cap on the epochs without DP training (unset: full
    epochs); required with DP-SGD, which runs exactly this many steps per round whatever the
    site's case count (the plan comes from public values only)."""
    finetune_rounds: int = Field(50, ge=0, le=100_000)
    """FedAvg rounds per cluster in the CFFL phase (paper: 50)."""
    finetune_lr: float = Field(0.02, gt=0, le=10, allow_inf_nan=False)
    """Learning rate of the CFFL phase (paper: 0.02)."""
    local_epochs_baseline: int = Field(30, ge=1, le=10_000)
    """Epochs of the local and local-finetune baselines."""
    validation_every: int = Field(1, ge=1, le=10_000)
    """Federated validation every this many rounds (and always in a phase's last round) under a
    protocol whose sites send validation metrics; the best round is chosen among the validated
    ones. At FeTS scale every site scoring its validation cases each round dominated the round
    time (benchmarks/results/fets1251-private.md)."""
    validation_cases: int | None = Field(None, ge=1, le=100_000)
    """At most this many validation cases per site in a federated validation: a subset drawn
    with the protocol's seed, the same in every round (unset: all). Keeps a large site's
    validation within the phase's timeout, so that it is not dropped from the pooled Dice."""
    local_finetune_lr: float = Field(0.005, gt=0, le=10, allow_inf_nan=False)
    """Learning rate of local finetuning (paper: 0.005)."""
    baselines: tuple[Baseline, ...] = ("local", "fedavg", "cffl")
    """Methods to run and report; cffl-ideal and centralized are simulation-only, non-private upper
    bounds."""
    aggregation: Literal["fedavg", "secagg+", "bfv"] = "secagg+"
    """How model updates are combined: plain FedAvg (the server sees each site's update), Flower
    SecAgg+ (the server unmasks only the sum) or fixed-point BFV homomorphic encryption (the server
    adds ciphertexts it cannot decrypt; the ``homomorphic.decryptor`` site decrypts the verified
    sum once per round; see [homomorphic])."""
    server_lr: float = Field(1.0, gt=0, le=10)
    """Server learning rate on the aggregate update of the global phase (FedAvgM, Hsu et al. 2019; 1
    with momentum 0 = plain FedAvg, the paper). CFFL finetuning always uses plain FedAvg."""
    server_momentum: float = Field(0.0, ge=0, lt=1)
    """Server momentum on the aggregate update of the global phase (FedAvgM); applied by the server
    to the securely aggregated model, so it sees nothing more than with FedAvg."""
    min_sites_per_aggregate: int = Field(2, ge=1, le=10_000)
    """Fewest sites per federated aggregate; smaller clusters follow small_cluster_policy."""
    small_cluster_policy: Literal["fallback-global"] = "fallback-global"
    """A cluster with too few sites keeps the global model (fallback-global, the only policy served;
    the report names such clusters). Merging with a neighbouring cluster is not offered: it would
    finetune on cases of another scanner group."""
    seed: Seed = 0
    """Seed of crop sampling and initialisation."""
    reply_slot_s: float = Field(0.0, ge=0, le=3600)
    """Reply pacing (securefed.federation.pacing): a site sends every reply that ran local
    training exactly this many seconds after the request arrived, so the reply time says nothing
    about its data; a reply whose work did not fit is dropped and the slot-overrun code leaves at
    that time instead (one bit per round; recorded in the site's audit log). 0: replies leave
    when ready and their timing is not protected. Required
    (> 0) in a deployment protocol that claims a finite epsilon; below
    secure_aggregation.timeout_s."""
    initial_weights: PinnedFile | None = None
    """Public pretrained weights every party starts from (a `.npz` written by `securefed
    pretrain` from public data, shipped next to the protocol, pinned by SHA-256; each site checks
    the hash against its own copy before it trains). Unset: the seeded random initialisation.
    Made from public data only: nothing of a site's patients is in it."""
    trainable: Literal["all", "outer-blocks", "output-block", "biases"] = "all"
    """Which parameters local training updates (dp-unet only; the rest stays at the starting
    weights, so a released model equals the public start there). ``outer-blocks``: the
    full-resolution encoder and decoder blocks (13,257 of 1,190,345 values); ``output-block``:
    the last decoder block (2,841); ``biases``: every bias term (822; bias-only finetuning as in
    DP-BiTFiT, Bu et al. 2022). Fewer trained values carry DP noise on fewer coordinates: the
    DP-SGD noise norm on an update falls with the square root of the trained count."""
    dp_sgd: DPSGDSpec = DPSGDSpec()
    client_dp: ClientDPSpec = ClientDPSpec()

    @model_validator(mode="after")
    def _trainable_model(self) -> TrainingSpec:
        dp_model = self.model == "dp-unet" or self.dp_sgd.enabled
        if self.trainable != "all" and not dp_model:
            raise ValueError(
                f"training.trainable = {self.trainable!r} names blocks of the dp-unet model; set "
                'training.model = "dp-unet" or trainable = "all"'
            )
        return self

    @property
    def dp_training(self) -> Literal["dp-sgd", "client-dp"] | None:
        """The DP mechanism of the training stage, if any."""
        if self.dp_sgd.enabled:
            return "dp-sgd"
        return "client-dp" if self.client_dp.enabled else None

    @property
    def dp_training_budget(self) -> tuple[float, float] | None:
        """(epsilon, delta) of the training stage's DP mechanism (None: no DP training)."""
        spec = self.dp_sgd if self.dp_sgd.enabled else self.client_dp
        if not spec.enabled or spec.epsilon is None:
            return None
        return float(spec.epsilon), float(spec.delta)


class SecureAggregationSpec(_Strict):
    """Flower SecAgg+ parameters (also used by the secure-aggregate clustering sums)."""

    num_shares: int = Field(3, ge=2, le=10_000)
    """SecAgg+ shares per client secret (>= 3, <= number of sites)."""
    reconstruction_threshold: int = Field(2, ge=2, le=10_000)
    """Shares needed to reconstruct: more than half of num_shares and fewer than it (under
    secagg+). The round survives dropouts while this many remain; a deviating coordinator
    colluding with fewer than 2 * threshold - num_shares sites cannot unmask a site."""
    clipping_range: float = Field(8.0, gt=0, le=1e6, allow_inf_nan=False)
    """SecAgg+ clipping range of the quantised values."""
    quantization_range: int = Field(4_194_304, ge=2, le=2**31)
    """SecAgg+ quantisation range (integer levels)."""
    max_weight: float = Field(1000.0, gt=0, le=1e9, allow_inf_nan=False)
    """Largest sample-count weight (keep near the largest site). With secure-aggregate features
    and CFFL it is also the public scale of each site's case weight in a cluster's average
    (securefed.federation.weighting: weight min(n, max_weight) / max_weight): too large a value
    shrinks the scaled updates towards SecAgg+'s quantisation step."""
    timeout_s: float = Field(120.0, gt=0, le=86400, allow_inf_nan=False)
    """Seconds a SecAgg+ stage waits for clients before dropping them."""

    def secaggplus_problem(self) -> str | None:
        """What Flower's SecAgg+ would refuse in these parameters (None: acceptable)."""
        if self.num_shares < 3:
            return f"secure_aggregation.num_shares ({self.num_shares}) must be >= 3 for SecAgg+"
        if self.reconstruction_threshold >= self.num_shares:
            return (
                f"secure_aggregation.reconstruction_threshold ({self.reconstruction_threshold}) "
                f"must be < num_shares ({self.num_shares}) for SecAgg+"
            )
        if 2 * self.reconstruction_threshold <= self.num_shares:
            return (
                f"secure_aggregation.reconstruction_threshold ({self.reconstruction_threshold}) "
                f"must be more than half of num_shares ({self.num_shares}): Flower's SecAgg+ has "
                "no consistency round, so a coordinator could ask some neighbours for a site's "
                "mask-seed shares and others for its key shares and unmask it alone "
                "(docs/threat-model.md)"
            )
        return None


class HomomorphicSpec(_Strict):
    """Fixed-point BFV aggregation (``training.aggregation = "bfv"``, securefed.crypto.bfv): the
    sites share one BFV key (dealt by the decryptor, sealed to each site); the server only adds
    ciphertexts. Values are clipped to ``secure_aggregation.clipping_range``."""

    precision_bits: int = Field(20, ge=8, le=28)
    """Bits per quantised weight: the aggregate's error is at most clipping_range / (2^bits - 1)
    (20: under 1e-6 of the clipping range)."""
    decryptor: str | None = None
    """The site that deals the key and decrypts every round's verified sum (once per phase and
    round); unset: the training site with the lowest partition id. It learns what the server
    learns: the aggregate model."""


class DPSummarySpec(_Strict):
    """The deployment's test summary under a protocol that claims a finite epsilon
    (securefed.privacy.test_summary): each training site sums, over its own test cases, the Dice
    per region of the global model and of its case's cluster model, adds its share of discrete
    Gaussian noise and sends the vector masked (the masking keys of the secure clustering);
    only the noised total over the sites opens. Off (no evaluation value leaves a site) unless
    ``epsilon`` is set."""

    epsilon: PositiveEpsilon | None = None
    """Epsilon of the one summary release, per patient and site (counted in
    privacy.total_epsilon); unset: no test summary under a finite epsilon."""
    delta: Delta = 1e-6
    """Delta of the summary release."""
    min_sites: int = Field(3, ge=2, le=10_000)
    """Fewest sites in the summary's aggregate; fewer -> each site refuses. The noise is shared
    by the sites that do not collude with the server (clustering.secure.max_colluding_sites),
    which must be fewer than this."""


class EvaluationSpec(_Strict):
    """Sliding-window inference and metrics (the paper's empty-mask rule)."""

    roi_size: tuple[Voxels, Voxels, Voxels] = (128, 128, 128)
    """Sliding-window size for inference (paper: 128^3)."""
    overlap: float = Field(0.5, ge=0, lt=1)
    """Sliding-window overlap (paper: 0.5)."""
    blend: Literal["gaussian", "constant"] = "gaussian"
    """Sliding-window blending (paper: gaussian)."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """Sigmoid threshold for the TC/WT/ET masks (paper: 0.5)."""
    hd95: bool = True
    """Also compute HD95 (MONAI)."""
    postprocess: Literal["none", "largest-component"] = "none"
    """none (paper) or keep the largest connected whole-tumour component and restrict TC/ET to
    it."""
    dp_summary: DPSummarySpec = DPSummarySpec()
    """The deployment's DP test summary under a finite epsilon (off by default)."""


class Protocol(_Strict):
    """A complete study protocol (schema v1)."""

    schema_version: Literal[1]
    """Schema version of this file; always 1 for this schema."""
    study: StudyInfo
    data: DataSpec = DataSpec()
    sites: tuple[SiteSpec, ...] = ()
    """The sites (hospitals); required in deployment, optional in simulation (then one site per
    partition id, named site-<id>)."""
    server: PartySpec = PartySpec()
    governance: GovernanceSpec = GovernanceSpec()
    privacy: PrivacySpec
    radiomics: RadiomicsSpec = RadiomicsSpec()
    release: ReleaseSpec = ReleaseSpec()
    clustering: ClusteringSpec = ClusteringSpec()
    training: TrainingSpec = TrainingSpec()
    secure_aggregation: SecureAggregationSpec = SecureAggregationSpec()
    homomorphic: HomomorphicSpec = HomomorphicSpec()
    evaluation: EvaluationSpec = EvaluationSpec()

    # -- cross-field checks --------------------------------------------------------------------
    @model_validator(mode="after")
    def _cross_checks(self) -> Protocol:
        if self.study.mode == "deployment":
            self._check_deployment()
        self._check_sites()
        self._check_budget()
        self._check_release()
        self._check_client_dp()
        self._check_cluster_federations()
        self._check_dp_sgd()
        self._check_accountant()
        self._check_reply_pacing()
        self._check_dp_summary()
        return self

    def _check_dp_summary(self) -> None:
        """A DP test summary only where the protocol claims a finite epsilon (a plain protocol's
        sites send their per-site means in clear), with an honest site left to hold its noise."""
        summary = self.evaluation.dp_summary
        if summary.epsilon is None:
            return
        if not self.claims_finite_epsilon:
            raise ValueError(
                "evaluation.dp_summary.epsilon: a plain protocol's sites send their test means in "
                "clear; a DP test summary needs a protocol that claims a finite epsilon (remove "
                "evaluation.dp_summary or protect the features or the training)"
            )
        if summary.delta <= 0:
            raise ValueError("evaluation.dp_summary.delta must be > 0 (the Gaussian mechanism)")
        if self.clustering.secure.max_colluding_sites >= summary.min_sites:
            raise ValueError(
                f"evaluation.dp_summary.min_sites ({summary.min_sites}) must be above "
                f"clustering.secure.max_colluding_sites "
                f"({self.clustering.secure.max_colluding_sites}): an honest site's noise must "
                "remain in the summary"
            )

    def _check_reply_pacing(self) -> None:
        """Training replies paced within the server's round timeout; a deployment that claims a
        finite epsilon paces them (their timing grows with a site's data)."""
        slot = self.training.reply_slot_s
        if slot >= self.secure_aggregation.timeout_s:
            raise ValueError(
                f"training.reply_slot_s: {slot:g} s is not below secure_aggregation.timeout_s "
                f"({self.secure_aggregation.timeout_s:g} s): every paced reply would time out; "
                "lower the slot or raise the timeout"
            )
        if not self.is_simulation and self.claims_finite_epsilon and slot <= 0:
            raise ValueError(
                "training.reply_slot_s: a 'deployment' protocol that claims a finite epsilon "
                "must pace training replies (their timing grows with a site's data); set it "
                "above the slowest site's round time, e.g. 2x the round time measured in a "
                "simulation run"
            )

    def _check_cluster_federations(self) -> None:
        """With secure-aggregate features no case vector is released, so every site joins every
        cluster's federation (securefed.protocol.egress) and sends its update and its case weight
        inside the secure aggregate (securefed.federation.weighting): only SecAgg+ or BFV hides
        which sites hold the cluster. With DP-SGD a site without cases of a cluster runs the
        same noise-only DP-SGD round, and the weights are noised by shares that need at least one
        honest site in every aggregate."""
        if self.release.mode != "secure-aggregate" or "cffl" not in self.training.baselines:
            return
        if self.training.aggregation not in ("secagg+", "bfv"):
            raise ValueError(
                "training.aggregation: CFFL with release.mode 'secure-aggregate' needs 'secagg+' "
                "or 'bfv' (every site joins every cluster's federation and only a secure "
                "aggregate hides which of them hold no case of the cluster)"
            )
        if self.training.dp_sgd.enabled and self.weight_noise_honest_sites() < 1:
            raise ValueError(
                "training.dp_sgd with CFFL under release.mode 'secure-aggregate': the noise on the "
                "cluster weights needs an honest site in every aggregate, but "
                "min(training.min_sites_per_aggregate, secure_aggregation."
                "reconstruction_threshold) - clustering.secure.max_colluding_sites = "
                f"{self.weight_noise_honest_sites()}; raise the first or lower the last"
            )

    def _check_deployment(self) -> None:
        """A deployment names every party by key and allows no unsafe option; every missing
        requirement is reported at once."""
        problems = []
        if not self.sites:
            problems.append("sites: a 'deployment' protocol must list its sites")
        for site in self.sites:
            missing = [k for k in ("signing_key", "encryption_key") if getattr(site, k) is None]
            if missing:
                problems.append(f"sites.{site.id}: needs {' and '.join(missing)} "
                                "(`securefed keys show SITE.pub.json`)")  # fmt: skip
        if self.server.signing_key is None or self.server.encryption_key is None:
            problems.append("server: needs the server's signing_key and encryption_key")
        if self.governance.signing_key is None:
            problems.append("governance.signing_key: a 'deployment' protocol must be signed")
        if self.privacy.unsafe_seeded_noise:
            problems.append(
                "privacy.unsafe_seeded_noise is only allowed in a 'simulation' protocol"
            )
        if len(problems) == 1:
            raise ValueError(problems[0])
        if problems:
            raise ValueError(
                f"a 'deployment' protocol lacks {len(problems)} requirement(s): "
                + "; ".join(problems)
            )

    def _check_sites(self) -> None:
        """Unique site and partition ids; SecAgg+ shares and held-out partitions that fit them."""
        ids = [s.id for s in self.sites]
        if len(set(ids)) != len(ids):
            raise ValueError("sites: site ids must be unique")
        parts = [s.partition_id for s in self.sites]
        if len(set(parts)) != len(parts):
            raise ValueError("sites: partition ids must be unique")
        nodes = [s.node_key for s in self.sites if s.node_key is not None]
        if len(set(nodes)) != len(nodes):
            raise ValueError("sites: node keys must be unique (one SuperNode key per site)")
        secagg = self.training.aggregation == "secagg+"
        if secagg and (problem := self.secure_aggregation.secaggplus_problem()) is not None:
            raise ValueError(problem)
        if self.training.aggregation == "bfv":
            decryptor = self.homomorphic.decryptor
            if decryptor is not None and decryptor not in ids:
                raise ValueError(f"homomorphic.decryptor {decryptor!r} is not a listed site")
            if decryptor is None and self.study.mode == "deployment":
                raise ValueError("homomorphic.decryptor: a 'deployment' protocol must name it")
        if self.training.aggregation != "fedavg" and self.training.min_sites_per_aggregate < 2:
            raise ValueError(
                "training.min_sites_per_aggregate: a secure aggregate of one site is that site's "
                "update in clear; use at least 2"
            )
        if self.sites and secagg:
            n = len(self.sites)
            if self.secure_aggregation.num_shares > n:
                raise ValueError(
                    f"secure_aggregation.num_shares ({self.secure_aggregation.num_shares}) must "
                    f"be <= the number of sites ({n})"
                )
        if self.sites:
            unknown = set(self.data.held_out_partitions) - set(parts)
            if unknown:
                raise ValueError(
                    f"data.held_out_partitions: {sorted(unknown)} are not listed sites"
                )

    def _check_budget(self) -> None:
        """The stage allocations fit in the study's total budget."""
        eps, delta = self.allocated_budget()
        if eps > self.privacy.total_epsilon + 1e-12:
            raise ValueError(
                f"privacy.total_epsilon ({self.privacy.total_epsilon}) is below the sum of the "
                f"stage allocations ({eps:g}: release + clustering.secure + training.dp_sgd or "
                "training.client_dp + evaluation.dp_summary)"
            )
        if delta > self.privacy.total_delta + 1e-15:
            raise ValueError(
                f"privacy.total_delta ({self.privacy.total_delta:g}) is below the sum of the stage "
                f"deltas ({delta:g})"
            )

    def _check_release(self) -> None:
        """A protected release needs per-image binning, declared bounds and bounds scaling."""
        if self.release.mode != "plain" and self.radiomics.binning == "shared":
            raise ValueError(
                "radiomics.binning: 'shared' bin edges are a statistic of all of a site's cases, "
                "so one patient changes every vector and the DP sensitivity no longer holds; use "
                "'per-image' with release.mode = '" + self.release.mode + "'"
            )
        if self.release.mode == "local-dp" and self.privacy.neighbouring == "add-remove-one":
            raise ValueError(
                "privacy.neighbouring: 'add-remove-one' is not offered with release.mode "
                "'local-dp': each released row travels with its subject id, which discloses a "
                "patient's presence whatever the noise; use 'replace-one'"
            )
        if self.release.mode == "secure-aggregate" and self.release.bounds is None:
            raise ValueError("release.mode 'secure-aggregate' needs release.bounds")
        if self.clustering.scaling == "declared-bounds" and self.release.bounds is None:
            raise ValueError("clustering.scaling 'declared-bounds' needs release.bounds")
        if self.release.mode == "local-dp" and self.clustering.scaling == "percentile":
            raise ValueError(
                "clustering.scaling: release.mode 'local-dp' needs clustering.scaling = "
                "'declared-bounds' (scale with the protocol's bounds, not with noised data)"
            )

    def _check_dp_sgd(self) -> None:
        """Poisson sampling (a declared rate) under add-remove-one; fixed-size batches under
        replace-one, where the dataset size is public."""
        dps = self.training.dp_sgd
        if not dps.enabled:
            return
        add_remove = self.privacy.neighbouring == "add-remove-one"
        if dps.amplification == "sampling" and add_remove and dps.sampling_rate is None:
            raise ValueError(
                "training.dp_sgd.sampling_rate: amplification 'sampling' under add-remove-one is "
                "Poisson sampling at a declared rate; set sampling_rate (e.g. batch_size / the "
                "smallest site's train patients) or amplification = 'none'"
            )
        if dps.noise == "float" and not self.is_simulation:
            raise ValueError(
                "training.dp_sgd.noise: a 'deployment' protocol's DP-SGD needs noise = "
                "'discrete-gaussian' (with amplification = 'none'): floating-point Gaussian noise "
                "is a mitigation of Mironov's attack, not a proof, so its epsilon is not claimed "
                "outside simulation; or use training.client_dp (exact noise, fast)"
            )
        if dps.noise == "discrete-gaussian" and dps.amplification != "none":
            raise ValueError(
                "training.dp_sgd.noise: the discrete Gaussian is accounted without amplification "
                "by sampling (the subsampled discrete Gaussian's RDP is not proven to be the "
                "continuous one's); set amplification = 'none', or noise = 'float'"
            )
        if dps.sampling_rate is not None and not (add_remove and dps.amplification == "sampling"):
            raise ValueError(
                "training.dp_sgd.sampling_rate: Poisson sampling is used under add-remove-one with "
                "amplification 'sampling' only (replace-one draws fixed-size batches); remove it"
            )
        if self.training.local_steps is None:
            raise ValueError(
                "training.local_steps: DP-SGD runs exactly local_steps steps per round (a step "
                "count that follows the site's case count would reveal it); set it, e.g. 5"
            )
        wor = dps.amplification == "sampling" and not add_remove
        if wor and dps.population is None:
            raise ValueError(
                "training.dp_sgd.population: sampling without replacement (replace-one) draws "
                "each batch from a public number of patient slots, never the site's own count; "
                "set population (e.g. the smallest site's train patients) or amplification = "
                "'none'"
            )
        if dps.population is not None and not wor:
            raise ValueError(
                "training.dp_sgd.population: used by sampling without replacement (replace-one "
                "with amplification 'sampling') only; remove it"
            )
        if wor and dps.population is not None and dps.population <= self.training.batch_size:
            raise ValueError(
                f"training.dp_sgd.population ({dps.population}) must exceed training.batch_size "
                f"({self.training.batch_size}) for sampling to amplify; raise it or set "
                "amplification = 'none'"
            )

    def _check_accountant(self) -> None:
        """PLD composes privacy loss distributions of continuous mechanisms; securefed's discrete
        ones (the local-dp release's grid samplers, the secure clustering's and client-level DP's
        distributed discrete Gaussian, DP-SGD's lattice noise) are accounted by their RDP/zCDP
        bounds, which say nothing about their loss distributions: only RDP composes them."""
        if self.privacy.accountant != "pld":
            return
        discrete = [
            name
            for name, used in (
                ("release.mode 'local-dp'", self.release.mode == "local-dp"),
                ("release.mode 'secure-aggregate'", self.release.mode == "secure-aggregate"),
                ("training.client_dp", self.training.client_dp.enabled),
                ("training.dp_sgd.noise 'discrete-gaussian'",
                 self.training.dp_sgd.enabled and self.training.dp_sgd.noise != "float"),
            )
            if used
        ]  # fmt: skip
        if discrete:
            raise ValueError(
                f"privacy.accountant: 'pld' would read {', '.join(discrete)} as continuous "
                "mechanisms (their discrete noise is accounted by RDP bounds, not by a privacy "
                "loss distribution); use accountant = 'rdp'"
            )

    def _check_client_dp(self) -> None:
        """Client-level DP runs inside SecAgg+, alone, on a modulus the masked sum keeps."""
        cdp = self.training.client_dp
        if not cdp.enabled:
            return
        if self.training.dp_sgd.enabled:
            raise ValueError(
                "training.client_dp: choose one DP training mechanism (dp_sgd or client_dp)"
            )
        if self.training.aggregation != "secagg+":
            raise ValueError(
                "training.client_dp needs training.aggregation = 'secagg+' (the noise shares "
                "add up inside the masked sum; no party may see a site's update)"
            )
        m = self.secure_aggregation.quantization_range
        if m < 2**16 or m & (m - 1):
            raise ValueError(
                f"secure_aggregation.quantization_range ({m}): client-level DP takes the sum "
                "modulo it, so it must be a power of two >= 65536 (e.g. 4194304)"
            )
        if not self.sites and cdp.max_sites is None:
            raise ValueError(
                "training.client_dp.max_sites: a protocol that lists no sites must declare the "
                "most sites of an aggregate (every party derives the plan from it)"
            )
        n_max = self.client_dp_max_sites()
        if n_max * m >= 2**32:
            raise ValueError(
                f"secure_aggregation.quantization_range ({m}): {n_max} sites of "
                "client-level DP overflow Flower's 2^32 SecAgg+ modulus; lower it"
            )
        fewest = min(
            self.training.min_sites_per_aggregate, self.secure_aggregation.reconstruction_threshold
        )
        if cdp.max_colluding_sites >= fewest:
            raise ValueError(
                f"training.client_dp.max_colluding_sites ({cdp.max_colluding_sites}) must be "
                f"below min(min_sites_per_aggregate, reconstruction_threshold) ({fewest}): at "
                "least one honest site's noise must remain in every aggregate"
            )

    # -- derived views -------------------------------------------------------------------------
    def allocated_budget(self) -> tuple[float, float]:
        """(epsilon, delta) that the protocol's stages allocate out of the per-site total."""
        eps = 0.0
        delta = 0.0
        if self.release.mode == "local-dp" and self.release.epsilon is not None:
            eps += self.release.epsilon
            delta += self.release.delta
        if self.release.mode == "secure-aggregate":
            eps += self.clustering.secure.epsilon
            delta += self.clustering.secure.delta
        if (training := self.training.dp_training_budget) is not None:
            eps += training[0]
            delta += training[1]
        if (summary := self.evaluation.dp_summary).epsilon is not None:
            eps += summary.epsilon
            delta += summary.delta
        return eps, delta

    @property
    def claims_finite_epsilon(self) -> bool:
        """A DP release somewhere (local-dp or secure-aggregate features, DP-SGD or client-level
        DP): then no patient-derived value may leave a site in clear (sites hold back their
        training loss)."""
        return self.release.mode != "plain" or self.training.dp_training is not None

    @property
    def is_simulation(self) -> bool:
        return self.study.mode == "simulation"

    def weight_noise_honest_sites(self) -> int:
        """The fewest honest sites in any training aggregate, which share the noise of the
        cluster weights under DP-SGD with secure-aggregate features (training.dp_sgd.weight_noise):
        the fewest sites of an accepted aggregate minus those that may collude with the server."""
        fewest = min(
            self.training.min_sites_per_aggregate, self.secure_aggregation.reconstruction_threshold
        )
        return int(fewest - self.clustering.secure.max_colluding_sites)

    def client_dp_max_sites(self) -> int:
        """The most sites of a client-level DP aggregate: ``training.client_dp.max_sites``, else
        the listed sites (a public value of the protocol; never the coordinator's count)."""
        declared = self.training.client_dp.max_sites
        return int(declared) if declared is not None else max(2, len(self.sites))

    def resolve_sites(self, partition_ids: list[int] | tuple[int, ...]) -> tuple[SiteSpec, ...]:
        """The study's sites: those listed, or (simulation without a list) one site per partition
        of the partition file, named ``site-<partition_id>``."""
        if self.sites:
            return self.sites
        if not self.is_simulation:  # pragma: no cover - rejected by validation
            raise ValueError("a deployment protocol must list its sites")
        return tuple(
            SiteSpec(id=simulated_site_id(pid), partition_id=pid)
            for pid in sorted(set(partition_ids))
        )

    def decryptor_partition(self) -> int | None:
        """The partition of the BFV key holder that decrypts (``homomorphic.decryptor``, else the
        listed training site with the lowest partition id); None in a simulation protocol that
        lists no sites (the lowest training partition of the run)."""
        if self.homomorphic.decryptor is not None:
            return self.partition_of_site(self.homomorphic.decryptor)
        held = set(self.data.held_out_partitions)
        listed = [s.partition_id for s in self.sites if s.partition_id not in held]
        return min(listed) if listed else None

    def partition_of_site(self, site_id: str) -> int | None:
        """The partition id of ``site_id``: its listed entry, or (simulation without a list) the
        number in ``site-<partition_id>``; None for no site of this protocol."""
        if self.sites:
            return next((s.partition_id for s in self.sites if s.id == site_id), None)
        prefix, _, number = site_id.partition("-")
        if self.is_simulation and prefix == "site" and number.isdigit():
            return int(number) if simulated_site_id(int(number)) == site_id else None
        return None


def simulated_site_id(partition_id: int) -> str:
    """The id of a simulated site (a simulation protocol that lists no sites)."""
    return f"site-{partition_id}"
