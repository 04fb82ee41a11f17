"""The command line stops on bad input before anything is written, naming what is wrong."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from flows.cli import main


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _written(workdir):
    return sorted(p.name for p in workdir.iterdir() if p.name not in {"config.yaml", "prompts.jsonl"})


def test_bad_config_value_names_the_field(workdir, capsys):
    (workdir / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": -1}, "generate": {"n_candidates": 1}}))
    assert main(["loop", "--config", "config.yaml"]) == 2
    err = capsys.readouterr().err
    assert "config.yaml" in err and "train.epochs" in err and "generate.n_candidates" in err
    assert _written(workdir) == []


def test_unknown_key_and_bad_override_are_named(workdir, capsys):
    assert main(["round", "--set", "judge.nmae=verifier"]) == 2
    assert "judge.nmae: unknown key" in capsys.readouterr().err
    assert main(["round", "--set", "prompts.n_train=lots"]) == 2
    assert "prompts.n_train" in capsys.readouterr().err
    assert _written(workdir) == []


def test_malformed_prompt_file_names_file_and_line(workdir, capsys):
    good = {"text": "Say hello.", "constraints": [{"id": "change_case:english_lowercase"}]}
    lines = [json.dumps(good), "{not json", json.dumps({"text": "Bye."})]
    (workdir / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["loop", "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "prompts.jsonl: line 2:" in err
    assert _written(workdir) == []


def test_unknown_constraint_in_prompt_file_is_refused(workdir, capsys):
    bad = {"text": "Say hello.", "constraints": [{"id": "change_case:shouting"}]}
    (workdir / "prompts.jsonl").write_text(json.dumps(bad) + "\n")
    assert main(["loop", "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl"]) == 2
    err = capsys.readouterr().err
    assert "prompts.jsonl" in err and "change_case:shouting" in err


def test_config_command_prints_the_merged_config(workdir, capsys):
    assert main(["config", "--set", "train.beta=[0.2, 0.3]"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["beta"] == [0.2, 0.3]
    assert printed["model"]["base"] == "smollm2-135m-instruct"


@pytest.mark.parametrize(
    "override, message",
    [
        ("judge.name=verifer", "judge.name: unknown judge 'verifer'; known: ifeval, llm, openai, verifier"),
        ("judge.compare_with=[verifier, opnai]", "judge.compare_with: unknown judge 'opnai'"),
        ("evaluate.judge=verifer", "evaluate.judge: unknown judge 'verifer'"),
        ("regression.tasks=[piqa, hellaswg]", "regression.tasks: unknown benchmark 'hellaswg'"),
        ("promotion.blocking_alarms=[overfiting]", "promotion.blocking_alarms: unknown alarm 'overfiting'"),
        ("train.dpo_args={label_smothing: 0.1}", "train.dpo_args.label_smothing: not a field of trl.DPOConfig"),
        ("train.dpo_args={beta: 0.5}", "train.dpo_args.beta: managed by Flywheel; set train.beta"),
        ("train.dpo_args={loss_type: [ipo]}", "train.dpo_args.loss_type: managed by Flywheel; set train.objective"),
        ("train.dpo_args={label_smoothing: 0.1}", "train.dpo_args.label_smoothing: managed by Flywheel; set train.robust"),
        ("train.objective=simpoo", "train.objective: unknown objective 'simpoo'"),
    ],
)
def test_unknown_names_stop_the_round_before_anything_is_written(workdir, capsys, override, message):
    data_dir = workdir / "data"
    assert main(["round", "--set", f"storage.data_dir={data_dir}", "--set", override]) == 2
    assert message in capsys.readouterr().err
    assert not data_dir.exists() and _written(workdir) == []


def test_every_problem_is_listed_at_once(workdir, capsys):
    assert main(["loop", "--set", "judge.name=verifer", "--set", "promotion.blocking_alarms=[nope]"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration (defaults + command-line overrides):" in err
    assert "  judge.name: unknown judge" in err and "  promotion.blocking_alarms: unknown alarm 'nope'" in err
    assert _written(workdir) == []


def test_prompt_file_not_utf8_names_file_and_line(workdir, capsys):
    good = json.dumps({"text": "Say hello.", "split": "train"}).encode()
    (workdir / "prompts.jsonl").write_bytes(good + b"\n" + '{"text": "Caf\u00e9 au lait."}'.encode("latin-1") + b"\n")
    data_dir = workdir / "data"
    assert main(["round", "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl", "--set", f"storage.data_dir={data_dir}"]) == 2
    err = capsys.readouterr().err
    assert "prompts.jsonl: line 2: not UTF-8 (byte 0xe9 at column 14)" in err and "Traceback" not in err
    assert not data_dir.exists() and _written(workdir) == []


@pytest.mark.parametrize("n_train, n_eval, expected", [
    (2, 2, ["prompts.n_train: prompts.jsonl holds 0 training and 3 held-out prompts; n_train=2 needs at least 2"]),
    (1, 5, ["prompts.n_train: prompts.jsonl holds 0 training and 3 held-out prompts; n_train=1 needs at least 1",
            "prompts.n_eval: prompts.jsonl holds 0 training and 3 held-out prompts; n_eval=5 needs at least 5"]),
])
def test_prompt_file_too_small_for_the_round_is_refused_with_counts(workdir, capsys, n_train, n_eval, expected):
    # Every prompt held out: the round would convert the model, pin a champion and open an MLflow
    # run before finding nothing to train on. It must stop first, with the counts.
    lines = [json.dumps({"text": f"Describe colour {i}.", "split": "eval"}) for i in range(3)]
    (workdir / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    data_dir = workdir / "data"
    args = ["round", "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl", "--set", f"storage.data_dir={data_dir}",
            "--set", f"prompts.n_train={n_train}", "--set", f"prompts.n_eval={n_eval}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert [line.strip() for line in err.splitlines()[1:]] == expected
    assert not data_dir.exists() and _written(workdir) == []


def test_builtin_prompts_too_few_for_n_eval_is_refused(workdir, capsys):
    data_dir = workdir / "data"
    assert main(["loop", "--set", "prompts.n_eval=100000", "--set", f"storage.data_dir={data_dir}"]) == 2
    err = capsys.readouterr().err
    assert "prompts.n_eval: the built-in prompt set holds" in err and "n_eval=100000 needs at least 100000" in err
    assert not data_dir.exists() and _written(workdir) == []


def test_ablation_options_are_checked_before_anything_runs(workdir, capsys):
    data_dir = workdir / "data"
    assert main(["ablate", "--objectives", "dpo,simpoo", "--set", f"storage.data_dir={data_dir}"]) == 2
    assert "unknown objective 'simpoo'" in capsys.readouterr().err
    assert main(["sweep-beta", "--values", "0.1,lots", "--set", f"storage.data_dir={data_dir}"]) == 2
    assert "lots" in capsys.readouterr().err
    assert main(["loop", "--adopt-ablation", "7", "--set", f"storage.data_dir={data_dir}"]) == 2
    assert "has no ablation 7" in capsys.readouterr().err


# --- conventions: version, exit codes, check, --json, --config -------------------------------------


def test_version_is_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"flywheel {version('flywheel')}"


def test_usage_and_config_errors_exit_with_the_tabled_code(workdir, capsys):
    from flows.exit_codes import USAGE_OR_CONFIG

    with pytest.raises(SystemExit) as exited:  # argparse's own usage error
        main(["loop", "--rounds", "two"])
    assert exited.value.code == USAGE_OR_CONFIG and "invalid int value" in capsys.readouterr().err
    assert main(["loop", "--set", "train.epochs=-1"]) == USAGE_OR_CONFIG  # a config error: the table says they share it
    assert "train.epochs" in capsys.readouterr().err
    assert _written(workdir) == []


def test_help_and_readme_show_the_exit_codes(capsys):
    from pathlib import Path

    from flows.cli import build_parser
    from flows.exit_codes import MEANINGS, exit_codes_markdown

    help_text = " ".join(build_parser().format_help().split())
    assert all(f"{code} {' '.join(meaning.split())}" in help_text for code, meaning in MEANINGS.items())
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert exit_codes_markdown() in readme, "README's exit-code table differs from flows/exit_codes.py"


def test_every_flag_has_help_and_every_command_an_example():
    from flows.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert parser.epilog and parser.epilog.startswith("examples:\n  flywheel"), name
        for action in parser._actions:
            assert action.help, f"flywheel {name} {action.option_strings or action.dest}: no help text"


def test_check_writes_nothing_on_an_empty_data_folder(workdir, capsys, monkeypatch):
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FLYWHEEL_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    data_dir = workdir / "data"
    assert main(["check", "--set", f"storage.data_dir={data_dir}"]) == 0
    out = capsys.readouterr().out
    assert "config: valid" in out and "inputs: readable" in out and "services: ok" in out
    assert not data_dir.exists() and _written(workdir) == []


def test_check_names_a_service_that_does_not_answer(workdir, capsys, monkeypatch):
    import flows.preflight
    from flows.exit_codes import SERVICE_DOWN

    monkeypatch.setattr(flows.preflight, "ANSWER_WITHIN_S", 0)
    data_dir = workdir / "data"
    assert main(["check", "--set", f"storage.data_dir={data_dir}", "--set", "storage.tracking_uri=http://127.0.0.1:9"]) == SERVICE_DOWN
    assert "the MLflow tracking server does not answer at http://127.0.0.1:9" in capsys.readouterr().err
    assert not data_dir.exists() and _written(workdir) == []


def test_check_refuses_a_bad_prompt_file(workdir, capsys):
    (workdir / "prompts.jsonl").write_text("{not json\n")
    assert main(["check", "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl"]) == 2
    assert "prompts.jsonl: line 1:" in capsys.readouterr().err


def test_history_json_parses(workdir, capsys):
    from flows.round_records import RoundSummary, append_history
    from infra.local_store import LocalArtifactStore

    data_dir = workdir / "data"
    assert main(["history", "--json", "--set", f"storage.data_dir={data_dir}"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    store = LocalArtifactStore(str(data_dir / "artifacts"))
    append_history(store, RoundSummary(loop="default", round=1, champion_before=0, pairs_kept=3, promoted=False, reasons=["lost"]))
    assert main(["history", "--json", "--set", f"storage.data_dir={data_dir}"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["round"], r["promoted"], r["reasons"]) for r in rows] == [(1, False, ["lost"])]


def test_compare_json_is_the_comparison_record(workdir, capsys, monkeypatch):
    import flows.compare
    import flows.preflight
    from flows.comparison_records import Comparison
    from tasks.evaluate import PairwiseResult

    result = PairwiseResult(n=4, wins=3, ties=0, losses=1, win_rate=0.75, win_rate_low=0.5, win_rate_high=1.0, consistency_rate=1.0,
                            champion_constraint_rate=0.5, challenger_constraint_rate=0.75, champion_strict_rate=0.5,
                            challenger_strict_rate=0.75)
    record = Comparison(loop="default", challenger_round=2, baseline_round=0, n_prompts=4, result=result, artifacts="somewhere")
    monkeypatch.setattr(flows.preflight, "check_services", lambda config: None)
    monkeypatch.setattr(flows.compare, "compare_rounds", lambda **kwargs: record)
    assert main(["compare", "--json", "--set", f"storage.data_dir={workdir / 'data'}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["challenger_round"] == 2 and printed["result"]["win_rate"] == 0.75


def test_trigger_takes_config_and_its_alias_and_renders_json():
    from types import SimpleNamespace

    from flows.cli import build_parser
    from flows.operate import trigger_markdown, trigger_record

    for flag in ("--config", "--config-file"):
        args = build_parser().parse_args(["trigger", flag, "configs/demo.yaml", "--set", "train.beta=[0.2]", "--json"])
        assert (args.config_file, args.overrides, args.json) == ("configs/demo.yaml", ["train.beta=[0.2]"], True)
    state = SimpleNamespace(name="Completed", message=None, is_completed=lambda: True)
    record = trigger_record(SimpleNamespace(name="brisk-otter", id="1234", state=state), "# default round 1: PROMOTED")
    assert json.loads(json.dumps(record)) == {"flow_run": "brisk-otter", "flow_run_id": "1234", "state": "Completed",
                                              "completed": True, "message": None, "summary": "# default round 1: PROMOTED"}
    assert trigger_markdown(record) == "## Flywheel: brisk-otter (Completed)\n\n# default round 1: PROMOTED"
    failed = trigger_record(SimpleNamespace(name="slow-owl", id="5", state=None), None)
    assert trigger_markdown(failed) == "## Flywheel: slow-owl (unknown)\n\nThe run did not complete: no state"


def test_deploy_config_is_checked_and_named_from_the_repository(workdir, capsys, monkeypatch):
    from flows.operate import REPO, scheduled_config

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert scheduled_config("configs/demo.yaml") == "configs/demo.yaml"  # from any folder: relative to the checkout
    assert scheduled_config(str(REPO / "configs/proof.yaml")) == "configs/proof.yaml"
    assert main(["deploy", "--config", "missing.yaml"]) == 2 and "missing.yaml: no such file" in capsys.readouterr().err
    (workdir / "config.yaml").write_text(yaml.safe_dump({"train": {"epochs": -1}}))
    assert main(["deploy", "--config", "config.yaml"]) == 2 and "train.epochs" in capsys.readouterr().err
    (workdir / "good.yaml").write_text(yaml.safe_dump({"loop": "nightly"}))
    assert scheduled_config("good.yaml") == str((workdir / "good.yaml").resolve())  # outside the checkout: absolute


def test_a_prompt_longer_than_the_context_is_refused_with_file_and_line(workdir, capsys):
    # 50,000 words cannot fit the bundled model's 8,192 tokens whatever the tokenizer: refused
    # at load, not by the generate stage trying to allocate the attention for it.
    short = {"text": "Say hello.", "split": "train", "constraints": [{"id": "change_case:english_lowercase"}]}
    huge = {"text": " ".join(["word"] * 50_000), "split": "train"}
    lines = [short, {**short, "text": "Say bye.", "split": "eval"}, huge]
    (workdir / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    data_dir = workdir / "data"
    args = ["round", "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl", "--set", f"storage.data_dir={data_dir}",
            "--set", "prompts.n_train=1", "--set", "prompts.n_eval=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert ("prompts: prompts.jsonl: line 3: the prompt is at least 50000 tokens long, more than the 8032 left for a prompt "
            "(the model's context is 8192 tokens and generate.max_new_tokens keeps 160 for the answer)") in err
    assert "Traceback" not in err and len(err.splitlines()) == 2
    assert not data_dir.exists() and _written(workdir) == []


def test_a_prompt_between_the_bounds_is_counted_with_the_tokenizer(workdir, capsys, tiny_model):
    # The tiny model's context is 1,024 tokens; 16 left for answers leaves 1,008 for a prompt.
    # 300 long words are far fewer than 1,008 but several tokens each: only the tokenizer can tell.
    long_words = " ".join(["antidisestablishmentarianism"] * 300)
    lines = [{"text": f"Say hello {i}.", "split": split, "constraints": [{"id": "change_case:english_lowercase"}]}
             for i, split in enumerate(["train", "eval"])] + [{"text": long_words, "split": "train"}]
    (workdir / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    args = ["round", "--set", f"model.base={tiny_model}", "--set", "generate.max_new_tokens=16", "--set", "evaluate.max_new_tokens=16",
            "--set", "prompts.source=jsonl", "--set", "prompts.path=prompts.jsonl", "--set", "prompts.n_train=1",
            "--set", "prompts.n_eval=1", "--set", f"storage.data_dir={workdir / 'data'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"prompts.jsonl: line 3: the prompt is \d{4} tokens long, more than the 1008 left for a prompt "
                     r"\(the model's context is 1024 tokens and generate.max_new_tokens keeps 16 for the answer\)", err), err


def test_a_hub_id_not_downloaded_stops_the_cli_offline(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data_dir = workdir / "data"
    assert main(["round", "--set", "model.base=flywheel-tests/no-such-model-in-the-cache", "--set", f"storage.data_dir={data_dir}"]) == 2
    err = capsys.readouterr().err
    assert "hf download flywheel-tests/no-such-model-in-the-cache" in err and "Traceback" not in err
    assert not data_dir.exists() and _written(workdir) == []


def test_proof_refuses_no_seeds_or_rounds_before_anything_runs(workdir, capsys):
    from flows.exit_codes import USAGE_OR_CONFIG

    assert main(["proof", "--seeds", "0"]) == USAGE_OR_CONFIG
    assert "--seeds and --rounds must be at least 1 (got 0 and 1)" in capsys.readouterr().err
    assert main(["proof", "--rounds", "0", "--seeds", "2"]) == USAGE_OR_CONFIG
    assert _written(workdir) == []
