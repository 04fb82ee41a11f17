"""The ``flywheel`` command's exit codes, in one table: ``flywheel --help`` shows it and the
README's "Exit codes" section is ``exit_codes_markdown()`` (a test keeps the two the same)."""

from __future__ import annotations

import textwrap

SUCCESS = 0
FAILED = 1
USAGE_OR_CONFIG = 2  # argparse exits 2 on a bad option; a bad config has stopped with 2 since the first release
SERVICE_DOWN = 3
LOOP_BUSY = 4

MEANINGS = {
    SUCCESS: "done; a round the promotion gate rejected counts too: the gate did its job",
    FAILED: "a round, a stage, an ablation cell or a stack/deploy/trigger command failed (the message or traceback says why)",
    USAGE_OR_CONFIG: "bad usage (an unknown option or value, a round or ablation that does not exist) or an invalid "
                     "config or input file (a value out of range, an unknown key or name, a prompt file's bad line: "
                     "stopped before anything is written)",
    SERVICE_DOWN: "a service the command needs does not answer (Prefect API, MLflow server, S3): stopped before the "
                  "round writes anything",
    LOOP_BUSY: "another process is running a round of the same loop (storage.loop_wait_s to wait for it)",
}


def exit_codes_text() -> str:
    """For ``--help``'s epilog."""
    return "exit codes:\n" + "\n".join(textwrap.fill(meaning, 88, initial_indent=f"  {code}  ", subsequent_indent="     ")
                                       for code, meaning in MEANINGS.items())


def exit_codes_markdown() -> str:
    return "\n".join(["| code | meaning |", "|---|---|", *(f"| {code} | {meaning} |" for code, meaning in MEANINGS.items())])
