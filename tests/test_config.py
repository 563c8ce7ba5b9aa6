"""Tests for stream_server.config: the project's config.toml, types, ranges and error keys."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest

from stream_server import config as config_module
from stream_server.config import (
    PROJECT_CONFIG,
    Config,
    EngineConfig,
    GateConfig,
    ModelConfig,
    OfflineConfig,
    ServerConfig,
    SmoothingConfig,
    StorageConfig,
    UpdatesConfig,
    config_from_dict,
    field_checks,
    load_config,
)
from stream_server.errors import ConfigError, GenrecastError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


# --------------------------------------------------------------------------- the shipped file


def test_project_config_lists_every_key_with_the_dataclass_default() -> None:
    raw = tomllib.loads(PROJECT_CONFIG.read_text(encoding="utf-8"))
    defaults = Config()
    table_names = [f.name for f in dataclasses.fields(Config)]
    assert sorted(raw) == sorted(table_names)
    for name in table_names:
        table = getattr(defaults, name)
        keys = [f.name for f in dataclasses.fields(table)]
        assert sorted(raw[name]) == sorted(keys), name
        for key in keys:
            assert raw[name][key] == getattr(table, key), f"{name}.{key}"
            # same TOML type as the annotation (an int default written as 20 for a float
            # key would still load, but the file should show the real type)
            hint = typing.get_type_hints(type(table))[key]
            if hint in (int, float, bool, str):
                assert type(raw[name][key]) is hint, f"{name}.{key}"


def test_load_project_config_equals_defaults() -> None:
    assert load_config(PROJECT_CONFIG) == Config()
    assert load_config() == Config()


def test_no_path_and_no_project_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "PROJECT_CONFIG", tmp_path / "absent.toml")
    assert load_config() == Config()


def test_defaults_of_each_table() -> None:
    c = Config()
    assert c.server == ServerConfig(
        "127.0.0.1", 8000, 1 << 20, 8000, 384_000, 8, 64, 16, 5.0, 30.0, "info", False, 10.0
    )
    assert c.model == ModelConfig("", {})
    assert c.engine == EngineConfig("auto", True, 32, 20.0, 1.0, 0.0, 0.0, 2.0, 0.0, 256, 3)
    assert c.smoothing == SmoothingConfig(2.0, 0.2, 4.0, 0.5, 30.0)
    assert c.gate == GateConfig(True, -65.0, 0.8, 1.0)
    assert c.offline == OfflineConfig("viterbi", 16.0)
    assert c.updates == UpdatesConfig(256, 4096)
    assert c.storage == StorageConfig("genrecast.db", 30.0)


def test_a_table_gives_its_cores_parameters_with_the_values_read() -> None:
    """Each core's parameters are defined once, in the config: the table extends them, and
    ``params()`` gives the core exactly the values the file set."""
    from stream_server.core.decoding import OfflineParams
    from stream_server.core.gate import GateParams
    from stream_server.core.smoothing import SmoothingParams

    c = config_from_dict(
        {
            "smoothing": {"min_dwell_s": 7.0, "backdate_max_s": 3.0},
            "gate": {"silence_dbfs": -50.0, "speech_model": "none"},
            "offline": {"decoding": "live", "switch_cost": 2.5},
        }
    )
    assert c.smoothing.params() == SmoothingParams(min_dwell_s=7.0)
    assert c.gate.params() == GateParams(silence_dbfs=-50.0)
    assert c.offline.params() == OfflineParams("live", 2.5)
    for table, core in (
        (c.smoothing, SmoothingParams),
        (c.gate, GateParams),
        (c.offline, OfflineParams),
    ):
        assert isinstance(table, core) and type(table.params()) is core


@pytest.mark.parametrize(
    ("core", "changes", "needle"),
    [
        ("smoothing", {"switch_margin": 1.5}, "switch_margin"),
        ("gate", {"silence_dbfs": 3.0}, "silence_dbfs"),
        ("offline", {"decoding": "forward"}, "decoding"),
    ],
)
def test_core_parameters_check_their_ranges_when_built(
    core: str, changes: dict[str, object], needle: str
) -> None:
    from stream_server.config import GateParams, OfflineParams, SmoothingParams

    cls = {"smoothing": SmoothingParams, "gate": GateParams, "offline": OfflineParams}[core]
    with pytest.raises(ValueError, match=needle):
        cls(**changes)


def test_empty_file_and_empty_tables_give_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "[server]\n[engine]\n[model.labels]\n")) == Config()


def test_values_are_read_and_missing_keys_default(tmp_path: Path) -> None:
    text = """
[server]
port = 9001
host = "0.0.0.0"

[engine]
device = "cuda:1"
max_wait_ms = 5
hop_s = 0.25
half_precision = false

[model]
path = "/models/gtzan"

[model.labels]
hiphop = "hip-hop"
rnb = "R&B"
"""
    c = load_config(write(tmp_path, text))
    assert (c.server.port, c.server.host) == (9001, "0.0.0.0")
    assert c.server.max_streams == 64
    assert c.engine.device == "cuda:1"
    assert c.engine.max_wait_ms == 5.0 and type(c.engine.max_wait_ms) is float
    assert c.engine.hop_s == 0.25
    assert c.engine.half_precision is False
    assert c.engine.max_batch == 32
    assert c.model == ModelConfig("/models/gtzan", {"hiphop": "hip-hop", "rnb": "R&B"})
    assert c.smoothing == SmoothingConfig()


def test_replace_swaps_a_table() -> None:
    c = Config()
    d = c.replace(engine=EngineConfig(max_batch=4))
    assert d.engine.max_batch == 4
    assert d.server is c.server
    assert c.engine.max_batch == 32


# --------------------------------------------------------------------------- file problems


def test_command_line_overrides_replace_only_what_is_given() -> None:
    c = Config()
    assert c.overridden() == c
    o = c.overridden(host="0.0.0.0", port=9000, model="/m", device="cuda:1")
    assert (o.server.host, o.server.port, o.model.path, o.engine.device) == (
        "0.0.0.0",
        9000,
        "/m",
        "cuda:1",
    )
    assert o.server.max_streams == c.server.max_streams and o.engine.hop_s == c.engine.hop_s
    assert c.overridden(port=0).server == dataclasses.replace(c.server, port=0)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert info.value.key == "<file>"
    assert "nope.toml" in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[server\nport = 1\n")
    assert err.key == "<file>"
    assert "not valid TOML" in str(err)
    assert isinstance(err, GenrecastError)


def test_string_path_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "[updates]\nqueue_size = 7\n")
    assert load_config(str(path)).updates.queue_size == 7


# --------------------------------------------------------------------------- unknown names


def test_unknown_table(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[bogus]\nx = 1\n")
    assert err.key == "bogus"
    assert "unknown table" in str(err)
    assert "engine" in str(err)  # lists the known tables


def test_unknown_key_names_the_dotted_key(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[engine]\nmax_batch = 4\nbogus = 1\n")
    assert err.key == "engine.bogus"
    assert "'engine.bogus'" in str(err)
    assert "max_batch" in str(err)  # lists the known keys


def test_first_unknown_key_in_sorted_order_is_named(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[server]\nzzz = 1\naaa = 2\n")
    assert err.key == "server.aaa"


def test_table_that_is_not_a_table(tmp_path: Path) -> None:
    err = config_error(tmp_path, "server = 5\n")
    assert err.key == "server"
    assert "expected a table" in str(err)


# --------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("text", "key", "needle"),
    [
        ('[server]\nport = "8000"\n', "server.port", "expected an integer"),
        ("[server]\nport = true\n", "server.port", "expected an integer"),
        ("[engine]\nmax_batch = 4.0\n", "engine.max_batch", "expected an integer"),
        ('[engine]\nhop_s = "1"\n', "engine.hop_s", "expected a number"),
        ("[engine]\nhop_s = false\n", "engine.hop_s", "expected a number"),
        ("[engine]\nhalf_precision = 1\n", "engine.half_precision", "expected true or false"),
        ('[engine]\nhalf_precision = "yes"\n', "engine.half_precision", "true or false"),
        ("[server]\nhost = 127\n", "server.host", "expected a string"),
        ("[storage]\ndatabase = []\n", "storage.database", "expected a string"),
        ("[model]\nlabels = 3\n", "model.labels", "expected a table of strings"),
        ("[model.labels]\njazz = 1\n", "model.labels", "expected a table of strings"),
        ('[model]\nlabels = ["a"]\n', "model.labels", "expected a table of strings"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, text: str, key: str, needle: str) -> None:
    err = config_error(tmp_path, text)
    assert err.key == key
    assert needle in str(err)
    assert repr(key) in str(err)


def test_int_is_accepted_for_a_float_key(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "[engine]\nhop_s = 2\n[smoothing]\nmin_dwell_s = 0\n"))
    assert c.engine.hop_s == 2.0 and isinstance(c.engine.hop_s, float)
    assert c.smoothing.min_dwell_s == 0.0 and isinstance(c.smoothing.min_dwell_s, float)


def test_gate_and_offline_tables(tmp_path: Path) -> None:
    text = (
        "[gate]\nenabled = false\nsilence_dbfs = -70\n"
        '[offline]\ndecoding = "live"\nswitch_cost = 3\n'
    )
    c = load_config(write(tmp_path, text))
    assert c.gate == GateConfig(False, -70.0, 0.8, 1.0)
    assert c.offline == OfflineConfig("live", 3.0)
    err = config_error(tmp_path, "[gate]\nenabled = 1\n")
    assert err.key == "gate.enabled"
    assert "true or false" in str(err)


def test_model_labels_table_of_strings(tmp_path: Path) -> None:
    text = '[model.labels]\njazz = "Jazz"\n"hip hop" = "hip-hop"\n'
    c = load_config(write(tmp_path, text))
    assert c.model.labels == {"jazz": "Jazz", "hip hop": "hip-hop"}
    assert c.model.path == ""


# --------------------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    ("table", "key", "value", "needle"),
    [
        ("server", "port", 70000, "0..65535"),
        ("server", "port", -1, "0..65535"),
        ("server", "max_frame_bytes", 0, "> 0"),
        ("server", "max_channels", 0, "> 0"),
        ("server", "max_streams", -3, "> 0"),
        ("server", "workers", 0, "1..64"),
        ("server", "workers", 65, "1..64"),
        ("server", "log_level", "verbose", "one of"),
        ("engine", "max_batch", 0, "> 0"),
        ("engine", "top_k", 0, "> 0"),
        ("engine", "hop_s", 0.0, "> 0"),
        ("engine", "buffer_s", -1.0, ">= 0"),
        ("engine", "catch_up_s", -0.5, ">= 0"),
        ("engine", "feed_s", 0.02, "0 (off) or a finite number >= 0.05"),
        ("engine", "kernel_cache", -1, ">= 0"),
        ("engine", "window_s", -0.5, ">= 0"),
        ("engine", "max_wait_ms", -1.0, ">= 0"),
        ("engine", "device", "tpu", "'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("engine", "device", "cuda:", "cuda:N"),
        ("engine", "device", "cuda:x", "cuda:N"),
        ("engine", "device", "CPU", "cuda:N"),
        ("smoothing", "switch_margin", 1.5, "[0, 1]"),
        ("smoothing", "switch_margin", -0.1, "[0, 1]"),
        ("smoothing", "switch_margin", math.nan, "[0, 1]"),
        ("smoothing", "time_constant_s", -1.0, ">= 0"),
        ("smoothing", "time_constant_s", math.nan, ">= 0"),
        ("smoothing", "min_dwell_s", -2.0, ">= 0"),
        ("smoothing", "stale_margin", 1.2, "[0, 1]"),
        ("smoothing", "backdate_max_s", -1.0, ">= 0"),
        ("gate", "silence_dbfs", 3.0, "dBFS <= 0"),
        ("gate", "silence_dbfs", -math.inf, "dBFS <= 0"),
        ("gate", "speech_threshold", 1.01, "[0, 1]"),
        ("gate", "min_run_s", -0.5, ">= 0"),
        ("offline", "decoding", "forward", "viterbi, live"),
        ("offline", "switch_cost", -1.0, ">= 0"),
        ("updates", "queue_size", 0, "> 0"),
        ("updates", "history_size", 0, "> 0"),
    ],
)
def test_out_of_range_values_name_the_key_and_value(
    table: str, key: str, value: Any, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({table: {key: value}})
    assert info.value.key == f"{table}.{key}"
    message = str(info.value)
    assert needle in message
    assert f"got {value!r}" in message


@pytest.mark.parametrize(
    ("table", "key", "value"),
    [
        ("server", "port", 0),
        ("server", "port", 65535),
        ("engine", "device", "auto"),
        ("engine", "device", "cpu"),
        ("engine", "device", "cuda"),
        ("engine", "device", "cuda:0"),
        ("engine", "device", "cuda:12"),
        ("engine", "window_s", 0.0),
        ("engine", "max_wait_ms", 0.0),
        ("smoothing", "switch_margin", 0.0),
        ("smoothing", "switch_margin", 1.0),
        ("smoothing", "time_constant_s", 0.0),
        ("server", "log_level", "debug"),
    ],
)
def test_boundary_values_are_accepted(table: str, key: str, value: Any) -> None:
    config = config_from_dict({table: {key: value}})
    assert getattr(getattr(config, table), key) == value


def test_out_of_range_in_a_file(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[server]\nport = 70000\n")
    assert err.key == "server.port"
    assert "70000" in str(err)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("engine", "hop_s"),
        ("engine", "buffer_s"),
        ("engine", "window_s"),
        ("smoothing", "time_constant_s"),
        ("smoothing", "min_dwell_s"),
    ],
)
def test_infinite_durations_are_rejected(table: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({table: {key: math.inf}})
    assert info.value.key == f"{table}.{key}"


#: Every key with a range check. The checks live on the dataclass fields, so a renamed field
#: keeps its check; this list catches one that is dropped (or added without a test value).
CHECKED_KEYS = frozenset(
    {
        "server.port",
        "server.max_frame_bytes",
        "server.min_sample_rate",
        "server.max_sample_rate",
        "server.max_channels",
        "server.max_streams",
        "server.max_streams_per_client",
        "server.start_timeout_s",
        "server.idle_timeout_s",
        "server.header_timeout_s",
        "server.workers",
        "server.dashboard_port",
        "server.log_level",
        "engine.device",
        "engine.max_batch",
        "engine.max_wait_ms",
        "engine.hop_s",
        "engine.window_s",
        "engine.buffer_s",
        "engine.catch_up_s",
        "engine.feed_s",
        "engine.kernel_cache",
        "engine.top_k",
        "smoothing.time_constant_s",
        "smoothing.switch_margin",
        "smoothing.min_dwell_s",
        "smoothing.stale_margin",
        "smoothing.backdate_max_s",
        "gate.silence_dbfs",
        "gate.speech_threshold",
        "gate.min_run_s",
        "offline.decoding",
        "offline.switch_cost",
        "updates.queue_size",
        "updates.history_size",
        "storage.retention_days",
        "sources.open_timeout_s",
        "sources.stall_s",
        "sources.reconnect_min_s",
        "sources.reconnect_max_s",
        "sources.max_reconnects",
        "sources.first_connect_attempts",
        "sources.chunk_s",
        "sources.allowed_hosts",
        "webrtc.connect_timeout_s",
        "webrtc.max_pending",
        "upload.max_bytes",
        "upload.max_duration_s",
        "upload.cache_entries",
        "upload.max_concurrent",
        "auth.origins",
        "auth.ticket_s",
        "cluster.urls",
        "cluster.request_timeout_s",
        "cluster.replicas",
        "cluster.updates_kept",
    }
)

#: A value each kind of check refuses (a new kind of check needs one here).
OUT_OF_RANGE: dict[str, Any] = {
    "_positive": 0,
    "_non_negative": -1,
    "_port": 70000,
    "_workers": 0,
    "_feed": 0.01,
    "_unit_interval": 2,
    "_level_dbfs": 1,
    "_device": "tpu",
    "_decoding": "forward",
    "_log_level": "verbose",
    "_host_list": ["radio.lan/stream"],
    "_origin_list": ["radio.lan"],
    "_nats_urls": ["http://nats.lan:4222"],
    "_replicas": 6,
}


def table_classes() -> dict[str, type[Any]]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def checked_fields() -> list[tuple[str, str, Any]]:
    """``(table, key, check)`` for every field of every table that carries a check."""
    return [
        (table, key, check)
        for table, cls in table_classes().items()
        for key, check in field_checks(cls).items()
    ]


def test_every_range_check_is_attached_to_a_field() -> None:
    attached = {f"{table}.{key}" for table, key, _ in checked_fields()}
    assert attached == CHECKED_KEYS
    for table, key, check in checked_fields():
        assert callable(check)
        default = getattr(table_classes()[table](), key)
        assert check(default) is None, f"the default of {table}.{key} fails its own check"


@pytest.mark.parametrize(("table", "key", "check"), checked_fields())
def test_each_check_names_its_key(table: str, key: str, check: Any) -> None:
    value = OUT_OF_RANGE[check.__name__]
    with pytest.raises(ConfigError) as info:
        config_from_dict({table: {key: value}})
    assert info.value.key == f"{table}.{key}"
    assert str(info.value).startswith(f"config key '{table}.{key}': ")
    assert f"got {value!r}" in str(info.value)


def test_min_sample_rate_above_max(tmp_path: Path) -> None:
    err = config_error(tmp_path, "[server]\nmin_sample_rate = 48000\nmax_sample_rate = 44100\n")
    assert err.key == "server.min_sample_rate"
    assert "server.max_sample_rate" in str(err)


def test_min_sample_rate_above_default_max() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"server": {"min_sample_rate": 400_000}})
    assert info.value.key == "server.min_sample_rate"


def test_equal_min_and_max_sample_rate_is_fine() -> None:
    c = config_from_dict({"server": {"min_sample_rate": 44100, "max_sample_rate": 44100}})
    assert (c.server.min_sample_rate, c.server.max_sample_rate) == (44100, 44100)


def test_config_error_message_and_key() -> None:
    err = ConfigError("engine.max_batch", "must be > 0, got 0")
    assert err.key == "engine.max_batch"
    assert str(err) == "config key 'engine.max_batch': must be > 0, got 0"


def test_tables_are_frozen() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.engine.max_batch = 1  # type: ignore[misc]


def test_the_workers_flag_is_checked_as_the_key_it_overrides() -> None:
    on_file = Config()  # genrecast.db
    assert on_file.overridden(workers=4).server.workers == 4
    assert on_file.overridden().server.workers == 1
    with pytest.raises(ConfigError) as info:
        on_file.overridden(workers=65)
    assert info.value.key == "server.workers"
    # every process would have a database of its own
    in_memory = config_from_dict({"storage": {"database": ":memory:"}})
    with pytest.raises(ConfigError) as info:
        in_memory.overridden(workers=2)
    assert info.value.key == "storage.database"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"server": {"workers": 2}, "storage": {"database": ":memory:"}})
    assert info.value.key == "storage.database"


def test_cluster_overrides_name_the_key() -> None:
    config = Config().overridden(cluster=" nats://a:4222, nats://b:4222 ")
    assert config.cluster.urls == ["nats://a:4222", "nats://b:4222"]
    for bad in ("http://a:4222", " , "):
        with pytest.raises(ConfigError, match=r"cluster\.urls.*nats://host:port"):
            Config().overridden(cluster=bad)
