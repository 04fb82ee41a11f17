"""Where to look at a loop in MLflow's UI: the experiment's runs table and a round's run.

MLflow 3's UI opens an experiment on its GenAI overview (traces) unless told otherwise, so every
link Flywheel prints names the page itself: ``#/experiments/<id>/runs`` (the runs table) and
``#/experiments/<id>/runs/<run_id>`` (one round). A tracking server serves its UI at its own
address; a local store (the sqlite default) has no UI until ``mlflow ui`` serves it, so the links
then come with that command and point where it listens by default.
"""

from __future__ import annotations

from dataclasses import dataclass

LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves without --host/--port


def runs_table_path(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs"


def run_path(experiment_id: str, run_id: str) -> str:
    return f"{runs_table_path(experiment_id)}/{run_id}"


@dataclass(frozen=True)
class MlflowLinks:
    """The runs table and the runs asked for, as full URLs; ``serve`` is the command that serves
    the UI first (a local store), None when a server already does."""

    runs_table: str
    runs: dict[str, str]  # label (e.g. "round 3") -> the run's URL
    serve: str | None

    def lines(self) -> list[str]:
        """As the command line prints them, under ``mlflow:``."""
        if self.serve:
            head = [f"mlflow:    serve the UI with: {self.serve}", f"           then open the runs table: {self.runs_table}"]
        else:
            head = [f"mlflow:    runs table: {self.runs_table}"]
        return head + [f"           {label}: {url}" for label, url in self.runs.items()]

    def markdown(self) -> str:
        """As a Prefect artifact shows them: one line of links."""
        links = " · ".join([f"[runs table]({self.runs_table})", *(f"[{label}]({url})" for label, url in self.runs.items())])
        return f"MLflow: {links}" + (f" (serve the UI first: `{self.serve}`)" if self.serve else "")


def mlflow_links(tracking_uri: str, experiment_id: str, runs: dict[str, str] | None = None) -> MlflowLinks:
    """Links into the UI of the MLflow at ``tracking_uri``; ``runs``: label -> run id."""
    if tracking_uri.startswith(("http://", "https://")):
        base, serve = tracking_uri.rstrip("/"), None
    else:
        base, serve = LOCAL_UI, f"mlflow ui --backend-store-uri {tracking_uri}"
    return MlflowLinks(
        runs_table=f"{base}/{runs_table_path(experiment_id)}",
        runs={label: f"{base}/{run_path(experiment_id, run_id)}" for label, run_id in (runs or {}).items() if run_id},
        serve=serve,
    )


def round_links(tracking_uri: str, rounds: list) -> MlflowLinks | None:
    """Links to the runs table and to each of ``rounds`` (round summaries: ``round``,
    ``mlflow_experiment_id``, ``mlflow_run_id``); None when none names its experiment (recorded
    before rounds did)."""
    experiment_id = next((r.mlflow_experiment_id for r in rounds if r.mlflow_experiment_id), "")
    if not experiment_id:
        return None
    return mlflow_links(tracking_uri, experiment_id, {f"round {r.round}": r.mlflow_run_id for r in rounds
                                                     if r.mlflow_experiment_id == experiment_id})
