"""The site side: a Flower ClientApp (legacy ``NumPyClient``) that trains on the site's own train
cases (of one cluster in a cluster phase) and evaluates on its own validation cases.

What leaves a site, per round, is decided by the site's own protocol copy
(securefed.protocol.egress): the updated model weights (masked under SecAgg+, so the server only
learns their weighted sum) and a FedAvg weight; under a plain protocol the weight is the number of
train cases used and the site also sends its mean train loss and, per evaluation, its number of
validation cases and mean Dice per region; under a protocol that claims a finite epsilon the weight
is 1 and nothing else is sent (an evaluation request gets no metric). On request
(``get_properties``) a site tells its partition id and the hash of its protocol copy. Nothing else
(no images, no per-case values, no paths, no ledger values) is sent.

With ``training.client_dp.enabled`` every update leaves as a clipped, rounded, noised integer
vector (securefed.training.client_dp), charged to the same ledger before any noise is drawn.

With ``training.dp_sgd.enabled`` every fit is a DP-SGD round (securefed.training.dpsgd) charged to
the site's ledger (node config ``ledger-dir``, else the site's ``work-dir``) before any noise; past
the budget the site refuses (BudgetExceededError) and the round goes on without it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp

from securefed.clustering.assignments import Assignment, read_assignments, site_subjects
from securefed.errors import ConfigError, InstructionRefusedError, TrainingError
from securefed.federation.config import SiteSettings
from securefed.federation.guard import GuardPolicy, make_egress_guard, make_egress_record_mod
from securefed.federation.he_round import encrypt_update, make_decrypt_mod
from securefed.federation.ledger_heads import HeadSite, make_ledger_head_mod
from securefed.federation.metrics import site_summary
from securefed.federation.pacing import Pacing, make_pacing_mod
from securefed.federation.site_rules import (
    ReplyCode,
    SecAggSite,
    check_round_config,
    check_stage_config,
    make_error_code_mod,
    make_secaggplus_site_mod,
)
from securefed.federation.site_runtime import SiteRuntime
from securefed.federation.site_secure import run_secure_stage
from securefed.federation.site_stages import (
    StageSite,
    own_assignments,
    run_site_stage,
    site_patients,
)
from securefed.federation.task import FlowerTask, resolve_task
from securefed.protocol.egress import training_egress

__all__ = ["SiteClient", "app", "make_client_app"]


class SiteClient(NumPyClient):
    """One site in one run. ``task`` supplies model, data and loops; ``site`` its local settings."""

    def __init__(
        self,
        task: FlowerTask,
        site: SiteSettings,
        ledger_dir: str = "",
        runtime: SiteRuntime | None = None,
    ) -> None:
        self.task = task
        self.site = site
        self.ledger_dir = ledger_dir or site.work_dir
        self.runtime = runtime if runtime is not None else SiteRuntime()
        self.accepted = self.runtime.accepted(site)  # verified before use, by type
        self.loaded = self.accepted.loaded
        self.spec = self.loaded.protocol.training
        self.egress = training_egress(self.loaded.protocol)

    # -- helpers -------------------------------------------------------------------------------
    def _check_config(self, config: dict[str, Any]) -> int:
        """The message's coordinates checked against the site's protocol (a message carries
        coordinates only: securefed.federation.site_rules); the cluster."""
        return check_round_config(self.loaded.protocol, self.loaded.sha256, config)

    def _check_frozen(self, parameters: Sequence[np.ndarray]) -> None:
        """Under ``training.trainable`` the arrays the site does not train must be the protocol's
        start (pinned weights or the seeded initialisation) bit for bit: a coordinator cannot
        plant trap weights in the frozen blocks."""
        sent = self.runtime.sent_positions(self.task, self.loaded)
        if sent is None:
            return
        start = self.get_parameters({})
        if len(parameters) != len(start):
            raise InstructionRefusedError(
                f"the coordinator sent {len(parameters)} arrays, the protocol's model has "
                f"{len(start)}; refusing"
            )
        trained = set(sent)
        for i, (got, want) in enumerate(zip(parameters, start, strict=True)):
            if i in trained:
                continue
            got = np.asarray(got)
            if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
                raise InstructionRefusedError(
                    f"the coordinator's frozen array {i} differs from the protocol's start "
                    "weights (training.trainable); refusing"
                )

    def _assignments(self, config: dict[str, Any]) -> list[Assignment]:
        path = self.site.assignments  # never a path from the server's config
        if not path and self.ledger_dir and own_assignments(self.ledger_dir).is_file():
            path = str(own_assignments(self.ledger_dir))  # the site's own `assign` stage
        if not path:
            raise ConfigError(
                f"site {self.site.partition_id}: no assignments file; set node config "
                "'assignments' to the site's own clusters.csv (a site never reads a path the "
                "server chose)"
            )
        return read_assignments(Path(path))

    def _data(self, config: dict[str, Any], split: str) -> tuple[Any, int]:
        cluster = int(config.get("cluster", -1))
        rows = self._assignments(config)
        splits = ("train", "val", "test") if split == "unseen" else (split,)
        subjects = sorted(
            sid
            for one in splits
            for sid in site_subjects(
                rows, self.site.partition_id, one, None if cluster < 0 else cluster
            )  # fmt: skip
        )
        if not subjects:
            return None, 0
        cap = self.spec.validation_cases
        if split == "val" and cap is not None and len(subjects) > cap:
            import random  # a public, seeded subset: the same cases every round

            pick = random.Random(f"{self.spec.seed}/{self.site.partition_id}/{cluster}")
            subjects = sorted(pick.sample(subjects, int(cap)))
        key = (self.site.data_dir, self.site.partition_id, tuple(subjects), self.loaded.sha256)
        data = self.runtime.data(key, lambda: self.task.load_data(
            Path(self.site.data_dir), self.site.partition_id, subjects, self.spec))  # fmt: skip
        return data, len(subjects)

    def _model(self, parameters: Sequence[np.ndarray] | None, seed: int) -> Any:
        import torch

        torch.manual_seed(seed)
        model = self.task.build_model(self.spec)
        if parameters is not None:
            self.task.set_weights(model, [np.asarray(p) for p in parameters])
        elif self.spec.initial_weights is not None:
            # The protocol's public start: this site's own copy, hash checked before use.
            from securefed.training.local import set_weights
            from securefed.training.pretrained import initial_weights

            set_weights(model, initial_weights(self.loaded) or [])
        return model

    # -- Flower API ----------------------------------------------------------------------------
    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """Partition id and protocol hash; asked ``budget-round`` (before a DP round), also
        whether the site's ledger can pay that round (``budget-ok``): a function of the
        protocol, the rounds already charged and counts the neighbouring relation makes public,
        so it says nothing about the site's patients."""
        if "stage" in config:  # a study stage over the deployment (features, assign)
            stage = check_stage_config(self.loaded.protocol, self.loaded.sha256, config)
            key = self.runtime.signing_key(self.site)
            where = StageSite(self.site, self.accepted, Path(self.ledger_dir), key)

            def advance(phase: str, rnd: int) -> None:
                self.runtime.advance_round(self.site, self.ledger_dir, self.loaded.sha256,
                                           phase, rnd)  # fmt: skip

            if stage.startswith("secure-") or stage == "dp-test":
                return run_secure_stage(where, stage, config, advance)
            return run_site_stage(where, stage, config)
        props: dict[str, Any] = {
            "partition-id": self.site.partition_id,
            "protocol-hash": self.loaded.sha256,
        }
        if "budget-round" in config:
            props["budget-ok"] = self._budget_ok(config)
        return props

    def _budget_ok(self, config: dict[str, Any]) -> bool:
        self._check_config(config)
        if self.spec.dp_training is None or not self.ledger_dir:
            return True
        from securefed.training import dpsgd

        rnd = int(config["budget-round"])
        cluster = int(config.get("cluster", -1))
        event = self._next_event({**config, "server-round": rnd})
        ledger = dpsgd.site_ledger(self.loaded, self.site.partition_id, self.ledger_dir)
        phase = "global" if cluster < 0 else f"cluster-{cluster}"
        release_id = dpsgd.release_id_for(ledger, phase, rnd)
        return ledger.affordable(dpsgd.STAGE, release_id, event)

    def _next_event(self, config: dict[str, Any]) -> Any:
        """The DP event the site's next fit under ``config`` will charge."""
        if self.spec.client_dp.enabled:
            from securefed.training.client_dp import site_plan

            if not hasattr(self, "_dim"):
                self._dim = sum(int(np.asarray(w).size) for w in self.get_parameters({}))
            plan = site_plan(self.loaded.protocol, self._dim)
            return plan.round_event()
        plan, population, _ = self._dp_sgd_round(config)
        return plan.round_event(plan.steps_per_round, population)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """The initial model (same on every site for the same protocol): the protocol's pinned
        public weights (training.initial_weights), else the seeded initialisation."""
        model = self._model(None, int(self.spec.seed))
        return self.task.get_weights(model)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[Any, int, dict[str, Any]]:
        """One round of local training. The round's coordinates come from the message; the
        work (steps, epochs, learning rate, seeds) from the site's own protocol only."""
        cluster = self._check_config(config)
        self._check_frozen(parameters)
        rnd = int(config.get("server-round", 0))
        phase = "global" if cluster < 0 else f"cluster-{cluster}"
        self.runtime.advance_round(self.site, self.ledger_dir, self.loaded.sha256, phase, rnd)
        self._audit_round(config, rnd)  # one entry per fit, whatever the site holds
        data, n_train = self._data(config, "train")
        weighted = cluster >= 0 and self.egress.cluster_weights == "masked-counts"
        dp_sgd = self.spec.dp_sgd.enabled
        if n_train == 0 and cluster >= 0 and self.egress.membership == "all-sites" and not dp_sgd:
            # Every site joins every cluster's federation; without cases of this one the site
            # sends a zero update of weight 0 (client-level DP: the received model, whose zero
            # update gets the site's noise share), masked under SecAgg+ or encrypted under BFV
            # like any other reply.
            same = [np.asarray(p) for p in parameters]
            if weighted:
                return self._weighted_out(same, 0, config, parameters), self._weight(0), {}
            return self._out(same, 0, config, parameters), self._weight(0), {}
        if n_train == 0 and not (weighted and dp_sgd):  # DP-SGD: a noise-only round below
            raise TrainingError(
                f"site {self.site.partition_id}: no train cases for cluster "
                f"{config.get('cluster')}; the server should not have selected this site"
            )
        # The site's own seed for this round (never the message's: a message carries
        # coordinates only): from its secret under a deployment protocol.
        seed = self.runtime.round_seed(self.site, self.ledger_dir, self.loaded, phase, rnd)
        model = self._model(parameters, seed)
        steps = int(self.spec.local_steps or 0)
        if dp_sgd:
            out = self._fit_dp(model, data if data is not None else [], config, n_train, rnd,
                               seed)  # fmt: skip
            if weighted:
                sent = self._dp_weighted_out(self.task.get_weights(model), config, parameters, out)
                return sent, self._weight(n_train), self._train_metrics(out)
            weights = self._out(self.task.get_weights(model), n_train, config, parameters)
            return weights, self._weight(n_train), self._train_metrics(out)
        out = self.task.train(
            model,
            data,
            self.spec,
            epochs=int(self.spec.local_epochs),
            max_steps=steps if steps > 0 else None,
            lr=self._lr(cluster),
            device=self.site.device,
            seed=seed,
        )
        if weighted:
            trained = self.task.get_weights(model)
            out_w = self._weighted_out(trained, n_train, config, parameters)
            return out_w, self._weight(n_train), self._train_metrics(out)
        weights = self._out(self.task.get_weights(model), n_train, config, parameters)
        return weights, self._weight(n_train), self._train_metrics(out)

    def _weighted_out(
        self,
        trained: list[np.ndarray],
        n_train: int,
        config: dict[str, Any],
        received: Sequence[np.ndarray],
    ) -> Any:
        """A cluster-phase reply under all-sites membership (``cluster_weights =
        "masked-counts"``, securefed.protocol.egress): the update (trained minus received)
        scaled by the site's weight w = min(n, max_weight) / max_weight, followed by w itself as
        one more array; masked by SecAgg+ or encrypted under BFV with the FedAvg weight 1, so
        that only the two sums open and the server divides them (securefed.federation.weighting).
        A site without cases of the cluster sends zeros."""
        from securefed.federation.weighting import weighted_update

        bound = float(self.loaded.protocol.secure_aggregation.max_weight)
        return self._seal_weighted(weighted_update(trained, received, n_train, bound), config)

    def _seal_weighted(self, arrays: list[np.ndarray], config: dict[str, Any]) -> Any:
        """The update arrays and the weight as they leave: in clear for SecAgg+ (whose mod masks
        them; only the trained arrays under ``training.trainable``, then the weight), one
        encrypted contribution of FedAvg weight 1 under bfv."""
        if self.spec.aggregation != "bfv":
            sent = self.runtime.sent_positions(self.task, self.loaded)
            return arrays if sent is None else [*(arrays[i] for i in sent), arrays[-1]]
        return encrypt_update(self.site, self.ledger_dir, self.loaded, arrays, weight=1,
                              config=config, key_of=self.runtime.he_key)  # fmt: skip

    def _out(
        self,
        arrays: list[np.ndarray],
        n_train: int,
        config: dict[str, Any],
        received: Sequence[np.ndarray],
    ) -> Any:
        """The model as it leaves the site: in clear for fedavg and SecAgg+ (whose mod masks
        it), one encrypted contribution under bfv (weighted by the declared FedAvg weight); under
        client-level DP one vector, the clipped update with the site's noise share
        (securefed.training.client_dp; charged to the ledger first), masked by SecAgg+."""
        if self.spec.client_dp.enabled:
            from securefed.training.client_dp import encode_round

            vector, _ = encode_round(
                loaded=self.loaded, partition_id=self.site.partition_id,
                ledger_dir=self.ledger_dir, received=[np.asarray(p) for p in received],
                weights=arrays, config=config,
            )  # fmt: skip
            return vector
        if self.spec.aggregation != "bfv":
            # training.trainable: only the trained arrays leave; the rest is the start model's
            sent = self.runtime.sent_positions(self.task, self.loaded)
            return arrays if sent is None else [arrays[i] for i in sent]
        weight = max(1, self._weight(n_train))
        return encrypt_update(self.site, self.ledger_dir, self.loaded, arrays, weight=weight,
                              config=config, key_of=self.runtime.he_key)  # fmt: skip

    def _dp_weighted_out(
        self,
        trained: list[np.ndarray],
        config: dict[str, Any],
        received: Sequence[np.ndarray],
        out: dict[str, Any],
    ) -> Any:
        """A DP-SGD cluster round under all-sites membership (securefed.federation.weighting):
        the DP update unscaled (a sum over each step's patients over the public batch size) and
        the site's noised weight, drawn after the round's charge."""
        from securefed.federation.weighting import dp_weight

        arrays = [np.asarray(t) - np.asarray(r) for t, r in zip(trained, received, strict=True)]
        arrays = [a.astype(np.asarray(r).dtype) for a, r in zip(arrays, received, strict=True)]
        weight = dp_weight(self.loaded.protocol, int(out.get("patients", 0)),
                           str(out.get("site_id", "")), str(out.get("release_id", "")))  # fmt: skip
        arrays.append(np.asarray([weight], dtype=np.float32))
        return self._seal_weighted(arrays, config)

    def _audit_round(self, config: dict[str, Any], rnd: int) -> None:
        """The site's audit log (beside its ledger): this training round and its aggregation."""
        if not self.ledger_dir:
            return
        from securefed.trust.audit_log import AuditLog

        pid = self.site.partition_id
        sites = self.loaded.protocol.resolve_sites([pid])
        site_id = next((s.id for s in sites if s.partition_id == pid), f"partition-{pid}")
        cluster = int(config.get("cluster", -1))
        audit = AuditLog(Path(self.ledger_dir), site_id, self.loaded.sha256)
        audit.record(
            "training-round", phase="global" if cluster < 0 else f"cluster-{cluster}",
            round=rnd, aggregation=self.spec.aggregation, dp_sgd=self.spec.dp_sgd.enabled,
            client_dp=self.spec.client_dp.enabled,
        )  # fmt: skip
        key = self.runtime.signing_key(self.site)
        if key is not None and not self.loaded.protocol.is_simulation:
            audit.sign_head(key)  # a deployment site's log ends signed after every round

    def _audit_test(self, config: dict[str, Any]) -> None:
        """The site's audit log: a test request taken (its cluster), signed under a
        deployment protocol."""
        if not self.ledger_dir:
            return
        from securefed.trust.audit_log import AuditLog

        key = self.runtime.signing_key(self.site)
        if key is None:
            return
        audit = AuditLog(Path(self.ledger_dir), key.party_id, self.loaded.sha256)
        audit.record("test-requested", cluster=int(config.get("cluster", -1)))
        audit.sign_head(key)

    def _weight(self, n_train: int) -> int:
        """The FedAvg weight sent: the train case count under a plain protocol, else 1 (public;
        the count is an exact function of the site's cases)."""
        return n_train if self.egress.weights == "train-counts" else 1

    def _train_metrics(self, out: dict[str, Any]) -> dict[str, Any]:
        """The mean train loss, in clear, under a plain protocol only: it is an exact function
        of the site's cases, so a protocol that claims a finite epsilon keeps it at the site."""
        if not self.egress.train_loss:
            return {}
        loss = float(out.get("loss", float("nan")))
        return {"loss": loss if np.isfinite(loss) else -1.0}

    def _fit_dp(
        self, model: Any, data: Any, config: dict[str, Any], n_train: int, rnd: int, seed: int
    ) -> dict[str, Any]:
        """One DP-SGD round: calibrate (whole study, this site), charge the ledger, train."""
        import hashlib

        from securefed.training import dpsgd

        pid = self.site.partition_id
        cluster = int(config.get("cluster", -1))
        if self.task.train_dp is None:
            raise ConfigError(
                f"site {pid}: the protocol enables training.dp_sgd but this site's task has no "
                "train_dp; use the default task or add DP-SGD to the plugged one"
            )
        if not self.ledger_dir:
            raise ConfigError(
                f"site {pid}: DP-SGD needs the site's privacy ledger; set node config "
                "'ledger-dir' (or 'work-dir')"
            )
        plan, _, extra = self._dp_sgd_round(config)
        ledger = dpsgd.site_ledger(self.loaded, pid, self.ledger_dir)
        phase = "global" if cluster < 0 else f"cluster-{cluster}"
        release_id = dpsgd.release_id_for(ledger, phase, rnd)
        privacy = self.loaded.protocol.privacy
        noise_seed = None
        if privacy.unsafe_seeded_noise:  # simulation only: reproducible, never private
            tag = f"{privacy.unsafe_noise_seed or 0}/{pid}/{release_id}".encode()
            noise_seed = int.from_bytes(hashlib.sha256(tag).digest()[:7], "big")
        out = self.task.train_dp(
            model,
            data,
            self.spec,
            plan=plan,
            ledger=ledger,
            release_id=release_id,
            lr=self._lr(cluster),
            device=self.site.device,
            seed=seed,
            noise_seed=noise_seed,
            **extra,
        )
        groups = extra.get("groups")
        patients = len(set(groups)) if groups is not None else n_train
        return {**out, "patients": patients, "site_id": ledger.site_id, "release_id": release_id}

    def _lr(self, cluster: int) -> float:
        """The protocol's learning rate of the phase (global or finetuning)."""
        return float(self.spec.lr if cluster < 0 else self.spec.finetune_lr)

    def _dp_sgd_round(self, config: dict[str, Any]) -> tuple[Any, int, dict[str, Any]]:
        """(plan, the population charged, train_dp extras) of the DP-SGD round under
        ``config``: the plan from the protocol alone (securefed.training.dpsgd.plan_dpsgd:
        steps, multiplier, divisor and population never follow the site's data); a cluster
        round is charged unamplified."""
        from securefed.training import dpsgd

        pid = self.site.partition_id
        cluster = int(config.get("cluster", -1))
        extra: dict[str, Any] = {"finetuning": cluster >= 0}
        plan = dpsgd.plan_dpsgd(self.loaded.protocol)
        patient_of = self._patients()
        if patient_of:
            subjects = site_subjects(self._assignments(config), pid, "train",
                                     None if cluster < 0 else cluster)  # fmt: skip
            if any(patient_of.get(s, s) != s for s in subjects):  # several cases per patient
                extra["groups"] = [patient_of.get(s, s) for s in subjects]
        population = plan.batch_size if cluster >= 0 else plan.population
        return plan, population, extra

    def _patients(self) -> dict[str, str]:
        """Subject id -> patient id, by the same rule as the site's stages
        (securefed.federation.site_stages.site_patients); empty: every case its own patient."""
        return site_patients(self.site, self.loaded.protocol.data.partitioning)

    def evaluate(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[float, int, dict[str, Any]]:
        split = "val"
        if "stage" in config:  # the test stage: its own test cases of the request's cluster
            if check_stage_config(self.loaded.protocol, self.loaded.sha256, config) != "test":
                raise InstructionRefusedError("an evaluate message names a query stage; refusing")
            held_out = set(self.loaded.protocol.data.held_out_partitions)
            # a held-out institution trained nowhere: all its cases are test cases (unseen)
            split = "unseen" if self.site.partition_id in held_out else "test"
            self._audit_test(config)
            if not self.egress.validation and split == "test":
                self._keep_test_scores(parameters, config)
        else:
            self._check_config(config)
        if not self.egress.validation:  # the site's protocol keeps validation metrics here
            return 0.0, 0, {"partition-id": self.site.partition_id}
        data, n_val = self._data(config, split)
        metrics: dict[str, Any] = {"partition-id": self.site.partition_id, "num_val": 0.0}
        if n_val == 0:
            return 0.0, 0, metrics
        model = self._model(parameters, int(self.spec.seed))
        eval_spec = self.loaded.protocol.evaluation
        result = self.task.evaluate(model, data, eval_spec, self.site.device)
        metrics.update(site_summary(result))
        return float(1.0 - metrics["dice_mean"]), n_val, metrics

    def _keep_test_scores(self, parameters: list[np.ndarray], config: dict[str, Any]) -> None:
        """Under ``evaluation.dp_summary``: score the request's test cases with the model sent
        and keep each case's Dice at the site for the DP summary (nothing of it is sent here)."""
        if self.loaded.protocol.evaluation.dp_summary.epsilon is None or not self.ledger_dir:
            return
        from securefed.federation.site_test_summary import keep_test_scores

        data, n_test = self._data(config, "test")
        cases: list[dict[str, Any]] = []
        if n_test:
            model = self._model(parameters, int(self.spec.seed))
            result = self.task.evaluate(model, data, self.loaded.protocol.evaluation,
                                        self.site.device)  # fmt: skip
            cases = list(result.get("cases", []))
            if len(cases) != n_test:
                raise ConfigError(
                    "the site's task returned no per-case Dice; the DP test summary needs them: "
                    "use the default task"
                )
        keep_test_scores(self.ledger_dir, self.loaded.sha256, int(config.get("cluster", -1)),
                         cases)  # fmt: skip


def _phase_name(context: Context, phase: str | None) -> str:
    """``global`` or ``cluster-<c>``: given (simulation: one ClientApp per phase) or from the
    run config (deployment: ``flwr run --run-config``)."""
    if phase is not None:
        return phase
    stage = str(context.run_config.get("stage", ""))
    if stage:  # a study stage over the deployment (features, assign, test)
        return stage
    c = int(str(context.run_config.get("cluster", -1)))
    return "global" if c < 0 else f"cluster-{c}"


def _egress_recorder(
    identity: Callable[[Context], tuple[Any, str, str]], phase: str | None
) -> Callable[[Context, Message, list[dict[str, Any]]], None]:
    """Writes one reply that left to the site's egress log (after the pacing hold)."""

    def sent(context: Context, request: Message, fields: list[dict[str, Any]]) -> None:
        try:
            loaded, ledger_dir, sid = identity(context)
        except Exception:  # noqa: BLE001 - the site's own protocol did not load: no log to use
            return
        if not ledger_dir:
            return
        from securefed.trust.egress_log import EgressLog

        name = _phase_name(context, phase)
        part = "stage" if phase is None and context.run_config.get("stage") else "training"
        EgressLog(Path(ledger_dir), sid, loaded.sha256).record(
            "flower-reply", f"{part}/{name}/{request.metadata.message_type}", "server",
            [{"name": "group", "type": "str", "value": str(request.metadata.group_id)}, *fields],
        )  # fmt: skip

    return sent


def _error_recorder(
    identity: Callable[[Context], tuple[Any, str, str]],
) -> Callable[[Context, Message, ReplyCode, str], None]:
    """What the site records of a failure or refusal: its code and the kind of request in the
    audit log, never the exception text (the site's exported logs are released too; the text
    goes to the site's local Python log only)."""

    def on_error(context: Context, request: Message, code: ReplyCode, detail: str) -> None:
        try:
            loaded, ledger_dir, sid = identity(context)
        except Exception:  # noqa: BLE001 - the site's own protocol did not load: no log to use
            return
        if ledger_dir:
            from securefed.trust.audit_log import AuditLog

            AuditLog(Path(ledger_dir), sid, loaded.sha256).record(
                "message-refused", message_type=str(request.metadata.message_type),
                code=int(code), reason=code.reason,
            )  # fmt: skip

    return on_error


def make_client_app(
    task: FlowerTask | None = None,
    sites: Sequence[SiteSettings] | None = None,
    phase: str | None = None,
) -> ClientApp:
    """A ClientApp. ``sites`` (simulation only) gives the settings of simulated node ``i``
    (Flower's ``partition-id`` i); otherwise the node config carries them (deployment).
    ``phase``: the phase name for the site's egress log (simulation; deployment reads it from
    the run config)."""
    sim_sites = list(sites) if sites is not None else None
    runtime = SiteRuntime()  # this app's (node process's) state: never module-level

    def site_of(context: Context) -> SiteSettings:
        if sim_sites is not None and "data-dir" not in context.node_config:
            return sim_sites[int(context.node_config["partition-id"])]
        return SiteSettings.from_node_config(dict(context.node_config))

    def state_dir(context: Context) -> str:
        """The site's one state folder (its ledger, logs, round counters, secret): the site's
        ``ledger-dir``, else the node config's, else its ``work-dir``."""
        site = site_of(context)
        return site.ledger_dir or str(context.node_config.get("ledger-dir", "")) or site.work_dir

    def client_fn(context: Context) -> Any:
        site = site_of(context)
        return SiteClient(task or resolve_task(), site, state_dir(context), runtime).to_client()

    def identity(context: Context) -> tuple[Any, str, str]:
        """The site's accepted protocol, its log folder and its site id."""
        site = site_of(context)
        loaded = runtime.accepted(site).loaded
        ledger_dir = state_dir(context)
        sites_ = loaded.protocol.resolve_sites([site.partition_id])
        sid = next((s.id for s in sites_ if s.partition_id == site.partition_id), "?")
        return loaded, ledger_dir, sid

    def policy(context: Context) -> GuardPolicy:
        loaded, ledger_dir, sid = identity(context)

        def record(message_type: str) -> None:
            if ledger_dir:
                from securefed.trust.audit_log import AuditLog

                AuditLog(Path(ledger_dir), sid, loaded.sha256).record(
                    "egress-refused", message_type=message_type
                )

        aggregation = loaded.protocol.training.aggregation
        return GuardPolicy(training_egress(loaded.protocol), aggregation == "secagg+", record,
                           None, he=aggregation == "bfv",
                           sent_arrays=runtime.sent_positions(task or resolve_task(),
                                                              loaded))  # fmt: skip

    def he_site(context: Context) -> tuple[SiteSettings, Any, str]:
        site = site_of(context)
        return site, runtime.accepted(site).loaded, state_dir(context)

    def pacing(context: Context) -> Pacing:
        loaded, ledger_dir, sid = identity(context)

        def overrun() -> None:
            if ledger_dir:
                from securefed.trust.audit_log import AuditLog

                AuditLog(Path(ledger_dir), sid, loaded.sha256).record(
                    "reply-slot-overrun", phase=_phase_name(context, phase),
                    slot_s=loaded.protocol.training.reply_slot_s,
                )  # fmt: skip

        proto = loaded.protocol
        scores = proto.claims_finite_epsilon and proto.evaluation.dp_summary.epsilon is not None
        return Pacing(float(proto.training.reply_slot_s), overrun, scores_tests=scores)

    def head_site(context: Context) -> HeadSite:
        loaded, ledger_dir, _ = identity(context)
        dp = loaded.protocol.training.dp_training is not None
        return HeadSite(loaded.sha256, dp, ledger_dir, runtime.signing_key(site_of(context)))

    def secagg_site(context: Context) -> SecAggSite:
        loaded, _, sid = identity(context)
        key = runtime.signing_key(site_of(context))
        return SecAggSite(loaded.protocol, loaded.sha256, sid, key)

    # The egress log is written outermost, after the pacing hold, of what actually leaves;
    # pacing holds every local-training reply to its slot (errors included) or drops it; inside
    # it every failure becomes a coded error; inside that the guard sees the reply exactly as it
    # will leave the site; SecAgg+ runs behind the site's checks (securefed.federation.site_rules).
    return ClientApp(
        client_fn=client_fn,
        mods=[make_egress_record_mod(_egress_recorder(identity, phase)), make_pacing_mod(pacing),
              make_error_code_mod(_error_recorder(identity)),
              make_egress_guard(policy),
              make_ledger_head_mod(head_site),
              make_decrypt_mod(he_site, runtime.he_key),
              make_secaggplus_site_mod(secagg_site)],
    )  # fmt: skip


app = make_client_app()
