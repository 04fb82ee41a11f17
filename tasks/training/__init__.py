"""The training machinery the train stage (tasks/train.py) runs; nothing here imports a stage module.

- ``dpo_args``: the round's TRL config (trl.DPOConfig for the DPO family) and LoRA config, and the
  TRL keys Flywheel manages (``MANAGED_DPO_ARGS``).
- ``objectives``: the preference objectives by name (``train.objective``), each an adapter from
  Flywheel's pairs to the TRL trainer and config that implements it.
- ``training_set``: the held-out split, replay of earlier rounds' pairs, the rows as datasets.
- ``trl_internals``: every use of a private TRL name: Flywheel's DPOTrainer (its overrides) and the
  fused LM head's CPU tiles; ``check_trl_internals`` names what moved in another TRL.
- ``batching``: pairs of like length in one forward pass (padded lengths, a length-sorted step sampler).
- ``packed_pairs``: a pair's two rows packed into one, its prompt computed once for both answers.
- ``reference``: the reference's log-probs, where training starts against it, freeing it.
- ``checkpoints``: the dtype the frozen base is held in; the adapter and merged checkpoint saved.
- ``callbacks``: each logged step forwarded; training stopped at a non-finite figure (``NonFiniteLoss``).
- ``flops``: achieved FLOP/s and MFU of training.
- ``diagnostics``: the training alarms read off TRL's per-step log.
"""
