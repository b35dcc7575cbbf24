"""The smoke model: a tiny random-weight model of Skywork-R1V3's architecture that the project builds
itself (tests, the demo, benchmarks; `vlmbatch smoke-model DIR`)."""

from vlmbatch.worker.smoke_model.builder import build_model_folder
from vlmbatch.worker.smoke_model.shapes import R1V3_38B, TINY, ModelShape

__all__ = ["R1V3_38B", "TINY", "ModelShape", "build_model_folder"]
