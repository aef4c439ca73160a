"""Simulation keys: every party's key pair is made once in RUNDIR/keys and reused on resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securefed.crypto import (
    PrivateKeys,
    PublicKeys,
    generate_keys,
    load_private_keys,
    load_public_keys,
    private_key_path,
    public_key_path,
    write_keys,
)
from securefed.crypto.keys import Role

__all__ = ["StudyKeys", "study_keys"]


@dataclass(frozen=True)
class StudyKeys:
    """Private and public keys of every party of a simulated study, by party id."""

    private: dict[str, PrivateKeys]
    public: dict[str, PublicKeys]


def study_keys(folder: Path, server_id: str, site_ids: list[str]) -> StudyKeys:
    """Load (or make, the first time) the server's and every site's keys in ``folder``."""
    parties: list[tuple[Role, str]] = [("server", server_id), *(("site", s) for s in site_ids)]
    private: dict[str, PrivateKeys] = {}
    public: dict[str, PublicKeys] = {}
    for role, pid in parties:
        if not private_key_path(folder, pid).exists():
            write_keys(generate_keys(role, pid), folder)
        private[pid] = load_private_keys(private_key_path(folder, pid), role=role)
        public[pid] = load_public_keys(public_key_path(folder, pid), role=role)
    return StudyKeys(private, public)
