from infra.models import load_model, load_tokenizer
from infra.records import Prompt
from infra.settings import GenerateConfig, ModelConfig
from tasks.generate import SampleRequest, generate_candidates, length_grouped_batches

PROMPTS = [Prompt(id=f"p{i}", text="Tell me about cats. " * (i + 1)) for i in range(5)]


def test_candidates_per_prompt_with_their_temperatures(tiny_model):
    model, tokenizer = load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model)
    config = GenerateConfig(n_candidates=3, temperatures=[0.7, 1.0], max_new_tokens=8, batch_size=4)
    candidates = generate_candidates(model, tokenizer, PROMPTS, config, seed=1, progress=False)
    assert len(candidates) == 15
    assert {(c.prompt_id, c.index) for c in candidates} == {(p.id, i) for p in PROMPTS for i in range(3)}
    assert [c.temperature for c in candidates if c.prompt_id == "p0"] == [0.7, 1.0, 0.7]
    assert all(0 < c.n_tokens <= 8 for c in candidates)
    assert any(c.text for c in candidates)


def test_generation_is_seeded(tiny_model):
    model, tokenizer = load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model)
    config = GenerateConfig(n_candidates=2, max_new_tokens=6, batch_size=8)
    first = generate_candidates(model, tokenizer, PROMPTS, config, seed=3, progress=False)
    second = generate_candidates(model, tokenizer, PROMPTS, config, seed=3, progress=False)
    other = generate_candidates(model, tokenizer, PROMPTS, config, seed=4, progress=False)
    assert first == second
    assert first != other


def test_batches_share_temperature_and_sort_by_length():
    requests = [SampleRequest(key=(i,), prompt="x", temperature=t) for i, t in enumerate([0.7, 1.0, 0.7, 1.0, 0.7])]
    lengths = [30, 5, 10, 20, 20]
    batches = list(length_grouped_batches(requests, lengths, batch_size=2))
    assert batches == [[2, 4], [0], [1, 3]]
    for batch in batches:
        assert len({requests[i].temperature for i in batch}) == 1
