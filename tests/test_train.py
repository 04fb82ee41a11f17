import math

import pytest
import torch
from safetensors.torch import load_file

from infra.records import PreferencePair
from infra.settings import ModelConfig, TrainConfig
from tasks.train import TrainJob, train_policy


def make_pairs(n):
    return [
        PreferencePair(
            prompt_id=str(i), prompt=f"Name a colour, number {i}.", chosen=f"Blue is a fine colour, {i}.",
            rejected=f"no no no no {i}", score_chosen=1.0, score_rejected=0.0, similarity=0.2,
        )
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    logged = []
    # Sigmoid DPO alone: the first loss is then known to be ln 2 (tests/test_recipe.py covers the NLL term).
    config = TrainConfig(epochs=2, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0,
                         nll_weight=0)
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(8), config=config, model=ModelConfig(), round_index=1,
                                   output_dir=out), lambda logs, step: logged.append((step, logs)))
    return out, result, logged


def test_loss_starts_at_ln2_and_stays_finite(trained):
    _, result, _ = trained
    # The reference is the adapter-disabled policy, identical at step 0.
    assert result.initial_loss == pytest.approx(math.log(2), abs=1e-3)
    assert all(math.isfinite(h["loss"]) for h in result.log_history if "loss" in h)
    assert result.n_steps == 4 and result.n_pairs == 8
    # Useful FLOP/s of the run and its share of the measured peak (tasks/training/flops.py).
    assert result.trained_tokens > 0 and result.achieved_tflops > 0 and 0 < result.mfu < 10


def test_trl_metrics_are_forwarded(trained):
    _, _, logged = trained
    keys = set().union(*(logs.keys() for _, logs in logged))
    assert {"loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= keys


def test_merged_checkpoint_differs_from_base(trained, tiny_model):
    out, result, _ = trained
    assert (out / "adapter" / "adapter_config.json").exists()
    base = load_file(f"{tiny_model}/model.safetensors")
    merged = load_file(str(out / "merged" / "model.safetensors"))
    assert base.keys() == merged.keys()
    changed = [k for k in base if not (base[k].float() - merged[k].float()).abs().max() == 0]
    assert changed, "merging the adapter changed no weight"
    assert result.final_reward_margin > 0


def test_training_figure_is_a_png_of_the_run(trained, tmp_path):
    from tasks.figures import training_figure

    _, result, _ = trained
    path = training_figure(result.log_history, tmp_path / "training.png", "tiny")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_diagnostics_on_constructed_histories():
    from tasks.training.diagnostics import training_alarms

    def step(loss, acc, chosen, rejected):
        return {"loss": loss, "rewards/accuracies": acc, "rewards/chosen": chosen, "rewards/rejected": rejected}

    healthy = [step(0.6931, 0.0, 0.0, 0.0), step(0.66, 0.6, 0.05, -0.05), step(0.6, 0.75, 0.1, -0.2), step(0.55, 0.8, 0.1, -0.3)]
    assert training_alarms(healthy) == []
    # A reference that is not the starting policy: the first loss is far from ln 2.
    wrong_ref = [step(0.41, 0.9, 0.5, -0.5)] + healthy[1:]
    assert [a.name for a in training_alarms(wrong_ref)] == ["reference_mismatch"]
    memorised = healthy[:2] + [step(0.1, 1.0, 0.1, -2.0), step(0.05, 1.0, 0.1, -3.0)]
    assert [a.name for a in training_alarms(memorised)] == ["overfitting"]
    flat = [step(0.6931, 0.0, 0, 0), step(0.6931, 0.5, 0, 0), step(0.6931, 0.4, 0, 0), step(0.6931, 0.5, 0, 0)]
    assert [a.name for a in training_alarms(flat)] == ["not_learning"]
    sinking = healthy[:3] + [step(0.5, 0.8, -1.0, -1.2)]
    assert [a.name for a in training_alarms(sinking)] == ["same_direction_drift"]


def test_real_run_starts_at_ln2_so_no_reference_alarm(trained):
    _, result, _ = trained
    assert "reference_mismatch" not in [a.name for a in result.alarms]


def _random_pairs(n, seed):
    """Pairs with no shared preference to learn: chosen and rejected are random words."""
    import random

    rng = random.Random(seed)
    words = "apple river stone cloud paper lamp green quick silver window music orange table forest".split()
    text = lambda: " ".join(rng.choice(words) for _ in range(8))  # noqa: E731
    return [PreferencePair(prompt_id=f"r{i}", prompt=f"Say something {i}.", chosen=text(), rejected=text(),
                           score_chosen=1.0, score_rejected=0.0, similarity=0.1) for i in range(n)]


def test_over_optimization_alarm_fires_when_memorising(tiny_model, tmp_path):
    # The last epoch kept, and no NLL term: the alarm itself, on a policy left to memorise.
    config = TrainConfig(epochs=8, batch_size=4, learning_rate=[1e-2], beta=[0.1], lora_r=8, lora_alpha=16, heldout_share=0.34,
                         nll_weight=0, keep_best_epoch=False)
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=_random_pairs(12, 0), config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                   output_dir=tmp_path))
    assert result.n_pairs == 8 and result.n_heldout == 4
    assert "over_optimization" in [a.name for a in result.alarms], [a.message for a in result.alarms]


def test_over_optimization_alarm_stays_quiet_when_the_preference_generalises(tiny_model, tmp_path):
    config = TrainConfig(epochs=3, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0.34)
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(12), config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                   output_dir=tmp_path))
    assert result.n_heldout == 4
    assert "over_optimization" not in [a.name for a in result.alarms], [a.message for a in result.alarms]


def test_a_non_finite_logged_figure_stops_training():
    """The guard raises at the first logged step with a NaN or infinite figure, naming them; the
    Trainer logs a NaN loss as a finite average, so the other figures must be looked at too."""
    from transformers import TrainerControl, TrainerState

    from tasks.training.callbacks import NonFiniteLoss, finite_guard

    guard, state = finite_guard(), TrainerState(global_step=3)
    guard.on_log(None, state, TrainerControl(), logs={"loss": 0.69, "grad_norm": 0.4, "epoch": 1.0})
    with pytest.raises(NonFiniteLoss, match=r"step 3: the loss diverged \(grad_norm, logps/chosen not finite\)"):
        guard.on_log(None, state, TrainerControl(), logs={"loss": 0.0, "grad_norm": float("nan"), "logps/chosen": float("-inf")})


def _uneven_pairs(n, seed):
    """Pairs whose chosen responses differ a lot in length, so that a micro-batch's token mean of
    the NLL term is not the batch's."""
    import random

    rng = random.Random(seed)
    words = "apple river stone cloud paper lamp green quick silver window music orange table forest".split()
    return [PreferencePair(prompt_id=f"u{i}", prompt=f"Describe thing {i}.",
                           chosen=" ".join(rng.choice(words) for _ in range(rng.choice((2, 6, 25, 40)))),
                           rejected=" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))),
                           score_chosen=1.0, score_rejected=0.0, similarity=0.1) for i in range(n)]


@pytest.mark.parametrize("objective", ["dpo", "simpo"])
def test_micro_batches_learn_what_the_whole_batch_does(objective, tiny_model, tmp_path):
    """Gradient accumulation over micro-batches (train.micro_batch_size) gives each optimizer step
    the whole batch's loss, NLL term included (weighed by the step's tokens, not per micro-batch),
    and so the same updates: the logged losses and terms of every step agree."""
    from tasks.training.dpo_args import trainer_args
    from tasks.training.objectives import objective_for

    pairs = _uneven_pairs(14, 3)  # 14 pairs: steps of 8 and 6 pairs (4 and 3 micro-batches of 2)
    runs = {}
    for micro in (None, 2):
        config = TrainConfig(objective=[objective], epochs=2, batch_size=8, micro_batch_size=micro, learning_rate=[5e-3],
                             beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0, nll_weight=1.0)
        args = trainer_args(config, 1, torch.device("cpu"), torch.float32, str(tmp_path), objective=objective_for(config, 1))
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == ((8, 1) if micro is None else (2, 4))
        result = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                       output_dir=tmp_path / str(micro)))
        runs[micro] = [h for h in result.log_history if "loss" in h and "train_loss" not in h]
    whole, micro = runs[None], runs[2]
    assert len(whole) == len(micro) == 4
    keys = ["loss", "rewards/margins", "rewards/accuracies"] + (["loss/nll", "loss/preference"] if objective == "dpo" else [])
    for a, b in zip(whole, micro):
        for key in keys:
            if key == "rewards/accuracies" and abs(a["rewards/margins"]) < 1e-4:
                continue  # the policy has not moved yet (step 1's rewards precede its update): each pair a tie, decided by rounding
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (key, a["step"])


def test_a_loaded_reference_is_freed_before_training(tiny_model, tmp_path, monkeypatch):
    """A reference that is not the starting policy (reference: initial, round 2 on) is a second
    model: once its log-probs are computed it must be gone, not held through training."""
    import shutil
    import weakref

    from tasks.training.trl_internals import flywheel_dpo_trainer

    trainer_class, seen = flywheel_dpo_trainer(), {}
    precompute, train = trainer_class._precompute_ref_logps, trainer_class.train

    def watch_reference(self, *args, **kwargs):
        if self.ref_model is not None:
            seen["reference"] = weakref.ref(self.ref_model)
        return precompute(self, *args, **kwargs)

    def note_alive(self, *args, **kwargs):
        seen["alive_at_train"] = seen["reference"]() is not None
        return train(self, *args, **kwargs)

    monkeypatch.setattr(trainer_class, "_precompute_ref_logps", watch_reference)
    monkeypatch.setattr(trainer_class, "train", note_alive)
    reference = shutil.copytree(tiny_model, tmp_path / "reference")
    config = TrainConfig(batch_size=2, lora_r=4, lora_alpha=8, heldout_share=0)
    result = train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(4), config=config, model=ModelConfig(dtype="fp32"), round_index=2,
                                   output_dir=tmp_path / "out", reference_checkpoint=str(reference)))
    assert not result.reference_is_start and "reference" in seen
    assert seen["alive_at_train"] is False


def test_auto_micro_batches_split_on_a_cpu_only():
    """'auto' takes 1-pair passes on a CPU in fp32 and 2-pair ones with bf16 (memory), and the whole
    batch on a GPU (a pass costs the same)."""
    from tasks.training.dpo_args import micro_batch_size
    from tasks.training.objectives import objective_for

    config = TrainConfig(batch_size=8)
    dpo = objective_for(config, 1)
    assert config.micro_batch_size == "auto"
    assert micro_batch_size(config, dpo, torch.device("cpu")) == 1  # fp32: a pair's activations are twice bf16's
    assert micro_batch_size(config, dpo, torch.device("cpu"), torch.bfloat16) == 2
    assert micro_batch_size(config, dpo, torch.device("cuda")) == 8
    assert micro_batch_size(config.model_copy(update={"micro_batch_size": 3}), dpo, torch.device("cuda")) == 2  # a divisor of 8
    assert micro_batch_size(config.model_copy(update={"micro_batch_size": None}), dpo, torch.device("cpu")) == 8


def test_reference_logps_kept_before_the_first_step_spare_a_rerun_its_pass(tiny_model, tmp_path, monkeypatch):
    """The reference pass's log-probs reach ``on_reference_logps`` before the first step, so a
    training killed at its first step has kept them: they equal a whole run's, and a rerun handed
    them makes no reference pass of its own."""
    import trl

    config = TrainConfig(epochs=1, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0.25, nll_weight=0)
    pairs = make_pairs(8)
    whole = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                  output_dir=tmp_path / "whole"))

    class Killed(Exception):
        pass

    def killed_at_first_step(logs, step):
        raise Killed

    kept = []
    with pytest.raises(Killed):
        train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                              output_dir=tmp_path / "killed"), killed_at_first_step, on_reference_logps=kept.append)
    [logps] = kept
    assert set(logps) == {"train", "eval"} and len(logps["train"][0]) == 6 and len(logps["eval"][0]) == 2
    def flat(rows):
        return [x for row in rows for x in row]

    assert flat(zip(*logps["train"])) == pytest.approx(flat(whole.reference_logps), abs=1e-5)
    assert flat(zip(*logps["eval"])) == pytest.approx(flat(whole.heldout_reference_logps), abs=1e-5)

    passes = []
    own_pass = trl.DPOTrainer._precompute_ref_logps

    def counted(self, *args, **kwargs):
        passes.append(args[1] if len(args) > 1 else kwargs.get("name"))
        return own_pass(self, *args, **kwargs)

    monkeypatch.setattr(trl.DPOTrainer, "_precompute_ref_logps", counted)
    handed_out = []
    rerun = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                  output_dir=tmp_path / "rerun", reference_logps=logps), on_reference_logps=handed_out.append)
    assert passes == [] and handed_out == []  # nothing computed, nothing to keep
    assert flat(rerun.reference_logps) == pytest.approx(flat(whole.reference_logps), abs=1e-5)
    assert rerun.final_loss == pytest.approx(whole.final_loss, abs=1e-4)


def test_step_sorted_sampler_orders_each_step_by_length_and_keeps_it_a_random_draw():
    """Every pair once an epoch; each step's pairs longest first; the steps themselves a seeded
    random draw (not the dataset cut in order), the same for the same seed and epoch, new the next."""
    from tasks.training.batching import StepSortedSampler

    lengths = [5, 40, 12, 33, 7, 21, 50, 9, 18, 2, 27]
    sampler = StepSortedSampler(lengths, step_size=4, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == sorted(second) == list(range(len(lengths)))
    steps = [first[i:i + 4] for i in range(0, len(first), 4)]
    assert [len(s) for s in steps] == [4, 4, 3]
    for step in steps:
        assert [lengths[i] for i in step] == sorted((lengths[i] for i in step), reverse=True)
    assert first != second  # a new order each epoch
    assert sorted(first) != first and any(set(s) != set(range(i * 4, i * 4 + len(s))) for i, s in enumerate(steps))
    again = StepSortedSampler(lengths, step_size=4, seed=3)
    assert list(again) == first
    again.set_epoch(0)
    assert list(again) == first  # set_epoch(e) gives epoch e's order


def _spy_on_reference_batches(monkeypatch):
    from tasks.training.trl_internals import flywheel_dpo_trainer

    trainer_class, widths = flywheel_dpo_trainer(), []
    compute = trainer_class.compute_ref_log_probs

    def spied(self, model, inputs):
        widths.append(inputs["input_ids"].shape[1])
        return compute(self, model, inputs)

    monkeypatch.setattr(trainer_class, "compute_ref_log_probs", spied)
    return widths


def test_reference_pass_over_length_sorted_pairs_returns_each_pairs_own_logps(tiny_model, tmp_path, monkeypatch):
    """The reference pass runs over the pairs longest first, in batches larger than training's,
    and hands back each pair's log-probs in the dataset's order: the same as TRL's own pass in
    dataset order, one small batch at a time."""
    import tasks.training.trl_internals as trl_internals

    pairs = _uneven_pairs(12, 5)
    config = TrainConfig(epochs=1, batch_size=4, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8, heldout_share=0, nll_weight=0)
    widths = _spy_on_reference_batches(monkeypatch)
    sorted_pass = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                                        output_dir=tmp_path / "sorted"))
    assert len(widths) == 1  # 12 pairs in one batch of at least 16
    plain_config = config.model_copy(update={"dpo_args": {"precompute_ref_batch_size": 2}})
    monkeypatch.setattr(trl_internals, "pair_lengths", lambda *args, **kwargs: None)
    widths.clear()
    plain_pass = train_policy(TrainJob(checkpoint=tiny_model, pairs=pairs, config=plain_config, model=ModelConfig(dtype="fp32"), round_index=1,
                                       output_dir=tmp_path / "plain"))
    assert len(widths) == 6 and widths != sorted(widths, reverse=True)  # the pairs are not in length order
    assert len(sorted_pass.reference_logps) == len(pairs)
    flat = [x for row in sorted_pass.reference_logps for x in row]
    assert flat == pytest.approx([x for row in plain_pass.reference_logps for x in row], abs=1e-4)
    assert len(set(round(x, 2) for x in flat)) > len(pairs)  # distinct pairs: a permutation would not match


def test_training_micro_batches_of_a_step_run_longest_first(tiny_model, tmp_path, monkeypatch):
    """Each optimizer step's micro-batches come in order of length, so pairs of like length are
    padded together."""
    from tasks.training.trl_internals import flywheel_dpo_trainer

    trainer_class, steps = flywheel_dpo_trainer(), []
    batch_samples = trainer_class.get_batch_samples

    def spied(self, *args, **kwargs):
        batches, n = batch_samples(self, *args, **kwargs)
        # One pair a micro-batch: its packed row's length (train.share_prompt), the prompt counted once.
        steps.append([int(b["attention_mask"].sum()) - int(b["completion_mask"][0].argmax()) + 1 for b in batches])
        return batches, n

    monkeypatch.setattr(trainer_class, "get_batch_samples", spied)
    config = TrainConfig(epochs=2, batch_size=4, micro_batch_size=1, learning_rate=[1e-3], beta=[0.1], lora_r=4, lora_alpha=8,
                         heldout_share=0, nll_weight=0)
    train_policy(TrainJob(checkpoint=tiny_model, pairs=_uneven_pairs(12, 7), config=config, model=ModelConfig(dtype="fp32"), round_index=1,
                          output_dir=tmp_path / "out"))
    assert len(steps) == 6 and all(len(s) == 4 for s in steps)
    assert all(s == sorted(s, reverse=True) for s in steps)
    assert len({tuple(s) for s in steps}) > 1


def test_cpu_lm_head_scores_only_labelled_positions_with_the_same_result(tiny_model, monkeypatch):
    """Under ``lm_head_tiles`` on a CPU, TRL's fused head projects only the positions with a label
    (the answer's tokens), not the prompt and padding: the same log-probs and gradients as scoring all."""
    import types

    import trl.trainer.utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from infra.models import load_model
    from tasks.training.trl_internals import lm_head_tiles

    model = load_model(tiny_model, ModelConfig())
    add_fused_lm_head(model)
    torch.manual_seed(0)
    input_ids = torch.randint(10, 1000, (2, 24))
    labels = input_ids.clone()
    labels[0, :15], labels[1, :9] = -100, -100  # prompts
    scored_rows = []
    original = trl_utils._ChunkedLogProbFunction
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction",
                        types.SimpleNamespace(apply=lambda hidden, *rest: scored_rows.append(len(hidden)) or original.apply(hidden, *rest)))

    def log_probs_and_grad():
        model.zero_grad()
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        out.log_probs.sum().backward()
        return out.log_probs.detach(), model.model.layers[0].mlp.down_proj.weight.grad.clone()

    everywhere = log_probs_and_grad()
    with lm_head_tiles(torch.device("cpu")):
        labelled_only = log_probs_and_grad()
    assert scored_rows == [2 * 23, (24 - 15) + (24 - 9)]  # every shifted position, then only the labelled ones
    assert torch.allclose(everywhere[0], labelled_only[0], atol=1e-5)
    assert (labelled_only[0][0, :14] == 0).all() and (labelled_only[0][0, 14:] != 0).all()
    assert torch.allclose(everywhere[1], labelled_only[1], atol=1e-6, rtol=1e-4)
    assert trl_utils._use_triton(torch.device("cpu")) is False  # restored after the block


def test_bf16_training_on_a_cpu_holds_the_frozen_base_in_bf16_and_merges_into_fp32(tiny_model, tmp_path, monkeypatch):
    """With bf16 on a CPU the frozen base is held in bf16 (autocast would round it so at every
    forward) and the adapter in fp32; the merged checkpoint is the adapter merged into a fresh fp32
    copy of the start, made after the trained model is released (its deltas would round away in bf16)."""
    import weakref

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import tasks.train as train_module
    from tasks.training.trl_internals import flywheel_dpo_trainer

    trainer_class, seen = flywheel_dpo_trainer(), {}
    train, merge = trainer_class.train, train_module.merge_fresh

    def note_dtypes(self, *args, **kwargs):
        seen["frozen"] = {p.dtype for p in self.model.parameters() if not p.requires_grad}
        seen["trained"] = {p.dtype for p in self.model.parameters() if p.requires_grad}
        seen["model"] = weakref.ref(self.model)
        return train(self, *args, **kwargs)

    def note_release(*args, **kwargs):
        seen["alive_at_merge"] = seen["model"]() is not None
        return merge(*args, **kwargs)

    monkeypatch.setattr(trainer_class, "train", note_dtypes)
    monkeypatch.setattr(train_module, "merge_fresh", note_release)
    config = TrainConfig(batch_size=2, learning_rate=[1e-3], lora_r=4, lora_alpha=8, heldout_share=0)
    out = tmp_path / "out"
    train_policy(TrainJob(checkpoint=tiny_model, pairs=make_pairs(4), config=config, model=ModelConfig(dtype="bf16"), round_index=1, output_dir=out))
    assert seen["frozen"] == {torch.bfloat16} and seen["trained"] == {torch.float32}
    assert seen["alive_at_merge"] is False
    merged = load_file(str(out / "merged" / "model.safetensors"))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    expected = PeftModel.from_pretrained(fresh, out / "adapter").merge_and_unload().state_dict()
    base = load_file(f"{tiny_model}/model.safetensors")
    assert {t.dtype for t in merged.values()} == {torch.float32}
    assert all(torch.equal(merged[k], expected[k]) for k in merged)
    assert any(not torch.equal(merged[k], base[k]) for k in merged), "merging the adapter changed no weight"
