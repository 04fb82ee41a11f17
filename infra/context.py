"""What a round's tasks are handed: its config, the artifact store and the tracker.

Built once by the flow and passed to each task, so stages never reach storage
or tracking through globals.
"""

from __future__ import annotations

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
