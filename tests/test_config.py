"""Settings from the environment and an optional .env file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nexus.config import ConfigError, Settings, default_ort_threads, from_env, read_dotenv, with_overrides


def test_defaults(tmp_path):
    settings = from_env({}, dotenv=tmp_path / "none")
    assert settings.model_dir == Path("models")
    assert settings.max_upload_mb == 512 and settings.max_request_mb == 32
    assert settings.api_token is None and settings.protect_predict is False
    assert settings.log_level == "INFO" and settings.cors_origins == ("*",)


def test_every_variable_is_read(tmp_path):
    settings = from_env({
        "NEXUS_MODEL_DIR": "/srv/models", "NEXUS_MAX_UPLOAD_MB": "64", "NEXUS_MAX_REQUEST_MB": "0.5",
        "NEXUS_API_TOKEN": "t", "NEXUS_PROTECT_PREDICT": "yes", "NEXUS_ORT_THREADS": "3", "NEXUS_LOG_LEVEL": "debug",
        "NEXUS_CORS_ORIGINS": "https://a.example, https://b.example",
    }, dotenv=None)
    assert settings == Settings(Path("/srv/models"), 64, 0.5, "t", True, 3, "DEBUG", ("https://a.example", "https://b.example"))
    assert settings.max_upload_bytes == 64 * 1024 * 1024


def test_environment_overrides_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("# comment\nNEXUS_MAX_UPLOAD_MB=10\nexport NEXUS_LOG_LEVEL='warning'\nNEXUS_API_TOKEN=\"from-file\"\n\n")
    assert read_dotenv(dotenv)["NEXUS_API_TOKEN"] == "from-file"
    settings = from_env({"NEXUS_MAX_UPLOAD_MB": "20"}, dotenv=dotenv)
    assert settings.max_upload_mb == 20 and settings.log_level == "WARNING" and settings.api_token == "from-file"


@pytest.mark.parametrize(
    ("name", "value"),
    [("NEXUS_MAX_UPLOAD_MB", "lots"), ("NEXUS_MAX_UPLOAD_MB", "0"), ("NEXUS_MAX_REQUEST_MB", "-1"), ("NEXUS_ORT_THREADS", "0"),
     ("NEXUS_ORT_THREADS", "1.5"), ("NEXUS_PROTECT_PREDICT", "maybe"), ("NEXUS_LOG_LEVEL", "LOUD")],
)
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        from_env({name: value}, dotenv=None)


@pytest.mark.parametrize(("workers", "expected_max"), [("1", None), ("2", None), ("64", 1)])
def test_default_threads_share_the_cores(workers, expected_max):
    import os

    threads = default_ort_threads({"WEB_CONCURRENCY": workers})
    assert threads >= 1 and threads * int(workers) <= max(os.cpu_count() or 1, int(workers))
    if expected_max:
        assert threads == expected_max


def test_overrides_reject_unknown_names():
    assert with_overrides(Settings(), {"model_dir": "x"}).model_dir == Path("x")
    with pytest.raises(ConfigError, match="nope"):
        with_overrides(Settings(), {"nope": 1})
