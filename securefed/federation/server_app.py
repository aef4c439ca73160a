"""The server side: a Flower ServerApp running one federated phase (global FedAvg or one
cluster's finetuning) with plain FedAvg or Flower's SecAgg+, every round bounded by a timeout.

Per round: fit (SecAgg+ workflow or plain FedAvg, weights = the sites' FedAvg weights), then
federated evaluation on each site's validation cases; the pooled validation Dice (site means
weighted by case counts) picks the best round (round 0 included when ``eval_round_zero``). With
``validate = false`` (a protocol that claims a finite epsilon) there is no federated evaluation
and the last round is the phase's result. Every completed
round is checkpointed (weights .npz + JSON state), so a failed or interrupted phase resumes from
its last completed round. A round that cannot aggregate (too few sites answered, SecAgg+ below its
reconstruction threshold) fails the phase with ``TooFewParticipantsError``.

The server learns: the aggregate weights, which node serves which partition, and what each site's
protocol lets it send (securefed.protocol.egress): under a plain protocol each site's train case
count, mean train loss, validation case count and mean Dice per region; under a protocol that
claims a finite epsilon none of these (weights 1, no loss, no validation).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.common import (
    EvaluateIns,
    FitIns,
    FitRes,
    GetParametersIns,
    GetPropertiesIns,
    MessageTypeLegacy,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import ClientManager, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvgM
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from securefed.errors import (
    ConfigError,
    SecurefedError,
    TooFewParticipantsError,
    TrainingError,
)
from securefed.federation.config import PhaseConfig
from securefed.federation.discovery import discover_sites
from securefed.federation.flower_internals import (
    MAIN_CONFIGS_RECORD,
    MAIN_PARAMS_RECORD,
    ClientProxy,
    GridClientProxy,
)
from securefed.federation.flower_internals import WorkflowKey as Key
from securefed.federation.flower_internals import recorddict_compat as compat
from securefed.federation.grid_wrapper import fast_polling
from securefed.federation.ledger_heads import LedgerHeadCheck
from securefed.federation.metrics import pooled_dice
from securefed.federation.secagg_relay import SignedKeyRelay
from securefed.training.checkpoints import PhaseCheckpoint, PhaseState, load_weights

__all__ = ["PhaseStrategy", "app", "make_server_app", "run_server_phase"]

log = logging.getLogger("securefed.flower")


class PhaseStrategy(FedAvgM):
    """Flower's FedAvgM over exactly the phase's sites (server lr 1 and momentum 0: plain FedAvg);
    refuses an aggregate of fewer than ``min_sites``.

    The server step (Hsu et al. 2019: ``v = m v + (w - avg)``, ``w' = w - lr v``) is Flower's:
    it works on the (securely) aggregated model only, so it learns nothing more. Under SecAgg+
    the workflow hands the unmasked aggregate as one result, which FedAvg leaves unchanged. The
    round's start model is Flower's ``initial_parameters`` (set in :meth:`configure_fit`) and the
    momentum vector is checkpointed every round, so a resumed phase continues the same update.
    """

    def __init__(self, cfg: PhaseConfig, grid: Grid) -> None:
        super().__init__(
            fraction_fit=1.0,
            fraction_evaluate=1.0,
            min_fit_clients=1,
            min_evaluate_clients=1,
            min_available_clients=1,
            accept_failures=True,
            server_learning_rate=cfg.server_lr,
            server_momentum=cfg.server_momentum,
        )
        self.cfg = cfg
        self.grid = grid
        self.proxies: dict[int, ClientProxy] = {}  # node id -> proxy
        self.partition_of_node: dict[int, int] = {}
        self.skip: set[int] = set()  # partition ids left out of this round (budget spent)

    def select(self, node_of_partition: dict[int, int]) -> None:
        run_id = self.grid.run.run_id
        self.partition_of_node = {nid: pid for pid, nid in node_of_partition.items()}
        self.proxies = {
            nid: GridClientProxy(node_id=nid, grid=self.grid, run_id=run_id)
            for nid in node_of_partition.values()
        }

    def round_config(self, server_round: int) -> dict[str, Any]:
        c = self.cfg
        extra: dict[str, Any] = {"he-fields": c.he_fields} if c.aggregation == "bfv" else {}
        # Coordinates only: the site derives its work (learning rate, epochs, steps, seeds) from
        # its own accepted protocol (securefed.federation.site_rules.check_round_config).
        return {
            **extra,
            "server-round": server_round,
            "phase": c.phase,
            "cluster": c.cluster,
            "protocol-hash": c.protocol_hash,
        }

    @property
    def velocity(self) -> list[np.ndarray] | None:
        """The server momentum vector (FedAvgM), None before the first step or without one."""
        return [np.asarray(v) for v in self.momentum_vector] if self.momentum_vector else None

    @velocity.setter
    def velocity(self, value: list[np.ndarray] | None) -> None:
        self.momentum_vector = list(value) if value else None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self.initial_parameters = parameters  # FedAvgM steps from the round's start model
        ins = FitIns(parameters, self.round_config(server_round))
        return [(proxy, ins) for nid, proxy in self.proxies.items()
                if self.partition_of_node.get(nid) not in self.skip]  # fmt: skip

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        ins = EvaluateIns(parameters, self.round_config(server_round))
        return [(proxy, ins) for proxy in self.proxies.values()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if len(results) < max(1, self.cfg.min_sites):
            raise TooFewParticipantsError(
                f"{self.cfg.name} round {server_round}: only {len(results)} of "
                f"{len(self.proxies)} sites returned an update ({len(failures)} failed or timed "
                f"out); the protocol needs at least {self.cfg.min_sites} per aggregate"
            )
        start: list[np.ndarray] | None = None
        if self.cfg.weighted:
            results = self._decode_weighted(server_round, results)
        elif self.cfg.sent_positions is not None:
            if self.initial_parameters is None:  # pragma: no cover - set by configure_fit
                raise TrainingError(f"{self.cfg.name} round {server_round}: no start model")
            start = parameters_to_ndarrays(self.initial_parameters)  # FedAvgM replaces it
            results = self._restore_frozen(server_round, results, start)
        if self.cfg.client_dp:
            results = self._decode_client_dp(server_round, results)
        aggregated, _ = super().aggregate_fit(server_round, results, failures)
        if start is not None and aggregated is not None and not self.cfg.weighted:
            aggregated = self._keep_frozen(aggregated, start)
        # The sum of the FedAvg weights: train case counts under a plain protocol, else the
        # number of sites (each sends weight 1, securefed.protocol.egress).
        counts = [r.num_examples for _, r in results]
        metrics: dict[str, Scalar] = {"num_sites": len(results), "weight_sum": sum(counts)}
        losses = [(r.num_examples, float(r.metrics["loss"])) for _, r in results
                  if "loss" in r.metrics]  # fmt: skip
        if len(losses) == len(results):  # sites of a plain protocol report it
            total = sum(n for n, _ in losses) or 1
            metrics["train_loss"] = sum(n * v for n, v in losses) / total
        return aggregated, metrics

    def _restore_frozen(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        start: list[np.ndarray],
    ) -> list[tuple[ClientProxy, FitRes]]:
        """The sites send only the trained arrays (run config ``sent-arrays``): each result (the
        one SecAgg+ aggregate, or every site's model) gets the round's start model's values in
        the arrays it left out, which every site kept unchanged."""
        positions = self.cfg.sent_positions or ()
        out = []
        for proxy, res in results:
            sent = parameters_to_ndarrays(res.parameters)
            if len(sent) != len(positions) or any(
                sent[j].shape != start[i].shape for j, i in enumerate(positions)
            ):
                raise TrainingError(
                    f"{self.cfg.name} round {server_round}: a result holds {len(sent)} arrays, "
                    f"not the {len(positions)} trained ones of the model (run config "
                    "'sent-arrays' and the sites' protocol disagree)"
                )
            full = list(start)
            for j, i in enumerate(positions):
                full[i] = sent[j]
            res.parameters = ndarrays_to_parameters(full)
            out.append((proxy, res))
        return out

    def _keep_frozen(self, aggregated: Parameters, start: list[np.ndarray]) -> Parameters:
        """The arrays no site trained are the start model's, bit for bit (FedAvg's weighted mean
        of equal values may round them, and so may the FedAvgM step)."""
        arrays = parameters_to_ndarrays(aggregated)
        trained = set(self.cfg.sent_positions or ())
        return ndarrays_to_parameters(
            [a if i in trained else start[i] for i, a in enumerate(arrays)]
        )

    def _decode_weighted(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[tuple[ClientProxy, FitRes]]:
        """All-sites cluster round (securefed.federation.weighting): the opened aggregate holds
        the mean scaled update and the mean case weight; every result gets the round's new
        model, start + their ratio (the start model where no site holds the cluster)."""
        from securefed.federation.weighting import DP_WEIGHT_FLOOR, decode_weighted

        if self.initial_parameters is None:  # pragma: no cover - set by configure_fit
            raise TrainingError(f"{self.cfg.name} round {server_round}: no start model")
        start = parameters_to_ndarrays(self.initial_parameters)
        aggregate = parameters_to_ndarrays(results[0][1].parameters)
        positions = None if self.cfg.aggregation == "bfv" else self.cfg.sent_positions
        floor = DP_WEIGHT_FLOOR if self.cfg.dp_training == "dp-sgd" else 0.0
        new = decode_weighted(start, aggregate, positions, n_sites=len(results), floor=floor)
        params = ndarrays_to_parameters(new)
        for _, res in results:
            res.parameters = params
        return results

    def _decode_client_dp(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]]
    ) -> list[tuple[ClientProxy, FitRes]]:
        """Client-level DP: the SecAgg+ aggregate is the mean of the sites' encoded vectors;
        decode it into the round's new model (start + mean noised update) for every result, so
        that FedAvgM steps from it as from any aggregate."""
        import json

        from securefed.training.client_dp import decode_round

        if self.initial_parameters is None:  # pragma: no cover - set by configure_fit
            raise TrainingError(f"{self.cfg.name} round {server_round}: no start model")
        start = parameters_to_ndarrays(self.initial_parameters)
        aggregate = parameters_to_ndarrays(results[0][1].parameters)
        new = decode_round(
            json.loads(self.cfg.client_dp), start, aggregate, n_sites=len(results),
            protocol_hash=self.cfg.protocol_hash,
            cluster=self.cfg.cluster, server_round=server_round,
        )  # fmt: skip
        params = ndarrays_to_parameters(new)
        for _, res in results:
            res.parameters = params
        return results


# -- helpers ----------------------------------------------------------------------------------
def _params_record(context: Context) -> Any:
    return context.state.array_records[MAIN_PARAMS_RECORD]


def _current_weights(context: Context) -> list[np.ndarray]:
    params = compat.arrayrecord_to_parameters(_params_record(context), keep_input=True)
    return parameters_to_ndarrays(params)


def _set_weights(context: Context, weights: list[np.ndarray]) -> None:
    params = ndarrays_to_parameters([np.asarray(w) for w in weights])
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        params, keep_input=True
    )


def _short_of_budget(grid: Grid, cfg: PhaseConfig, strategy: PhaseStrategy, rnd: int) -> list[int]:
    """Partition ids of the phase's sites whose ledgers cannot pay round ``rnd`` (asked before
    the round, so training stops cleanly at the last checkpoint instead of failing mid-round;
    a site that does not answer counts as short)."""
    config = {**strategy.round_config(rnd), "budget-round": rnd}
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config))
    msgs = [
        Message(content=content, dst_node_id=nid, message_type=MessageTypeLegacy.GET_PROPERTIES,
                group_id=f"budget-{rnd}")
        for nid in strategy.proxies
    ]  # fmt: skip
    ok: set[int] = set()
    for reply in grid.send_and_receive(msgs, timeout=cfg.timeout_s):
        if reply.has_error():
            continue
        props = compat.recorddict_to_getpropertiesres(reply.content).properties
        if props.get("budget-ok") is True:
            ok.add(reply.metadata.src_node_id)
    return sorted(strategy.partition_of_node[n] for n in strategy.proxies if n not in ok)


def _initial_weights(grid: Grid, cfg: PhaseConfig, strategy: PhaseStrategy) -> list[np.ndarray]:
    if cfg.initial_weights:
        return load_weights(Path(cfg.initial_weights))
    nid = next(iter(strategy.proxies))
    content = compat.getparametersins_to_recorddict(GetParametersIns({}))
    msg = Message(
        content=content,
        dst_node_id=nid,
        message_type=MessageTypeLegacy.GET_PARAMETERS,
        group_id="0",
    )
    replies = list(grid.send_and_receive([msg], timeout=cfg.timeout_s))
    if not replies or replies[0].has_error():
        raise TrainingError(f"{cfg.name}: site {strategy.partition_of_node[nid]} sent no model")
    res = compat.recorddict_to_getparametersres(replies[0].content, keep_input=False)
    return parameters_to_ndarrays(res.parameters)


def _send_fit(
    grid: Grid, context: LegacyContext, cfg: PhaseConfig, rnd: int
) -> tuple[list[tuple[ClientProxy, FitRes]], list[Any], Parameters]:
    """Send the round's train messages; the sites' results, the failures (None for a site that
    did not answer in ``cfg.timeout_s``) and the parameters sent."""
    strategy = context.strategy
    params = compat.arrayrecord_to_parameters(_params_record(context), keep_input=True)
    instructions = strategy.configure_fit(rnd, params, context.client_manager)
    msgs = [
        Message(
            content=compat.fitins_to_recorddict(ins, True),
            dst_node_id=proxy.node_id,
            message_type=MessageType.TRAIN,
            group_id=str(rnd),
        )
        for proxy, ins in instructions
    ]
    proxies = {proxy.node_id: proxy for proxy, _ in instructions}
    results: list[tuple[ClientProxy, FitRes]] = []
    failures: list[Any] = []
    for reply in grid.send_and_receive(msgs, timeout=cfg.timeout_s):
        if reply.has_error():
            failures.append(Exception(reply.error))
            continue
        res = compat.recorddict_to_fitres(reply.content, False)
        results.append((proxies[reply.metadata.src_node_id], res))
    failures += [None] * (len(msgs) - len(results) - len(failures))
    return results, failures, params


def _step(
    context: LegacyContext,
    rnd: int,
    results: list[tuple[ClientProxy, FitRes]],
    failures: list[Any],
) -> None:
    """The strategy's aggregate (FedAvgM) of the results becomes the current model."""
    aggregated, metrics = context.strategy.aggregate_fit(rnd, results, failures)
    if aggregated is not None:
        context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            aggregated, True
        )
        context.history.add_metrics_distributed_fit(server_round=rnd, metrics=metrics)


def _plain_fit(grid: Grid, context: LegacyContext, cfg: PhaseConfig, rnd: int) -> None:
    """One FedAvg round (weights = train counts), bounded by ``cfg.timeout_s``."""
    _step(context, rnd, *_send_fit(grid, context, cfg, rnd)[:2])


def _he_fit(
    grid: Grid, context: LegacyContext, cfg: PhaseConfig, rnd: int, decryptor_node: int
) -> None:
    """One BFV round (securefed.federation.he_round): collect encrypted contributions, add them
    without any key, have the decryptor open the verified sum, step the strategy on it."""
    from securefed.crypto.bfv import sum_contributions
    from securefed.federation.he_round import HE_MEAN, aggregator_context, decrypt_request

    strategy = context.strategy
    assert isinstance(strategy, PhaseStrategy)
    results, failures, params = _send_fit(grid, context, cfg, rnd)
    need = max(2, cfg.min_sites)
    if len(results) < need:
        raise TooFewParticipantsError(
            f"{cfg.name} round {rnd}: {len(results)} of {len(failures) + len(results)} sites "
            f"sent a contribution; a BFV aggregate needs at least {need}"
        )
    try:
        total = sum_contributions(
            aggregator_context(cfg.he_context),
            (parameters_to_ndarrays(r.parameters)[0].tobytes() for _, r in results),
        )
    except SecurefedError as exc:
        raise TrainingError(f"{cfg.name} round {rnd}: a contribution is refused: {exc}") from exc
    current = parameters_to_ndarrays(params)
    sites = sorted(strategy.partition_of_node[p.node_id] for p, _ in results)
    request = Message(
        content=decrypt_request(
            total, phase=cfg.name, rnd=rnd, sites=sites, fields=cfg.he_fields,
            shapes=[(a.dtype.str, a.shape) for a in current]
            + ([(np.dtype(np.float32).str, (1,))] if cfg.weighted else []),
            protocol_hash=cfg.protocol_hash,
        ),
        dst_node_id=decryptor_node,
        message_type=MessageType.TRAIN,
        group_id=f"decrypt-{rnd}",
    )  # fmt: skip
    replies = list(grid.send_and_receive([request], timeout=cfg.timeout_s))
    if not replies or replies[0].has_error():
        why = replies[0].error.reason if replies else "no reply in time"
        raise TrainingError(f"{cfg.name} round {rnd}: the decryptor did not open the sum: {why}")
    mean = replies[0].content.array_records[HE_MEAN].to_numpy_ndarrays()
    aggregate = ndarrays_to_parameters(mean)
    for _, res in results:  # as SecAgg+ does: every result carries the aggregate
        res.parameters = aggregate
    _step(context, rnd, results, failures)


def _evaluate(
    grid: Grid, context: LegacyContext, cfg: PhaseConfig, rnd: int
) -> list[dict[str, Any]]:
    """Per-site validation metrics of the current weights (sites that answered in time)."""
    strategy = context.strategy
    params = compat.arrayrecord_to_parameters(_params_record(context), keep_input=True)
    msgs = [
        Message(
            content=compat.evaluateins_to_recorddict(ins, True),
            dst_node_id=proxy.node_id,
            message_type=MessageType.EVALUATE,
            group_id=f"eval-{rnd}",
        )
        for proxy, ins in strategy.configure_evaluate(rnd, params, context.client_manager)
    ]
    sites = []
    for reply in grid.send_and_receive(msgs, timeout=cfg.timeout_s):
        if reply.has_error():
            log.warning("%s round %s: a site failed to evaluate: %s", cfg.name, rnd, reply.error)
            continue
        res = compat.recorddict_to_evaluateres(reply.content)
        metrics = {k: float(v) for k, v in res.metrics.items() if isinstance(v, int | float)}
        metrics["partition-id"] = int(res.metrics.get("partition-id", -1))
        sites.append(metrics)
    return sorted(sites, key=lambda s: s["partition-id"])


def _secagg_workflow(cfg: PhaseConfig) -> SecAggPlusWorkflow:
    if cfg.reconstruction_threshold >= cfg.num_shares:
        raise ConfigError(
            f"secure_aggregation: Flower's SecAgg+ needs reconstruction_threshold "
            f"({cfg.reconstruction_threshold}) < num_shares ({cfg.num_shares})"
        )
    if cfg.num_shares < 3:
        raise ConfigError("secure_aggregation.num_shares: Flower's SecAgg+ needs at least 3")
    # Client-level DP: the sites send integers in [-m/2, m/2); clipping range m/2 and weight 1
    # make Flower's quantisation the identity on them, so the sum holds them exactly (mod m).
    dp = bool(cfg.client_dp)
    return SecAggPlusWorkflow(
        num_shares=cfg.num_shares,
        reconstruction_threshold=cfg.reconstruction_threshold,
        max_weight=1.0 if dp else cfg.max_weight,
        clipping_range=cfg.quantization_range / 2 if dp else cfg.clipping_range,
        quantization_range=cfg.quantization_range,
        timeout=cfg.timeout_s,
    )


def _record_round(
    ckpt: PhaseCheckpoint,
    state: PhaseState,
    rnd: int,
    weights: list[np.ndarray],
    sites: list[dict[str, Any]],
    fit_metrics: dict[str, Any],
    seconds: float,
    momentum: list[np.ndarray] | None = None,
    *,
    keep_last: bool = False,
) -> None:
    pooled = pooled_dice(sites)
    score = pooled["dice_mean"] if pooled["num_val"] > 0 else None
    is_best = score is not None and (state.best_score is None or score > state.best_score)
    if (state.best_round is None and score is None) or keep_last:
        is_best = True  # nothing to compare (yet, or ever): the latest weights are the result
    if is_best:
        state.best_round, state.best_score = rnd, score
    state.history.append(
        {"round": rnd, "seconds": round(seconds, 3), "val": pooled, "sites": sites, **fit_metrics}
    )
    state.completed_round = rnd
    ckpt.save_round(state, weights, is_best=is_best, momentum=momentum)


def _first_round(state: PhaseState, name: str) -> int:
    """The round a (resumed) phase starts at: after the last one sent out. A round that was
    started and never completed is lost (the sites train in each round number once)."""
    start = max(state.completed_round, state.started_round) + 1
    if state.started_round > state.completed_round:
        if state.started_round not in state.lost_rounds:
            state.lost_rounds.append(state.started_round)
        log.warning(
            "%s: round %s was started and never completed; the sites train in a round number "
            "once, so the phase goes on at round %s (one round fewer)",
            name, state.started_round, start,
        )  # fmt: skip
    return start


def run_server_phase(grid: Grid, context: Context, cfg: PhaseConfig) -> PhaseState:
    """Run (or resume) one phase on ``grid``; returns the final state (also in out_dir)."""
    if cfg.aggregation in ("secagg+", "bfv") and len(cfg.site_ids) < 2:
        raise ConfigError(f"{cfg.name}: {cfg.aggregation} needs at least 2 sites, the phase has 1")
    workflow = _secagg_workflow(cfg) if cfg.aggregation == "secagg+" else None
    ckpt = PhaseCheckpoint(Path(cfg.out_dir))
    state = ckpt.load_state(cfg.digest())
    if state.status == "completed":
        return state
    state.status, state.error = "running", None
    strategy = PhaseStrategy(cfg, grid)
    legacy = LegacyContext(context, ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
    try:
        found = discover_sites(grid, cfg)
        strategy.select({p: n for p, n in found.items() if p in cfg.site_ids})
        if state.completed_round >= 0:
            weights = load_weights(ckpt.last_path)
            strategy.velocity = ckpt.load_momentum()
            log.info("%s: resuming after round %s", cfg.name, state.completed_round)
        else:
            weights = _initial_weights(grid, cfg, strategy)
        _set_weights(legacy, weights)
        cfg_record = legacy.state.config_records.get(MAIN_CONFIGS_RECORD)
        if cfg_record is None:
            from flwr.app import ConfigRecord

            cfg_record = ConfigRecord()
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = cfg_record
        cfg_record[Key.START_TIME] = time.monotonic()
        if state.completed_round < 0:
            t0 = time.monotonic()
            sites = _evaluate(grid, legacy, cfg, 0) if cfg.eval_round_zero else []
            if cfg.eval_round_zero:
                _record_round(ckpt, state, 0, weights, sites, {}, time.monotonic() - t0)
            else:
                state.completed_round = 0
                ckpt.save_round(state, weights, is_best=False)
        for rnd in range(_first_round(state, cfg.name), cfg.rounds + 1):
            short = _short_of_budget(grid, cfg, strategy, rnd) if cfg.dp_training else []
            if short and len(cfg.site_ids) - len(short) < max(1, cfg.min_sites):
                state.stopped = (
                    f"{cfg.name}: stopped before round {rnd}: the privacy budget of site(s) "
                    f"{short} cannot pay it ({cfg.dp_training}), leaving fewer than "
                    f"{cfg.min_sites} sites; the phase keeps round {state.completed_round}, "
                    f"checkpointed in {cfg.out_dir}"
                )
                log.warning("%s", state.stopped)
                break
            strategy.skip = set(short)
            if short:
                log.warning("%s round %s: without site(s) %s (budget spent)", cfg.name, rnd, short)
            t0 = time.monotonic()
            cfg_record[Key.CURRENT_ROUND] = rnd
            state.started_round = rnd
            ckpt.save_state(state)  # a resume never sends this round number again
            before = _params_record(legacy)
            # the training messages pass the ledger-head check (a site whose ledger went back
            # is dropped) and, under SecAgg+, the relay of the sites' key signatures
            fit_grid = LedgerHeadCheck(grid, strategy.partition_of_node.get,
                                       Path(cfg.out_dir).parent)  # fmt: skip
            if workflow is not None:
                workflow(SignedKeyRelay(fit_grid), legacy)
            elif cfg.aggregation == "bfv":
                _he_fit(fit_grid, legacy, cfg, rnd, found[cfg.decryptor])
            else:
                _plain_fit(fit_grid, legacy, cfg, rnd)
            if _params_record(legacy) is before:
                raise TooFewParticipantsError(
                    f"{cfg.name} round {rnd}: no aggregate ({cfg.aggregation}); too few of the "
                    f"{len(cfg.site_ids)} sites answered within {cfg.timeout_s:g} s "
                    f"(SecAgg+ reconstruction threshold {cfg.reconstruction_threshold}, minimum "
                    f"{cfg.min_sites} sites). Rounds up to {rnd - 1} are checkpointed in "
                    f"{cfg.out_dir}; rerun the phase to resume (at round {rnd + 1}: the sites "
                    "train in each round once)."
                )
            fit = {
                k: v[-1][1]
                for k, v in legacy.history.metrics_distributed_fit.items()
                if v and v[-1][0] == rnd
            }
            weights = _current_weights(legacy)
            scheduled = rnd % max(1, cfg.validate_every) == 0 or rnd == cfg.rounds
            sites = _evaluate(grid, legacy, cfg, rnd) if cfg.validate and scheduled else []
            _record_round(
                ckpt, state, rnd, weights, sites, fit, time.monotonic() - t0, strategy.velocity,
                keep_last=not cfg.validate,
            )  # fmt: skip
            log.info("%s round %s: val %s", cfg.name, rnd, state.history[-1]["val"])
        state.status = "completed"
        ckpt.save_state(state)
        return state
    except SecurefedError as exc:
        state.status, state.error = "failed", f"[{exc.code}] {exc}"
        ckpt.save_state(state)
        raise
    except Exception as exc:
        state.status, state.error = "failed", f"{type(exc).__name__}: {exc}"
        ckpt.save_state(state)
        raise


def make_server_app(cfg: PhaseConfig | None = None) -> ServerApp:
    """A ServerApp for one phase: ``cfg`` given (simulation) or read from the run config."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        grid = fast_polling(grid)  # a deployment's grid asks for replies every 0.2 s, not 3 s
        phase = cfg or PhaseConfig.from_run_config(dict(context.run_config))
        if phase.stage:  # a study stage over the deployment (features, assign, test)
            from securefed.federation.stage_server import run_server_stage

            run_server_stage(grid, phase)
            return
        run_server_phase(grid, context, phase)

    return server_app


app = make_server_app()
