"""Generation backend 'openai' against `transformers serve` (a real OpenAI-compatible server) serving
the tiny model on loopback; the server fixture is the judge's (tests/test_judge_serve.py)."""

from __future__ import annotations

import pytest

from infra.records import Prompt
from infra.settings import GenerateConfig, ModelConfig
from tasks.generate import generate_candidates
from tasks.sampling.backends import open_backend
from tests.test_judge_serve import served  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

PROMPTS = [Prompt(id=f"p{i}", text=f"Name colour {i}.") for i in range(3)]


def served_config(url: str, **openai) -> GenerateConfig:
    return GenerateConfig(backend="openai", n_candidates=3, temperatures=[0.7, 1.0], max_new_tokens=6,
                          openai={"base_url": url, "max_in_flight": 4, **openai})


def test_candidates_from_the_served_policy(served, tiny_model):  # noqa: F811
    # transformers serve refuses `n`: one request per sample. The model sent is the checkpoint's path.
    config = served_config(served, use_n=False)
    with open_backend(tiny_model, config, ModelConfig(dtype="fp32")) as backend:
        candidates = generate_candidates(backend, PROMPTS, config, seed=1, progress=False)
    assert len(candidates) == 9
    assert {(c.prompt_id, c.index) for c in candidates} == {(p.id, i) for p in PROMPTS for i in range(3)}
    assert [c.temperature for c in candidates if c.prompt_id == "p0"] == [0.7, 1.0, 0.7]
    # The random tiny model never ends an answer in 6 tokens (it mostly says newlines): every one is cut at the budget.
    assert all(c.truncated and c.n_tokens == 6 for c in candidates)


def test_a_server_refusing_n_is_named_with_the_fix(served, tiny_model):  # noqa: F811
    from tasks.sampling.openai_backend import GenerationServerError

    config = served_config(served, use_n=True)
    with open_backend(tiny_model, config, ModelConfig(dtype="fp32")) as backend:
        with pytest.raises(GenerationServerError, match="use_n: false"):
            generate_candidates(backend, PROMPTS[:1], config, seed=1, progress=False)
