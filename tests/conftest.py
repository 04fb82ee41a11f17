import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny randomly initialised Llama carrying the real SmolLM2 tokenizer and chat template.

    FLYWHEEL_TEST_TOKENIZER names a folder holding that tokenizer, for a machine without the
    bundled model's package (a GPU box the suite is copied to)."""
    from tests.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", os.environ.get("FLYWHEEL_TEST_TOKENIZER")))


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """A real, temporary Prefect API for the session's flow tests."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    # A loaded 2-core machine can take more than 120 s to start it.
    with prefect_test_harness(server_startup_timeout=300):
        yield


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    """moto's S3 server on a loopback port, which tests can stop and start again (state survives)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.running = False

    def start(self):
        if not self.running:
            from moto.server import ThreadedMotoServer

            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self._server.start()
            self.running = True

    def stop(self):
        if self.running:
            self._server.stop()
            self.running = False

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint (moto server mode) on loopback with throwaway credentials."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="flywheel-test", AWS_SECRET_ACCESS_KEY="flywheel-test-secret", AWS_DEFAULT_REGION="us-east-1")
    server = S3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def killed_round_chain(tiny_model, s3_server, prefect_harness, tmp_path_factory):
    """Round 1 on S3 killed (kill -9) in every stage, rerun each time, then finished: one chain that
    the fault tests and the resume tests share (tests/killed_round.py)."""
    from tests.killed_round import kill_in_every_stage

    return kill_in_every_stage(tiny_model, s3_server, tmp_path_factory.mktemp("kill-chain"))
