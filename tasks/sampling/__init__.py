"""The sampling machinery of every stage that samples (the candidates, the pairwise eval's answers,
`flywheel compare`): the generation backends and the hand-written sampler of the ``hf`` one.

* ``requests``: what a backend is asked and answers (``SampleRequest``, ``Decoded``), the chat
  rendering, and the groupings of requests (a server's ``n`` samples, length-grouped batches).
* ``backends``: the ``SamplingBackend`` base, the backend registry (``BACKENDS``, ``open_backend``)
  and the ``hf`` backend (transformers in this process).
* ``openai_backend``: the ``openai`` backend (an OpenAI-compatible server).
* ``vllm_backend``: the ``vllm`` backend (vLLM's offline engine, GPU machines).
* ``decode``: the ``hf`` backend's batched sampler (``sample_batched``), its decoding loop, which
  drops ended rows, and the EOS handling.
* ``prefill``: left padding, and the prefill whose shared prompt tokens are encoded once.
* ``nucleus``: per-row temperature and nucleus (top-p) sampling from a top-k shortlist.
* ``kv_cache``: a KV cache written in place, with room reserved for the answer.

Nothing here imports a stage module (``tasks/generate.py``, ``tasks/evaluate.py``, ...): the stages
use the machinery, never the other way round. Importing the package, ``requests`` or ``backends``
loads no torch; the ``hf`` backend imports it when it opens.
"""
