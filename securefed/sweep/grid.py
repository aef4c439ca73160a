"""The sweep grid (``--grid GRID.toml``, docs/sweep.md): lists of values per axis; every
combination is one point, a protocol derived from the base PROTOCOL.

```toml
[grid]
release = ["plain", "local-dp"]        # release.mode of each point
feature_epsilon = [4.0]                # local-dp: release.epsilon; secure-aggregate:
                                       # clustering.secure.epsilon (unused by plain)
training = ["none", "dp-sgd"]          # none | dp-sgd | client-dp
training_epsilon = [8.0]               # training.dp_sgd / training.client_dp epsilon
aggregation = ["secagg+"]              # training.aggregation (fedavg | secagg+ | bfv)
attacks = true                         # run `securefed audit features` on every point
# stop_after = "clustering"            # optional: features and clustering only (no training,
                                       # so no Dice and no Pareto front)
```

A point's privacy total is the sum of its stage allocations (infinite without DP). Points the
protocol schema refuses (e.g. client-level DP under fedavg) are listed as skipped with the
schema's reason.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from securefed.errors import ConfigError, ProtocolError
from securefed.protocol import parse_protocol

__all__ = ["DEFAULT_GRID", "GridSpec", "Point", "expand", "load_grid", "point_protocol"]

Release = Literal["plain", "local-dp", "secure-aggregate"]
TrainingPrivacy = Literal["none", "dp-sgd", "client-dp"]
Aggregation = Literal["fedavg", "secagg+", "bfv"]


class GridSpec(BaseModel):
    """The axes of a sweep (each a non-empty list)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    release: tuple[Release, ...] = Field(("plain", "local-dp"), min_length=1, max_length=3)
    feature_epsilon: tuple[float, ...] = Field((4.0,), min_length=1, max_length=32)
    training: tuple[TrainingPrivacy, ...] = Field(("none", "dp-sgd"), min_length=1, max_length=3)
    training_epsilon: tuple[float, ...] = Field((8.0,), min_length=1, max_length=32)
    aggregation: tuple[Aggregation, ...] = Field(("secagg+",), min_length=1, max_length=3)
    attacks: bool = True
    # "clustering": each point runs the features and clustering stages only (large federations:
    # ARI and attack advantage against the feature epsilon, no training or Dice)
    stop_after: Literal["clustering"] | None = None


_PROJECTION_KEYS = ("projection", "subset", "dimension", "projection_seed", "projection_file")

DEFAULT_GRID = GridSpec()
"""The CPU-sized default: plain and local-dp features (epsilon 4) x no DP training and DP-SGD
(epsilon 8) under SecAgg+: four points (12 min 36 s on 2 cores on the demo federation,
benchmarks/results/sweep.md)."""


def load_grid(path: Path | None) -> GridSpec:
    """The grid of ``path`` (its ``[grid]`` table), or the default grid."""
    if path is None:
        return DEFAULT_GRID
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the grid ({exc})") from exc
    if set(data) != {"grid"}:
        raise ConfigError(f"{path}: expected one [grid] table, got {sorted(data)}")
    try:
        grid = GridSpec.model_validate(data["grid"])
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ConfigError(f"{path}: grid.{field}: {err['msg']}") from exc
    for name in ("feature_epsilon", "training_epsilon"):
        if any(not (v > 0) for v in getattr(grid, name)):
            raise ConfigError(f"{path}: grid.{name}: every epsilon must be > 0")
    return grid


@dataclass(frozen=True)
class Point:
    """One grid point; ``None`` where an axis does not apply (e.g. no feature epsilon under plain
    features)."""

    release: str
    feature_epsilon: float | None
    training: str
    training_epsilon: float | None
    aggregation: str

    @property
    def id(self) -> str:
        feps = "" if self.feature_epsilon is None else f"-e{self.feature_epsilon:g}"
        teps = "" if self.training_epsilon is None else f"-e{self.training_epsilon:g}"
        return f"{self.release}{feps}_{self.training}{teps}_{self.aggregation}"

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.id, "release": self.release, "feature_epsilon": self.feature_epsilon,
            "training": self.training, "training_epsilon": self.training_epsilon,
            "aggregation": self.aggregation,
        }  # fmt: skip


def expand(grid: GridSpec) -> list[Point]:
    """Every point of ``grid`` once (axes that do not apply collapse), in grid order."""
    out: list[Point] = []
    for release, training, aggregation in itertools.product(
        grid.release, grid.training, grid.aggregation
    ):
        feps: tuple[float | None, ...] = (None,) if release == "plain" else grid.feature_epsilon
        teps: tuple[float | None, ...] = (None,) if training == "none" else grid.training_epsilon
        for fe, te in itertools.product(feps, teps):
            point = Point(release, fe, training, te, aggregation)
            if point not in out:
                out.append(point)
    return out


SWEEP_MAX_SITES = 16
"""training.client_dp.max_sites of a client-DP point whose base protocol lists no sites and
declares none (it sizes the modular head room only; declare it in the base to change it)."""


def point_protocol(base: dict[str, Any], point: Point) -> dict[str, Any]:
    """The base protocol (a parsed TOML mapping) changed to ``point``; raises ProtocolError with
    the schema's reason when the combination is not a valid protocol."""
    data = copy.deepcopy(base)
    study = data.setdefault("study", {})
    slug = re.sub(r"[^A-Za-z0-9_.-]", "p", point.id)  # secagg+ -> secaggp (study.name pattern)
    name = f"{str(study.get('name', 'study'))[: 63 - len(slug)]}-{slug}"
    study["name"] = name[-64:].lstrip("-_.")
    release = dict(data.get("release", {}))
    bounds = release.get("bounds")
    if point.release != "plain" and bounds is None:
        raise ProtocolError(
            f"grid point {point.id}: release {point.release!r} needs pinned bounds, and the base "
            "protocol has no release.bounds; sweep a protocol that pins them (e.g. "
            "protocols/demo-local-dp.toml)"
        )
    clustering = data.setdefault("clustering", {})
    if point.release == "plain":
        data["release"] = {"mode": "plain", **({"bounds": bounds} if bounds else {})}
    elif point.release == "local-dp":
        keep = {k: v for k, v in release.items() if k not in ("mode", "epsilon")}
        keep.setdefault("mechanism", "gaussian")
        keep.setdefault("delta", 1e-6)
        data["release"] = {**keep, "mode": "local-dp", "epsilon": point.feature_epsilon}
        clustering["scaling"] = "declared-bounds"
    else:  # the base protocol's fixed projection (the secure clustering needs one)
        keep = {k: v for k, v in release.items() if k in _PROJECTION_KEYS}
        data["release"] = {**keep, "mode": "secure-aggregate", "bounds": bounds}
        secure = dict(clustering.get("secure", {}))
        secure["epsilon"] = point.feature_epsilon
        clustering["secure"] = secure
        clustering["scaling"] = "declared-bounds"
    training = data.setdefault("training", {})
    training.pop("dp_sgd", None)
    training.pop("client_dp", None)
    training["aggregation"] = point.aggregation
    if point.training == "dp-sgd":
        dp = dict(base.get("training", {}).get("dp_sgd", {}))
        if not {"amplification", "population", "sampling_rate"} & set(dp):
            # The plan comes from public values only: without a declared population (or rate)
            # to sample from, the point's DP-SGD steps are charged unamplified.
            dp["amplification"] = "none"
        training["dp_sgd"] = {**dp, "enabled": True, "epsilon": point.training_epsilon}
    elif point.training == "client-dp":
        cdp = dict(base.get("training", {}).get("client_dp", {}))
        cdp.setdefault("clip_norm", 5.0)
        if not data.get("sites"):  # the most sites of an aggregate, public (sweep default)
            cdp.setdefault("max_sites", SWEEP_MAX_SITES)
        training["client_dp"] = {**cdp, "enabled": True, "epsilon": point.training_epsilon}
    privacy = data.setdefault("privacy", {})
    privacy["total_epsilon"] = math.inf
    parsed = parse_protocol(data)  # ProtocolError with the schema's reason
    eps, delta = parsed.allocated_budget()
    if eps > 0:
        privacy["total_epsilon"] = eps
        privacy["total_delta"] = max(float(privacy.get("total_delta", 1e-5)), delta)
        parse_protocol(data)
    return data
