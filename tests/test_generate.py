from infra.models import load_model, load_tokenizer
from infra.records import Prompt
from infra.settings import GenerateConfig, ModelConfig
from tasks.generate import generate_candidates
from tasks.sampling.requests import SampleRequest, length_grouped_batches
from tests.sampling_helpers import hf_backend_from_loaded

PROMPTS = [Prompt(id=f"p{i}", text="Tell me about cats. " * (i + 1)) for i in range(5)]


def test_candidates_per_prompt_with_their_temperatures(tiny_model):
    model, tokenizer = load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model)
    config = GenerateConfig(n_candidates=3, temperatures=[0.7, 1.0], max_new_tokens=8, batch_size=4)
    candidates = generate_candidates(hf_backend_from_loaded(model, tokenizer), PROMPTS, config, seed=1, progress=False)
    assert len(candidates) == 15
    assert {(c.prompt_id, c.index) for c in candidates} == {(p.id, i) for p in PROMPTS for i in range(3)}
    assert [c.temperature for c in candidates if c.prompt_id == "p0"] == [0.7, 1.0, 0.7]
    assert all(0 < c.n_tokens <= 8 for c in candidates)
    assert any(c.text for c in candidates)


def test_generation_is_seeded(tiny_model):
    model, tokenizer = load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model)
    config = GenerateConfig(n_candidates=2, max_new_tokens=6, batch_size=8)
    first = generate_candidates(hf_backend_from_loaded(model, tokenizer), PROMPTS, config, seed=3, progress=False)
    second = generate_candidates(hf_backend_from_loaded(model, tokenizer), PROMPTS, config, seed=3, progress=False)
    other = generate_candidates(hf_backend_from_loaded(model, tokenizer), PROMPTS, config, seed=4, progress=False)
    assert first == second
    assert first != other


def test_batches_sort_by_length_and_keep_greedy_apart():
    temps = [0.7, 1.0, 0.7, 0.0, 1.0, 0.7, 0.0]
    requests = [SampleRequest(key=(i,), prompt="x", temperature=t) for i, t in enumerate(temps)]
    lengths = [30, 5, 10, 7, 20, 20, 3]
    batches = list(length_grouped_batches(requests, lengths, batch_size=2))
    # Sampled requests by length (temperatures mixed), then greedy ones by length.
    assert batches == [[1, 2], [4, 5], [0], [6, 3]]
    for batch in batches:
        assert len({requests[i].temperature == 0 for i in batch}) == 1


def test_row_temperature_nucleus_matches_transformers_warpers():
    import torch
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from tasks.sampling.nucleus import LONG_SHORTLIST, RowTemperatureNucleus

    torch.manual_seed(0)
    scores = torch.randn(5, 5000) * 4
    scores[3] = torch.randn(5000) * 0.01  # nearly flat: past the longer shortlist too, full-sort fallback
    scores[4] = -10.0
    scores[4, torch.randperm(5000)[:300]] = 5 + torch.randn(300) * 0.2  # a nucleus past the shortlist, within the longer one
    temperatures = torch.tensor([0.5, 0.7, 1.0, 1.3, 1.0])
    ours = RowTemperatureNucleus(temperatures, top_p=0.9, shortlist=64)(None, scores)
    for row, t in enumerate(temperatures.tolist()):
        reference = TopPLogitsWarper(0.9)(None, TemperatureLogitsWarper(t)(None, scores[row : row + 1].clone()))
        assert torch.equal(torch.isinf(ours[row]), torch.isinf(reference[0])), row
        kept = ~torch.isinf(ours[row])
        assert torch.allclose(ours[row][kept], reference[0][kept])
    assert (~torch.isinf(ours[3])).sum() > 64 * LONG_SHORTLIST  # the full sort's row
    assert 64 < (~torch.isinf(ours[4])).sum() <= 64 * LONG_SHORTLIST  # the longer shortlist's row


def test_truncated_flag_tells_a_cut_off_answer_from_one_that_ended(tiny_model):
    """The tiny random model never says EOS within a few tokens: every answer is cut at the budget.
    Once the token it produces third counts as EOS, the same greedy answer ends there instead."""
    from tasks.generate import summarize_candidates
    from tasks.sampling.decode import sample_batched
    from tasks.sampling.requests import render_chat

    model, tokenizer = load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model)
    requests = [SampleRequest(key=("p0",), prompt=PROMPTS[0].text, temperature=0.0)]
    cut = sample_batched(model, tokenizer, requests, max_new_tokens=4, batch_size=1, seed=0)[("p0",)]
    assert cut.truncated and cut.n_tokens == 4

    enc = tokenizer([render_chat(tokenizer, PROMPTS[0].text)], return_tensors="pt", add_special_tokens=False)
    greedy = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    third = int(greedy[0, -1])
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, third]
    ended = sample_batched(model, tokenizer, requests, max_new_tokens=6, batch_size=1, seed=0)[("p0",)]
    assert not ended.truncated and ended.n_tokens <= 2

    config = GenerateConfig(n_candidates=2, max_new_tokens=5, batch_size=4)
    candidates = generate_candidates(hf_backend_from_loaded(model, tokenizer), PROMPTS, config, seed=1, progress=False)
    assert all(c.truncated == (c.n_tokens == 5) for c in candidates)
    share = summarize_candidates(candidates, seconds=1.0).truncated_share
    assert share == sum(c.truncated for c in candidates) / len(candidates)


class FirstStepLogits:
    """Records, batch by batch, the logits of the first sampling step: what the prefill (shared or
    plain) leads to, before any sampled token can make two runs differ."""

    def __init__(self, monkeypatch):
        from tasks.sampling.nucleus import RowTemperatureNucleus

        self.seen, original = {}, RowTemperatureNucleus.sample

        def sample(nucleus, logits):
            self.seen.setdefault(nucleus, logits.clone())  # one nucleus a batch: its first call is the first step
            return original(nucleus, logits)

        monkeypatch.setattr(RowTemperatureNucleus, "sample", sample)

    def take(self) -> list:
        """The logits recorded since the last call, a tensor a batch."""
        taken = list(self.seen.values())
        self.seen.clear()
        return taken


def assert_mostly_same(shared: list, plain: list):
    """Equal but for one row in ten (one in any case): see ``assert_same_logits_mostly_same_samples``."""
    assert len(shared) == len(plain)
    assert sum(a == b for a, b in zip(shared, plain)) >= len(shared) - max(1, len(shared) // 10)


def assert_same_logits_mostly_same_samples(shared_logits: list, plain_logits: list, shared: list, plain: list):
    """The prefill computes the same numbers but in other groupings, so they agree to rounding
    (about 1e-7 here; a position off by one moves them by 2e-4). The random numbers are the same
    too, yet on the tiny random model's near-flat distributions (logits' spread 0.1) a rounding
    difference can move a draw across a token boundary, and that row goes its own way from there:
    one such row in 20 was seen on another CPU. So: logits to 1e-5, and samples equal but for one
    row in ten (one in any case)."""
    import torch

    assert len(shared_logits) == len(plain_logits) > 0
    for ours, theirs in zip(shared_logits, plain_logits):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert_mostly_same(shared, plain)


def test_shared_prefill_gives_the_same_samples_as_plain_sampling(tiny_model, monkeypatch):
    """The k rows of a prompt share one prefill (a forward over the distinct prompts only), which
    leads to the logits of plain batched sampling, and so, at the same seed (same rows, same random
    numbers), to its samples."""
    from tasks.sampling.decode import sample_batched

    model, tokenizer = load_model(tiny_model, ModelConfig(dtype="fp32")), load_tokenizer(tiny_model)
    requests = [SampleRequest(key=(p.id, i), prompt=p.text, temperature=(0.6, 1.0, 1.4)[i % 3]) for p in PROMPTS for i in range(4)]
    first_forward_rows = []

    def record(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:  # a prefill (decoding steps feed one token a row)
            first_forward_rows.append(ids.shape[0])

    logits = FirstStepLogits(monkeypatch)
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        shared = sample_batched(model, tokenizer, requests, max_new_tokens=8, batch_size=8, seed=5, share_prefill=True)
        shared_prefills, first_forward_rows[:], shared_logits = list(first_forward_rows), [], logits.take()
        plain = sample_batched(model, tokenizer, requests, max_new_tokens=8, batch_size=8, seed=5, share_prefill=False)
        plain_prefills, plain_logits = list(first_forward_rows), logits.take()
    finally:
        handle.remove()
    assert list(shared) == list(plain) and len(shared) == len(requests) == 20
    assert_same_logits_mostly_same_samples(shared_logits, plain_logits, list(shared.values()), list(plain.values()))
    assert plain_prefills == [8, 8, 4]  # every row encodes its prompt
    # Each batch: the system prompt every prompt starts with, in one row, then the rest of each
    # distinct prompt once (rows of a prompt sort together); the last batch asks one prompt only.
    assert shared_prefills == [1, 2, 1, 2, 1]

    config = GenerateConfig(n_candidates=4, temperatures=[0.6, 1.0], max_new_tokens=6, batch_size=8)
    plain_backend = hf_backend_from_loaded(model, tokenizer, config.model_copy(update={"share_prefill": False}))
    shared_candidates = generate_candidates(hf_backend_from_loaded(model, tokenizer, config), PROMPTS, config, seed=2, progress=False)
    shared_logits = logits.take()
    plain_candidates = generate_candidates(plain_backend, PROMPTS, config, seed=2, progress=False)
    assert_same_logits_mostly_same_samples(shared_logits, logits.take(), shared_candidates, plain_candidates)
    assert [(c.prompt_id, c.index, c.temperature) for c in shared_candidates] == \
        [(c.prompt_id, c.index, c.temperature) for c in plain_candidates]
    assert [sum(c.prompt_id == p.id for c in shared_candidates) for p in PROMPTS] == [4] * 5


def test_distinct_prompts_encode_their_common_prefix_once(tiny_model, monkeypatch):
    """Prompts that all differ still share the chat template's opening: it is encoded once, in one
    row, and each prompt's remaining tokens once; greedy answers and samples are those of plain
    left-padded batches, and every token a plain prefill encodes (but the padding) is encoded."""
    from tasks.sampling.decode import sample_batched
    from tasks.sampling.prefill import common_prefix_length, shared_prefill
    from tasks.sampling.requests import render_chat

    model, tokenizer = load_model(tiny_model, ModelConfig(dtype="fp32")), load_tokenizer(tiny_model)
    texts = [render_chat(tokenizer, p.text) for p in PROMPTS]
    token_lists = tokenizer(texts, add_special_tokens=False)["input_ids"]
    prefix = common_prefix_length(token_lists)
    assert 10 < prefix < min(len(ids) for ids in token_lists)  # the system prompt and the user turn's opening
    assert common_prefix_length([[1, 2, 3], [1, 2], [1, 2, 4]]) == 2 and common_prefix_length([[5], [6]]) == 0

    fed = []
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(tuple(kwargs["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        prefill = shared_prefill(model, token_lists, tokenizer.pad_token_id, model.device, room=4)
    finally:
        handle.remove()
    widest_rest = max(len(ids) for ids in token_lists) - 1 - prefix
    assert fed == [(1, prefix), (len(texts), widest_rest)]
    assert prefill.cache.get_seq_length() == prefix + widest_rest
    assert prefill.input_ids[:, 0].tolist() == [ids[-1] for ids in token_lists]
    assert prefill.attention_mask.sum(1).tolist() == [len(ids) for ids in token_lists]

    logits = FirstStepLogits(monkeypatch)
    for temperature in (0.0, 1.0):
        requests = [SampleRequest(key=(p.id,), prompt=p.text, temperature=temperature) for p in PROMPTS]
        shared = sample_batched(model, tokenizer, requests, max_new_tokens=8, batch_size=8, seed=3, top_p=0.9)
        shared_logits = logits.take()
        plain = sample_batched(model, tokenizer, requests, max_new_tokens=8, batch_size=8, seed=3, top_p=0.9,
                               share_prefill=False)
        assert list(shared) == list(plain)
        if temperature:
            assert_same_logits_mostly_same_samples(shared_logits, logits.take(), list(shared.values()), list(plain.values()))
        else:  # greedy rows are not sampled, so no logits are recorded: their texts say it
            assert_mostly_same(list(shared.values()), list(plain.values()))


def test_shared_prefill_samples_each_row_at_its_temperature(tiny_model):
    """Token statistics: the first tokens sampled with a shared prefill, rows at 0.8 and 1.6 in the
    same batches, are distributed as transformers' own sampling at that temperature, and not as at
    the other one. (The tiny model's head is scaled up so its distribution has a shape to compare.)"""
    from collections import Counter

    import torch

    from tasks.sampling.decode import sample_batched
    from tasks.sampling.requests import render_chat

    model, tokenizer = load_model(tiny_model, ModelConfig(dtype="fp32")), load_tokenizer(tiny_model)
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # tied to the embeddings: the whole model is rescaled, still a fixed model
    prompt, n = "Tell me about cats.", 256
    enc = tokenizer([render_chat(tokenizer, prompt)], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        top = {tokenizer.decode([i], skip_special_tokens=True).strip() for i in model(**enc).logits[0, -1].topk(20).indices.tolist()}

    def shares(texts: list[str]) -> dict[str, float]:  # the 20 likeliest tokens, the rest pooled
        counts = Counter(t if t in top else "other" for t in texts)
        return {token: c / len(texts) for token, c in counts.items()}

    def distance(p: dict, q: dict) -> float:  # total variation
        return 0.5 * sum(abs(p.get(k, 0) - q.get(k, 0)) for k in set(p) | set(q))

    requests = [SampleRequest(key=(j,), prompt=prompt, temperature=(0.8, 1.6)[j % 2]) for j in range(2 * n)]
    ours = sample_batched(model, tokenizer, requests, max_new_tokens=1, batch_size=64, seed=1)
    at = {t: shares([ours[(j,)].text for j in range(2 * n) if requests[j].temperature == t]) for t in (0.8, 1.6)}

    def reference(temperature: float, seed: int) -> dict[str, float]:
        torch.manual_seed(seed)
        out = model.generate(**enc, do_sample=True, temperature=temperature, top_k=None, top_p=1.0, max_new_tokens=1,
                             num_return_sequences=n, pad_token_id=tokenizer.pad_token_id)
        return shares([tokenizer.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in out])

    plain = {0.8: reference(0.8, 2), 1.6: reference(1.6, 3)}
    assert distance(at[0.8], plain[0.8]) < 0.2 and distance(at[1.6], plain[1.6]) < 0.2
    assert distance(at[0.8], plain[1.6]) > 0.5 and distance(at[1.6], plain[0.8]) > 0.5


def test_ended_rows_leave_the_batch_and_the_others_decode_as_before(tiny_model):
    """Greedy decoding matches transformers' generate; and when rows end (here at end tokens chosen
    so that they end at different steps), they leave the batch, and every other row decodes exactly
    what it would have: each row is its unstopped decoding cut after its first end token."""
    import torch

    from tasks.sampling.decode import decode
    from tasks.sampling.requests import render_chat

    model, tokenizer = load_model(tiny_model, ModelConfig(dtype="fp32")), load_tokenizer(tiny_model)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():  # larger random weights (still a fixed model), so greedy rows differ and do not repeat
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=noise) * 0.5)
    subjects = ("cats", "dogs", "the sea", "a long winding road", "bread", "rain", "stars", "music and dance")
    enc = tokenizer([render_chat(tokenizer, f"Tell me about {s}.") for s in subjects], return_tensors="pt", padding=True,
                    add_special_tokens=False)
    with torch.inference_mode():
        unstopped = decode(model, enc["input_ids"], enc["attention_mask"], None, 12, [-1], None)
        reference = model.generate(**enc, do_sample=False, max_new_tokens=12, top_k=None, eos_token_id=[-1],
                                   pad_token_id=tokenizer.pad_token_id)
    assert unstopped == reference[:, enc["input_ids"].shape[1]:].tolist()

    ends = {unstopped[row][step] for row, step in ((0, 1), (2, 3), (3, 5), (6, 8))}
    expected = [row[:next((i for i, t in enumerate(row) if t in ends), len(row) - 1) + 1] for row in unstopped]
    assert len({len(row) for row in expected}) >= 3  # rows end at several different steps
    batch_sizes = []

    def record(module, args, kwargs):
        if kwargs["input_ids"].shape[1] == 1:  # a decoding step
            batch_sizes.append(kwargs["input_ids"].shape[0])

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        with torch.inference_mode():
            stopped = decode(model, enc["input_ids"], enc["attention_mask"], None, 12, sorted(ends), None)
    finally:
        handle.remove()
    assert stopped == expected
    assert batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[-1] < len(subjects)
    assert len(batch_sizes) == max(len(row) for row in stopped) - 1  # no step after the last row ended


def test_reserved_cache_holds_what_the_dynamic_cache_holds(tiny_model):
    """The in-place cache against transformers' concatenating one, through a prefill, steps past its
    room (so it reallocates) and a row dropped midway: the same keys, values and logits throughout."""
    import torch
    from transformers import DynamicCache

    from tasks.sampling.kv_cache import reserved_cache
    from tasks.sampling.prefill import left_padded_positions
    from tasks.sampling.requests import render_chat

    model, tokenizer = load_model(tiny_model, ModelConfig()), load_tokenizer(tiny_model)
    texts = [render_chat(tokenizer, p.text) for p in PROMPTS[:3]]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    mask = enc["attention_mask"]
    ids, positions = enc["input_ids"], left_padded_positions(mask)
    caches = {"dynamic": DynamicCache(config=model.config), "reserved": reserved_cache(model, room=2)}
    with torch.inference_mode():
        for step in range(6):
            logits = {name: model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True).logits
                      for name, cache in caches.items()}
            assert torch.equal(logits["dynamic"], logits["reserved"]), step
            for plain, reserved in zip(caches["dynamic"].layers, caches["reserved"].layers):
                assert torch.equal(plain.keys, reserved.keys) and torch.equal(plain.values, reserved.values)
            ids = logits["dynamic"][:, -1:].argmax(-1)
            positions = positions[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones((len(ids), 1))], dim=1)
            if step == 3:  # the middle row ends and leaves the batch
                keep = torch.tensor([0, 2])
                for cache in caches.values():
                    cache.batch_select_indices(keep)
                ids, positions, mask = ids[keep], positions[keep], mask[keep]
    reserved = caches["reserved"].layers[0]
    assert reserved.key_buffer.shape[-2] >= reserved.length > enc["input_ids"].shape[1] + 2  # it outgrew its first room
    assert caches["reserved"].get_seq_length() == caches["dynamic"].get_seq_length() == enc["input_ids"].shape[1] + 5


def test_nucleus_sampling_draws_each_kept_token_at_its_probability():
    """``sample`` (one uniform number a row) against the distribution ``__call__`` leaves: the
    shortlist rows, a flat row past the shortlist (full sort) and top_p 1 (the whole vocabulary)."""
    import torch

    from tasks.sampling.nucleus import RowTemperatureNucleus, _draw

    torch.manual_seed(0)
    logits = torch.randn(3, 300) * 3
    logits[2] = torch.randn(300) * 0.05  # nearly flat: its nucleus is past a 16-token shortlist
    draws = 6000
    for top_p in (0.8, 1.0):
        nucleus = RowTemperatureNucleus(torch.tensor([0.7, 1.0, 1.3]).repeat_interleave(draws), top_p, shortlist=16)
        tokens = nucleus.sample(logits.repeat_interleave(draws, dim=0)).view(3, draws)
        expected = RowTemperatureNucleus(torch.tensor([0.7, 1.0, 1.3]), top_p, shortlist=16)(None, logits).softmax(-1)
        for row in range(3):
            seen = torch.bincount(tokens[row], minlength=300).float() / draws
            assert (seen[expected[row] == 0] == 0).all(), (top_p, row)  # nothing outside the nucleus
            # Each token's frequency within 5 standard errors of its probability.
            assert ((seen - expected[row]).abs() <= 5 * (expected[row] * (1 - expected[row]) / draws).sqrt() + 1e-3).all(), (top_p, row)
    # A uniform number at the very top of [0, 1) still lands on a token of positive weight.
    weights = torch.tensor([[0.5, 0.25, 0.25, 0.0, 0.0]])
    assert _draw(weights, torch.tensor([[1 - 2**-24]])).item() == 2
    assert _draw(weights, torch.tensor([[0.0]])).item() == 0
