"""Imported at start-up by interpreters whose PYTHONPATH names this folder (set by `worker.vllm_compat`).

vLLM's spawned engine processes import torchvision before any vlmbatch code runs in them.
"""

try:
    from worker.vllm_compat import install
except ImportError:  # an unrelated interpreter that inherited the environment
    pass
else:
    install()
