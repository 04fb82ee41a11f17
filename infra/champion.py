"""The loop's champion: where it is, which policy each round trained, and the lineage of a promotion.

The MLflow registry's ``champion`` alias is the source of truth; the store's pointer
(``<loop>/champion.json``) serves when the registry has none, and always holds the same policy.
"""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from infra import layout
from infra.records import Champion
from infra.settings import FlywheelConfig
from infra.store import ArtifactStore, hash_json


class ChampionError(ValueError):
    """A policy asked for does not exist; the message says which and where."""


def registered_model_name(config: FlywheelConfig) -> str:
    return config.storage.registered_model or f"{config.loop}-policy"


def base_policy(config: FlywheelConfig) -> Champion:
    return Champion(checkpoint=config.model.base, round=0)


def read_champion(store: ArtifactStore, config: FlywheelConfig) -> Champion:
    """The store's champion pointer, or the base policy (round 0) when nothing was promoted yet."""
    found = store.read_json(layout.champion_key(config.loop))
    return Champion.model_validate(found) if found else base_policy(config)


def champion_from_tags(tags: dict[str, str]) -> Champion:
    return Champion(checkpoint=tags["flywheel.merged_uri"], round=int(tags["flywheel.round"]), train_key=tags["flywheel.train_key"])


def current_champion(store: ArtifactStore, tracker, config: FlywheelConfig) -> Champion:
    """The loop's champion now."""
    tags = tracker.registry.champion_tags(registered_model_name(config))
    return champion_from_tags(tags) if tags else read_champion(store, config)


def starting_champion(store: ArtifactStore, tracker, config: FlywheelConfig, round_index: int) -> Champion:
    """The champion a round starts from, pinned on its first run so a resumed round starts from the
    same policy even if a later round has moved the champion since."""
    key = layout.champion_before_key(config.loop, round_index)
    pinned = store.read_json(key)
    if pinned is not None:
        return Champion.model_validate(pinned)
    champion = current_champion(store, tracker, config)
    store.write_json(key, champion.model_dump())
    return champion


def trained_policy(store: ArtifactStore, train_key: str, round_index: int) -> Champion:
    """The policy a train stage produced, named by its store URI (stable across machines)."""
    return Champion(checkpoint=layout.merged_uri(store, train_key), round=round_index, train_key=train_key)


def policy_of_round(store: ArtifactStore, config: FlywheelConfig, round_index: int) -> Champion:
    """Round 0 is the base model; round N is the policy that round N trained (promoted or not)."""
    if round_index == 0:
        return base_policy(config)
    key = layout.stage_key(config.loop, round_index, layout.TRAIN)
    if not store.is_complete(key):
        raise ChampionError(f"round {round_index} of loop {config.loop!r} has no trained policy ({store.uri(key)} is not complete)")
    return trained_policy(store, key, round_index)


def local_checkpoint(policy: Champion, store: ArtifactStore, data_dir: str | Path) -> str:
    """A path (or hub id) this machine can load ``policy`` from: an S3 stage is downloaded once,
    the bundled base model converted once."""
    from infra.models import resolve_checkpoint

    if policy.train_key:
        return str(store.local_path(policy.train_key) / layout.MERGED)
    return resolve_checkpoint(policy.checkpoint, Path(data_dir))


def code_version() -> str:
    """The git commit of the running code (with '-dirty' for local changes), else the package version."""
    repo = Path(__file__).resolve().parents[1]
    try:
        git = ["git", "-C", str(repo)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "flywheel-" + version("flywheel")
        except PackageNotFoundError:
            return "unknown"


def lineage_tags(store: ArtifactStore, config: FlywheelConfig, champion: Champion, started_from: str) -> dict[str, str]:
    """Where a promoted policy came from: enough to rebuild or audit it."""
    train_key = champion.train_key or ""
    return {
        "flywheel.loop": config.loop,
        "flywheel.round": str(champion.round),
        "flywheel.train_key": train_key,
        "flywheel.merged_uri": champion.checkpoint,
        "flywheel.adapter_uri": f"{store.uri(train_key)}/{layout.ADAPTER}",
        "flywheel.round_uri": store.uri(layout.round_key(config.loop, champion.round)),
        "flywheel.config_hash": hash_json(config.model_dump(mode="json")),
        "flywheel.code_version": code_version(),
        "flywheel.started_from": started_from,
    }


def crown(store: ArtifactStore, tracker, config: FlywheelConfig, train_key: str, round_index: int, started_from: str,
          decision: dict[str, str] | None = None) -> Champion:
    """Make the policy trained at ``train_key`` the champion: a new registry version carrying the
    alias ``champion`` (with its lineage and the ``decision`` tags: the gate's verdict, the pairs'
    digest; infra/round_lineage.py), then the store's pointer."""
    champion = trained_policy(store, train_key, round_index).model_copy(update={"promoted_at": datetime.now(timezone.utc).isoformat()})
    model_version = tracker.registry.register_champion(
        registered_model_name(config),
        tracker.run_id,
        store.local_path(train_key) / layout.ADAPTER,
        {**lineage_tags(store, config, champion, started_from), **(decision or {})},
    )
    champion = champion.model_copy(update={"model_version": model_version})
    store.write_json(layout.champion_key(config.loop), champion.model_dump())
    return champion
