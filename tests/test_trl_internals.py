"""The private TRL names tasks/training/trl_internals.py relies on: all there in the installed TRL,
and a TRL that moved one fails the check with that name, before any training runs."""

import types

import pytest

from tasks.training.trl_internals import TRAINER_METHODS, TRL_SERIES, TRLInternalsMoved, check_trl_internals, trl_internals_problems


def test_the_installed_trl_has_every_private_name_relied_on():
    import trl

    assert trl.__version__.startswith(TRL_SERIES + ".")  # pyproject pins this series
    assert trl_internals_problems() == []
    check_trl_internals()


def _stand_in_trainer(**changes):
    """A copy of DPOTrainer's surface, with ``changes`` (None: the name removed)."""
    from trl import DPOTrainer

    namespace = {name: getattr(DPOTrainer, name) for name in TRAINER_METHODS}
    namespace["__init__"] = DPOTrainer.__init__
    for name, value in changes.items():
        if value is None:
            del namespace[name]
        else:
            namespace[name] = value
    return type("DPOTrainer", (), namespace)


def _stand_in_utils(**changes):
    import trl.trainer.utils as trl_utils

    module = types.ModuleType("trl.trainer.utils")
    module._CHUNKED_LOGPROB_CHUNK_SIZE = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    module._use_triton = trl_utils._use_triton
    for name, value in changes.items():
        if value is None:
            delattr(module, name)
        else:
            setattr(module, name, value)
    return module


def test_the_stand_ins_pass_as_the_real_ones_do():
    assert trl_internals_problems(_stand_in_trainer(), _stand_in_utils()) == []


@pytest.mark.parametrize("name", sorted(TRAINER_METHODS))
def test_a_trainer_method_gone_is_named(name):
    with pytest.raises(TRLInternalsMoved, match=rf"trl\.DPOTrainer\.{name} is gone"):
        check_trl_internals(_stand_in_trainer(**{name: None}), _stand_in_utils())


def test_a_trainer_method_with_other_parameters_is_named():
    def renamed(self, dataset, split, batch_size):
        pass

    def longer(self, dataset, name, batch_size, device):
        pass

    for changed in (renamed, longer):
        with pytest.raises(TRLInternalsMoved, match=r"trl\.DPOTrainer\._precompute_ref_logps takes \(self, dataset, "):
            check_trl_internals(_stand_in_trainer(_precompute_ref_logps=changed), _stand_in_utils())


def test_an_attribute_the_trainer_no_longer_sets_is_named():
    def init(self, model, args=None):
        self.loss_types, self.loss_weights = ["sigmoid"], None

    with pytest.raises(TRLInternalsMoved, match=r"trl\.DPOTrainer\.__init__ no longer sets self\._metrics"):
        check_trl_internals(_stand_in_trainer(__init__=init), _stand_in_utils())


@pytest.mark.parametrize("name", ["_CHUNKED_LOGPROB_CHUNK_SIZE", "_use_triton"])
def test_a_module_attribute_gone_is_named(name):
    with pytest.raises(TRLInternalsMoved, match=rf"trl\.trainer\.utils\.{name} is gone"):
        check_trl_internals(_stand_in_trainer(), _stand_in_utils(**{name: None}))


def test_training_starts_with_the_check(monkeypatch, tmp_path):
    """train_policy runs the check before it loads anything: a moved name stops it, named."""
    import trl.trainer.utils as trl_utils

    from infra.settings import ModelConfig, TrainConfig
    from tasks.train import TrainJob, train_policy
    from tests.test_train import make_pairs

    monkeypatch.delattr(trl_utils, "_use_triton")
    job = TrainJob(checkpoint=str(tmp_path / "no-such-model"), pairs=make_pairs(4), config=TrainConfig(), model=ModelConfig(),
                   round_index=1, output_dir=tmp_path / "out")
    with pytest.raises(TRLInternalsMoved, match=r"trl\.trainer\.utils\._use_triton is gone"):
        train_policy(job)
