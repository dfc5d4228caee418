"""Settings from the environment and an optional .env file."""

from __future__ import annotations

import os
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
        "HOST": "0.0.0.0", "PORT": "9000", "WEB_CONCURRENCY": "3",
        "NEXUS_MODEL_DIR": "/srv/models", "NEXUS_MAX_UPLOAD_MB": "64", "NEXUS_MAX_REQUEST_MB": "0.5",
        "NEXUS_API_TOKEN": "t", "NEXUS_PROTECT_PREDICT": "yes", "NEXUS_ORT_THREADS": "3", "NEXUS_LOG_LEVEL": "debug",
        "NEXUS_CORS_ORIGINS": "https://a.example, https://b.example", "NEXUS_MAX_MODEL_MEMORY_MB": "512",
        "NEXUS_MAX_LOAD_SECONDS": "2.5", "NEXUS_INFERENCE_TIMEOUT_S": "1.5", "NEXUS_MAX_INFERENCE_MEMORY_MB": "256",
        "NEXUS_LOAD_WAIT_S": "0.5",
    }, dotenv=None)
    assert settings == Settings(
        host="0.0.0.0", port=9000, workers=3, model_dir=Path("/srv/models"), max_upload_mb=64, max_request_mb=0.5,
        api_token="t", protect_predict=True, ort_threads=3, log_level="DEBUG",
        cors_origins=("https://a.example", "https://b.example"), max_model_memory_mb=512, max_load_seconds=2.5,
        inference_timeout_s=1.5, max_inference_memory_mb=256, load_wait_s=0.5,
    )
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


def test_a_bad_value_in_the_dotenv_file_names_the_variable(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("NEXUS_ORT_THREADS=many\n")
    with pytest.raises(ConfigError, match="NEXUS_ORT_THREADS='many'"):
        from_env({}, dotenv=dotenv)
    assert from_env({"NEXUS_ORT_THREADS": "2"}, dotenv=dotenv).ort_threads == 2  # the environment wins


@pytest.mark.parametrize(
    ("cores", "workers", "threads"),
    [(8, 1, 8), (8, 2, 4), (8, 3, 2), (8, 8, 1), (8, 64, 1), (1, 4, 1), (None, 2, 1)],
)
def test_default_threads_share_the_cores(monkeypatch, cores, workers, threads):
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_ort_threads(workers) == threads
    assert threads * workers <= max(cores or 1, workers)


def test_from_env_uses_the_share_unless_threads_are_set(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert from_env({"WEB_CONCURRENCY": "4"}).ort_threads == 2
    assert from_env({}).workers == 8 and from_env({}).ort_threads == 1
    assert from_env({"WEB_CONCURRENCY": "4", "NEXUS_ORT_THREADS": "3"}).ort_threads == 3


@pytest.mark.parametrize(("name", "value"), [("WEB_CONCURRENCY", "junk"), ("WEB_CONCURRENCY", "0"), ("PORT", "70000"), ("HOST", " ")])
def test_the_server_settings_gunicorn_reads_are_checked_too(name, value):
    with pytest.raises(ConfigError, match=name):
        from_env({name: value})


def test_a_dotenv_file_is_read_only_when_named(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("NEXUS_MAX_UPLOAD_MB=10\n")
    monkeypatch.chdir(tmp_path)
    assert from_env({}).max_upload_mb == 512  # a stray .env in the working directory changes nothing
    assert from_env({"NEXUS_ENV_FILE": str(tmp_path / ".env")}).max_upload_mb == 10
    with pytest.raises(ConfigError, match="NEXUS_ENV_FILE"):
        from_env({"NEXUS_ENV_FILE": str(tmp_path / "missing.env")})


def test_overrides_replace_known_fields_and_keep_the_rest():
    settings = with_overrides(Settings(max_request_mb=5), {"model_dir": "x", "api_token": "t"})
    assert settings.model_dir == Path("x") and settings.api_token == "t" and settings.max_request_mb == 5


@pytest.mark.parametrize("overrides", [{"nope": 1}, {"model_dir": "x", "nope": 1}, {"MAX_UPLOAD_MB": 1}])
def test_overrides_reject_unknown_names(overrides):
    unknown = next(k for k in overrides if k != "model_dir")
    with pytest.raises(ConfigError, match=f"unknown setting.*{unknown}"):
        with_overrides(Settings(), overrides)


def test_record_settings_are_read_and_the_state_directory_sits_beside_the_models(tmp_path):
    settings = from_env({"NEXUS_MODEL_DIR": "/srv/models"}, dotenv=None)
    assert settings.records is True and settings.database_url is None and settings.record_inputs is False
    assert settings.record_retention_days == 7 and settings.record_queue == 100_000
    assert settings.state_path == Path("/srv/models.state")  # beside the model directory, never inside it
    settings = from_env({"NEXUS_MODEL_DIR": "/srv/models/", "NEXUS_RECORDS": "0", "NEXUS_STATE_DIR": "/var/lib/nexus",
                         "NEXUS_DATABASE_URL": "postgresql://u:p@db:5432/nexus", "NEXUS_RECORD_INPUTS": "1",
                         "NEXUS_RECORD_RETENTION_DAYS": "0.5", "NEXUS_RECORD_QUEUE": "50"}, dotenv=None)
    assert (settings.records, settings.state_path, settings.database_url) == (False, Path("/var/lib/nexus"), "postgresql://u:p@db:5432/nexus")
    assert (settings.record_inputs, settings.record_retention_days, settings.record_queue) == (True, 0.5, 50)
    assert from_env({"NEXUS_MODEL_DIR": "/srv/models/"}, dotenv=None).state_path == Path("/srv/models.state")
    assert with_overrides(settings, {"state_dir": str(tmp_path)}).state_path == tmp_path


@pytest.mark.parametrize(
    ("name", "value"),
    [("NEXUS_DATABASE_URL", "mysql://u:p@db/nexus"), ("NEXUS_DATABASE_URL", "db.example:5432"), ("NEXUS_RECORDS", "sometimes"),
     ("NEXUS_RECORD_RETENTION_DAYS", "0"), ("NEXUS_RECORD_QUEUE", "0"), ("NEXUS_RECORD_INPUTS", "2")],
)
def test_bad_record_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        from_env({name: value}, dotenv=None)
