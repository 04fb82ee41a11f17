"""What ties a round's pairs to its MLflow run and to the model version it may become.

The filter stage's ``pairs.jsonl`` is logged as a dataset input of the round's run, named
``pairs-round-NNN``, its source the file's place in the artifact store and its digest the file's
checksum from the stage's manifest; a promoted policy's model version carries the same digest,
the round and the gate's decision. MLflow then shows pairs -> run -> registered model version.
"""

from __future__ import annotations

import json
import warnings

from infra import layout
from infra.store import ArtifactStore

DIGEST_CHARS = 16  # of the pairs file's sha256; MLflow keeps a dataset digest of at most 36 characters
REASONS_CHARS = 4000  # the decision's reasons in a model version tag, cut beyond this


def pairs_dataset_name(round_index: int) -> str:
    return f"pairs-{layout.round_name(round_index)}"


def pairs_digest(store: ArtifactStore, filter_key: str) -> str:
    """The content digest of the pairs the filter stage at ``filter_key`` kept."""
    manifest = store.manifest(filter_key)
    entry = next((f for f in manifest.files if f.path == layout.PAIRS), None) if manifest else None
    if entry is None:
        raise FileNotFoundError(f"{store.uri(filter_key)} holds no complete {layout.PAIRS}")
    return entry.sha256[:DIGEST_CHARS]


def pairs_dataset(store: ArtifactStore, filter_key: str, round_index: int) -> dict[str, str]:
    """The round's pairs as ``mlflow.data`` describes a dataset (``Dataset.to_dict()``): name,
    digest, source, and the schema and row count MLflow's UI shows."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    lines = (store.local_path(filter_key) / layout.PAIRS).read_text().splitlines()
    frame = pd.DataFrame([json.loads(line) for line in lines if line.strip()])
    with warnings.catch_warnings():  # MLflow registers its local-file source twice, and warns that a path matches both
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        dataset = from_pandas(frame, source=f"{store.uri(filter_key)}/{layout.PAIRS}",
                              name=pairs_dataset_name(round_index), digest=pairs_digest(store, filter_key))
    return dataset.to_dict()


def decision_tags(promoted: bool, reasons: list[str], digest: str) -> dict[str, str]:
    """What a model version records of the gate that let it through, and of the pairs it learnt from."""
    summary = "; ".join(reasons)
    return {
        "flywheel.pairs_digest": digest,
        "flywheel.decision": "promoted" if promoted else "rejected",
        "flywheel.decision_reasons": summary if len(summary) <= REASONS_CHARS else summary[: REASONS_CHARS - 1] + "…",
    }
