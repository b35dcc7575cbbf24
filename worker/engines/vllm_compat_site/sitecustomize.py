"""Imported at start-up by interpreters whose PYTHONPATH names this folder (set by `worker.vllm_compat`).

The interpreters vLLM starts (its multiprocessing-spawned engine core and workers, `python -m vllm...` helpers
such as the model-registry inspection) import torchvision before any vlmbatch code runs in them. Others
that merely inherit the environment skip install() and the ~2 s torch import it costs.
"""

import sys

if any(arg == "--multiprocessing-fork" or "vllm" in arg for arg in sys.orig_argv):
    try:
        from vlmbatch.worker.engines.vllm_compat import install
    except ImportError:  # an interpreter without vlmbatch on its path
        pass
    else:
        install()
