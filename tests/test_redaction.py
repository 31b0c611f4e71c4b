"""One rule for secret names, applied to nested records, saved configs, `config show` and log lines."""

from __future__ import annotations

import logging

import pytest
import yaml

from ray_ser import redaction
from ray_ser.config import load
from ray_ser.redaction import REDACTED, is_secret, redact


@pytest.fixture(autouse=True)
def _forget():
    redaction.forget()
    yield
    redaction.forget()


@pytest.mark.parametrize("name", ["secret_access_key", "aws_secret_access_key", "AWS_SECRET_ACCESS_KEY",
                                  "secretAccessKey", "session_token", "aws_session_token", "sas_token", "sas",
                                  "account_key", "AZURE_STORAGE_ACCOUNT_KEY", "azure_storage_sas_token",
                                  "google_application_credentials", "GOOGLE_SERVICE_ACCOUNT_KEY", "password",
                                  "db-password", "client.secret", "api_key", "private_key", "RAY_AUTH_TOKEN"])
def test_secret_names(name):
    assert is_secret(name)


@pytest.mark.parametrize("name", ["access_key_id", "endpoint", "region", "allow_http", "tokenizer", "account_name",
                                  "uri", "model", "keep_versions_s", "sasquatch", "passage", "AWS_REGION"])
def test_plain_names(name):
    assert not is_secret(name)


def test_nested_records_are_redacted_and_their_values_masked_in_other_strings():
    record = {"store": {"uri": "s3://b/x", "options": {"aws_secret_access_key": "s3cr3t-one", "region": "r"}},
              "data": [{"token": "tok-two"}], "note": "made with s3cr3t-one", "empty": {"password": ""}}
    out = redact(record)
    assert out == {"store": {"uri": "s3://b/x", "options": {"aws_secret_access_key": REDACTED, "region": "r"}},
                   "data": [{"token": REDACTED}], "note": f"made with {REDACTED}", "empty": {"password": ""}}
    assert record["store"]["options"]["aws_secret_access_key"] == "s3cr3t-one"  # a copy: the caller keeps its own
    assert redaction.scrub("tok-two and s3cr3t-one") == f"{REDACTED} and {REDACTED}"


def test_saved_configs_and_config_show_mask_every_spelling(tmp_path, capsys):
    from ray_ser.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"store": {"uri": "s3://b/x", "options": {
        "aws_secret_access_key": "alias-secret", "secret_access_key": "plain-secret", "access_key_id": "id"}}}))
    saved = load(path).save(tmp_path / "run").read_text()
    assert "alias-secret" not in saved and "plain-secret" not in saved and "access_key_id: id" in saved
    assert main(["config", "show", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "alias-secret" not in shown and "plain-secret" not in shown and shown.count(REDACTED) == 2
    assert main(["config", "show", str(path), "--show-secrets"]) == 0
    assert "alias-secret" in capsys.readouterr().out


def test_log_lines_mask_known_secrets(tmp_path, monkeypatch):
    from ray_ser import console

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    log = console.setup(tmp_path, verbose=False, native_stderr=False)
    redact({"options": {"sas_token": "config-sas-value"}})
    logger = logging.getLogger("ray_ser.test")
    logger.warning("connecting with env-secret-value and config-sas-value")
    try:
        raise RuntimeError("bad key env-secret-value")
    except RuntimeError:
        logger.exception("failed")
    console.reset()
    text = log.read_text()
    assert "env-secret-value" not in text and "config-sas-value" not in text
    assert text.count(REDACTED) >= 3
