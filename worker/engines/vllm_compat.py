"""Let vLLM's CPU build import beside PyPI's CUDA builds of torchvision, torchaudio and torchcodec.

Next to a `+cpu` torch their native libraries fail to load (they need libc10_cuda.so / libnvrtc.so):
`import torchvision` dies with `operator torchvision::nms does not exist`, and transformers / vLLM die
importing torchaudio / torchcodec. vLLM's InternVL/Skywork image processor needs only the pure-Python
`torchvision.transforms`, and audio is never used here. Inactive with a CUDA or ROCm torch.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import cast

# The native library each package loads at import: if it cannot load, neither can the package.
_NATIVE_LIBRARIES = {
    "torchvision": "_C*.so",
    "torchaudio": "lib/_torchaudio*.so",
    "torchcodec": "libtorchcodec_image*.so",
}
# The ops torchvision registers fake kernels for at import (torchvision/_meta_registrations.py), which fails
# unless they exist. Defined without kernels: calling them still fails, as it would without the library.
_TORCHVISION_OPS = ("torchvision::nms", "torchvision::qnms")
_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
# vLLM runs its engine core (and workers) in spawned interpreters, which inherit the environment but not our
# imports: a `sitecustomize` in this folder, put on PYTHONPATH, calls install() there before any import.
HOOK_DIR = Path(__file__).with_name("vllm_compat_site")

_installed = False


def install() -> None:
    """Make the CUDA-only torchvision/torchaudio/torchcodec builds importable or absent, here and in children.

    Call it before importing torchvision, transformers or vllm. Idempotent; does nothing unless torch is a
    CPU build, and leaves alone any package whose native library loads.
    """
    global _installed
    if _installed:
        return
    _installed = True
    import torch

    if torch.version.cuda is not None or torch.version.hip is not None:
        return
    broken = [
        name
        for name, pattern in _NATIVE_LIBRARIES.items()
        if name not in sys.modules and not _native_library_loads(name, pattern)
    ]
    if broken:
        _expose_to_children()
    for name in broken:
        if name == "torchvision":
            for op in _TORCHVISION_OPS:
                torch.library.define(op, _NMS_SCHEMA)  # torch keeps the defining library alive
        else:
            # None in sys.modules: find_spec() says "not installed" and `import` raises ImportError, which
            # is how transformers and vLLM probe for optional audio backends.
            cast(dict[str, ModuleType | None], sys.modules)[name] = None
    # transformers caches its "is X available" answers: any given before install() would now be stale.
    if broken and (import_utils := sys.modules.get("transformers.utils.import_utils")) is not None:
        for probe in ("is_torchaudio_available", "is_speech_available", "is_torchcodec_available"):
            getattr(getattr(import_utils, probe, None), "cache_clear", lambda: None)()


def _native_library_loads(package: str, pattern: str) -> bool:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return True  # not installed: nothing to fix
    libraries = sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern))
    if not libraries:
        return True
    try:
        ctypes.CDLL(str(libraries[0]))  # the same dlopen the package would do, torch's libraries already loaded
    except OSError:
        return False
    return True


def _expose_to_children() -> None:
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(HOOK_DIR) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HOOK_DIR), *paths])
