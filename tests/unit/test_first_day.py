"""The first day's settings: engine arguments honoured or refused by name, vLLM's CPU build sized from the
machine, engine start failures explained in one line, and progress as plain lines."""

from __future__ import annotations

import json
import logging
import logging.config
import subprocess
import sys
from pathlib import Path

import pytest

from vlmbatch.schema.contracts.errors import ConfigurationError
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.arg_names import did_you_mean
from vlmbatch.worker.engines.cpu_build import (
    KV_CACHE_CAP_BYTES,
    available_memory_bytes,
    default_kv_cache_bytes,
    prepare_cpu_environment,
    thread_binding,
)
from vlmbatch.worker.engines.engine_args import (
    apply_engine_args,
    check_engine_settings,
    engine_args,
)
from vlmbatch.worker.engines.engine_logs import vllm_logging_config
from vlmbatch.worker.engines.start_failure import GiB, Machine, explain
from vlmbatch.worker.telemetry.log_format import JsonFormatter
from vlmbatch.worker.telemetry.progress_log import Every, ProgressSnapshot, log_progress


def test_engine_arg_names_are_read_from_vllms_source_without_importing_it() -> None:
    # In a fresh interpreter: an earlier test of the suite may have imported vLLM into this one.
    child = (
        "import json, sys, time\n"
        "from vlmbatch.worker.engines.arg_names import engine_arg_names\n"
        "started = time.perf_counter()\n"
        "names = engine_arg_names()\n"
        "print(json.dumps({'seconds': time.perf_counter() - started, 'names': sorted(names or ()),\n"
        "                  'imported': sorted(m for m in sys.modules if m.startswith('vllm'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(done.stdout)
    assert report["seconds"] < 5  # generous: the point is no 10 s import
    assert {"kv_cache_memory_bytes", "seed", "quantization", "kv_cache_dtype"} <= set(report["names"])
    assert report["imported"] == []


def test_an_unknown_engine_argument_is_refused_with_the_closest_name() -> None:
    with pytest.raises(ConfigurationError, match=r"kv_cache_dtipe \(did you mean kv_cache_dtype\?\)"):
        check_engine_settings(Settings(engine="vllm", model="m", engine_args={"kv_cache_dtipe": "fp8"}))
    assert did_you_mean("nothing_like_any", frozenset({"seed"})) is None


@pytest.mark.parametrize(
    ("key", "value", "field"),
    [
        ("kv_cache_memory_bytes", 123456789, "kv_cache_bytes"),
        ("seed", 7, "seed"),
        ("gpu_memory_utilization", 0.5, "gpu_memory_utilization"),
        ("quantization", "fp8", "quantization"),
        ("kv_cache_dtype", "fp8", "kv_cache_dtype"),
        ("load_format", "dummy", "load_format"),
        ("reasoning_parser", "deepseek_r1", "reasoning_parser"),
    ],
)
def test_an_engine_argument_a_setting_also_sets_is_honoured(key: str, value: object, field: str) -> None:
    settings, warnings = apply_engine_args(Settings(model="m"), {key: value})
    assert warnings == []
    assert getattr(settings, field) == value
    if key != "reasoning_parser":  # the engine resolves the parser itself (auto, none)
        assert engine_args(Settings(model="m", engine_args={key: value}))[key] == value


def test_the_image_limit_and_other_engine_args_pass_through() -> None:
    settings, warnings = apply_engine_args(
        Settings(model="m"),
        {"limit_mm_per_prompt": {"image": 2}, "mm_processor_kwargs": {"max_dynamic_patch": 6, "x": 1}, "swap_space": 1},
    )
    assert warnings == []
    args = engine_args(settings)
    assert args["limit_mm_per_prompt"] == {"image": 2}
    assert args["mm_processor_kwargs"] == {"x": 1, "max_dynamic_patch": 6}
    assert args["swap_space"] == 1


def test_a_flag_given_too_wins_and_the_warning_names_the_flag() -> None:
    settings, warnings = apply_engine_args(Settings(model="m", seed=3), {"seed": 9, "model": "other"})
    assert settings.seed == 3
    assert any("--seed sets it" in w for w in warnings)
    assert any("use --model" in w for w in warnings)


def test_the_cpu_kv_cache_is_a_capped_share_of_free_memory_split_between_ranks() -> None:
    assert default_kv_cache_bytes(8 * GiB, 1) == 2 * GiB
    assert default_kv_cache_bytes(8 * GiB, 2) == GiB
    assert default_kv_cache_bytes(100 * GiB, 1) == KV_CACHE_CAP_BYTES
    assert default_kv_cache_bytes(None, 1) is None


def test_available_memory_is_the_smaller_of_the_kernels_and_the_cgroups(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text("MemTotal: 100 kB\nMemAvailable:    8388608 kB\n")
    cgroup = tmp_path / "cg"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{4 * GiB}\n")
    (cgroup / "memory.current").write_text(f"{GiB}\n")
    assert available_memory_bytes(tmp_path / "meminfo", cgroup) == 3 * GiB
    (cgroup / "memory.max").write_text("max\n")
    assert available_memory_bytes(tmp_path / "meminfo", cgroup) == 8 * GiB


def test_tensor_parallel_ranks_get_one_core_set_each() -> None:
    assert thread_binding([0, 1], 2) == "0|1"
    assert thread_binding([2, 3, 4, 5, 6], 2) == "2,3,4|5,6"
    with pytest.raises(ValueError, match="need as many CPU cores"):
        thread_binding([0], 2)
    environ: dict[str, str] = {}
    prepare_cpu_environment(environ, ranks=2, cores=[0, 1, 2, 3])
    assert environ == {"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"}
    chosen = {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}
    prepare_cpu_environment(chosen, ranks=2, cores=[0, 1, 2, 3])
    assert chosen["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    single: dict[str, str] = {}
    prepare_cpu_environment(single, ranks=1, cores=[0, 1])
    assert single == {}


H100 = Machine(weights_bytes=None, gpu_bytes=int(79.2 * GiB), gpus=1, cpu_build=False)
R1V3_BF16_LOG = """(EngineCore pid=1) INFO Model loading took 71.8 GiB memory and 40.1 seconds
ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when initializing
RuntimeError: Engine core initialization failed. See root cause above."""


def test_no_room_for_a_kv_cache_on_a_gpu_names_sizes_and_options(tmp_path: Path) -> None:
    log_file = tmp_path / "run-1.log"
    line = explain(R1V3_BF16_LOG, model="/m", max_model_len=32768, tp=1, machine=H100, fallback="x", log_file=log_file)
    assert "\n" not in line
    assert "the weights are 71.8 GiB" in line and "each GPU has 79.2 GiB" in line
    assert "--tensor-parallel-size 2" in line
    assert "--engine-arg quantization=fp8" in line
    assert "smaller --max-model-len than 32,768" in line
    assert line.endswith(f"(vLLM's log: {log_file})")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ValueError: To serve at least one request with the model's max seq len (8192), (0.50 GiB KV cache is "
            "needed, which is larger than the available KV cache memory (0.06 GiB). Based on the available memory, "
            "the estimated maximum model length is 1024. Try increasing",
            "cannot hold one sequence of max_model_len 8,192 tokens (0.50 GiB): pass a smaller --max-model-len "
            "(about 1,024 fit), or a larger --kv-cache-memory-bytes",
        ),
        ("RuntimeError: Found no NVIDIA driver on your system.", "no usable GPU"),
        (
            "ValueError: The repository /m contains custom code which must be executed ... trust_remote_code=True",
            "ships its own code: pass --trust-remote-code",
        ),
        (
            "ValueError: Model architectures ['FancyVLM'] are not supported for now. Supported architectures: ...",
            "does not know the model architecture FancyVLM",
        ),
    ],
)
def test_engine_start_failures_name_cause_and_fix(text: str, expected: str) -> None:
    cpu = Machine(weights_bytes=None, gpu_bytes=None, gpus=0, cpu_build=True)
    line = explain(text, model="/m", max_model_len=None, tp=1, machine=cpu, fallback="fallback", log_file=None)
    assert expected in line and "\n" not in line


def test_an_unrecognised_failure_keeps_vllms_first_line() -> None:
    cpu = Machine(weights_bytes=None, gpu_bytes=None, gpus=0, cpu_build=True)
    line = explain("Oops", model="/m", max_model_len=None, tp=1, machine=cpu, fallback="vLLM said: Oops", log_file=None)
    assert line == "vLLM said: Oops"


def test_vllms_logging_config_keeps_the_terminal_for_warnings_only_when_verbose(tmp_path: Path) -> None:
    quiet = vllm_logging_config(tmp_path / "x.log", verbose=False)
    loud = vllm_logging_config(tmp_path / "x.log", verbose=True)
    assert quiet["loggers"] == {"vllm": {"handlers": ["file"], "level": "INFO", "propagate": False}}
    assert loud["handlers"]["terminal"]["level"] == "WARNING"  # type: ignore[index]
    logging.config.dictConfig(json.loads(json.dumps(quiet)))  # a valid dictConfig
    logging.getLogger("vllm").handlers[0].close()


def test_a_progress_line_and_its_json_fields_say_the_same() -> None:
    snapshot = ProgressSnapshot(
        done=120, total=400, jobs_per_second=2.5, tokens_per_second=812.0, eta_seconds=112.0,
        errors={"input.unreadable": 2, "timeout": 1},
    )  # fmt: skip
    line = snapshot.line("run-a")
    assert line == (
        "run-a: 120/400 done (30.0%), 2.50 jobs/s, 812 output tok/s, ETA 01:52, errors: input.unreadable 2, timeout 1"
    )
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("vlmbatch.progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        log_progress("run-a", snapshot)
    finally:
        logger.removeHandler(handler)
    entry = json.loads(JsonFormatter().format(records[0]))
    assert entry["message"] == line
    assert entry["progress"]["done"] == 120 and entry["progress"]["errors"] == {"input.unreadable": 2, "timeout": 1}
    assert entry["progress"]["eta_seconds"] == 112.0


def test_every_is_due_once_per_period_by_its_clock() -> None:
    now = [0.0]
    every = Every(30, clock=lambda: now[0])
    seen = []
    for t in (0, 10, 29, 30, 45, 61):
        now[0] = t
        seen.append(every.due())
    assert seen == [True, False, False, True, False, True]


def test_a_log_line_never_lands_inside_the_progress_bar() -> None:
    import io

    from vlmbatch.producer.cli.progress import BarStream

    terminal = io.StringIO()
    stream = BarStream(terminal)
    stream.draw("run [####......] 40%")
    stream.write("model ready\n")  # a log record while the bar is shown
    stream.draw("run [########..] 80%")
    stream.end_bar()
    shown = terminal.getvalue()
    # The bar's line is cleared before the log line, which keeps a line of its own; the bar comes back below.
    assert shown == ("\r\x1b[2Krun [####......] 40%\r\x1b[2Kmodel ready\n\r\x1b[2Krun [########..] 80%\n")


def test_the_token_rate_is_measured_over_a_trailing_window() -> None:
    from vlmbatch.producer.cli.progress import TOKEN_WINDOW_S, TokenRate

    now = [0.0]
    rate = TokenRate(lambda: now[0])
    assert rate.update(0) is None
    now[0] = 10.0
    assert rate.update(1000) == 100.0
    now[0] = TOKEN_WINDOW_S + 20
    assert rate.update(1000) is not None and rate.update(1000) < 100.0  # nothing new: the rate falls
