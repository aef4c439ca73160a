"""The Flower application of securefed: ClientApp (sites), ServerApp (one federated phase),
their configuration and the site task (model, data, local loops)."""

from securefed.federated.flower.config import PhaseConfig, SiteSettings, parse_sites
from securefed.federated.flower.metrics import pooled_dice, site_summary
from securefed.federated.flower.task import FlowerTask, default_task, resolve_task

__all__ = [
    "FlowerTask",
    "PhaseConfig",
    "SiteSettings",
    "default_task",
    "parse_sites",
    "pooled_dice",
    "resolve_task",
    "site_summary",
]
