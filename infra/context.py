"""What a round's tasks are handed: its config, the artifact store and the tracker.

Built once by the flow and passed to each task, so stages never reach storage
or tracking through globals. It also decides resumption: a stage whose manifest
is complete and whose input and config hashes match is not run again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from infra.artifacts import ArtifactStore, hash_json, stage_key
from infra.settings import FlywheelConfig
from infra.tracking import Tracker


@dataclass
class RoundContext:
    config: FlywheelConfig
    round_index: int
    store: ArtifactStore
    tracker: Tracker
    champion_id: str = ""  # what the round started from: a checkpoint URI, stable across machines

    @property
    def loop(self) -> str:
        return self.config.loop

    @property
    def data_dir(self) -> Path:
        return Path(self.config.storage.data_dir)

    def key(self, stage: str) -> str:
        return stage_key(self.loop, self.round_index, stage)

    def config_hash(self, *sections: str) -> str:
        dumped = self.config.model_dump(mode="json")
        return hash_json({name: dumped[name] for name in sections})

    def inputs_hash(self, *stage_keys: str, extra: str = "") -> str:
        """Identity of a stage's inputs: the contents (checksums) of the upstream stages it reads."""
        digests = []
        for key in stage_keys:
            manifest = self.store.manifest(key)
            if manifest is None:
                raise FileNotFoundError(f"stage {key} has no complete artifacts to read")
            digests.append([(f.path, f.sha256) for f in manifest.files])
        return hash_json({"upstream": digests, "extra": extra})

    def already_done(self, key: str, input_hash: str, config_hash: str) -> bool:
        """True when ``key`` is complete from the same inputs and config: resume past it."""
        manifest = self.store.manifest(key)
        done = manifest is not None and manifest.input_hash == input_hash and manifest.config_hash == config_hash
        if done:
            _logger().info("stage %s is complete with the same inputs and config: not run again", key)
        return done


def _logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # outside a Prefect run
        return logging.getLogger("flywheel")
