"""Building LVLM clients from the `labelling` parameters: every bad input fails before labelling."""

from __future__ import annotations

import socket

import pytest

from rgvlm.params import ParamError, labelling_config
from rgvlm.vlm import make_clients
from rgvlm.vlm.scripted import ScriptedAnnotator


def fails_on(raw, key, **kwargs):
    with pytest.raises(ParamError) as error:
        make_clients(labelling_config(raw, **kwargs))
    assert error.value.key == key, str(error.value)
    return str(error.value)


def test_scripted_is_the_default_and_shares_one_client():
    stage1, stage2 = make_clients(labelling_config({}))
    assert isinstance(stage1, ScriptedAnnotator) and stage1 is stage2


def test_unknown_backend():
    assert "scripted, transformers, openai" in fails_on({"backend": "gemini"}, "labelling.backend")


def test_missing_api_key_variable(monkeypatch):
    monkeypatch.delenv("RGVLM_TEST_KEY", raising=False)
    message = fails_on({"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1",
                        "api_key_env": "RGVLM_TEST_KEY"}, "labelling.api_key_env")
    assert "RGVLM_TEST_KEY" in message


def test_unreachable_server():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    message = fails_on({"backend": "openai", "model": "m", "base_url": f"http://127.0.0.1:{port}/v1",
                        "api_key_env": None, "timeout_s": 2}, "labelling.base_url")
    assert str(port) in message


def test_model_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    assert str(missing) in fails_on({"backend": "transformers", "model": str(missing)}, "labelling.model")


def test_missing_model_and_base_url():
    fails_on({"backend": "transformers"}, "labelling.model")
    fails_on({"backend": "openai", "model": "gpt"}, "labelling.base_url")


def test_rg_vlm_keys_are_not_backend_keys():
    assert "rg_vlm.window_length instead" in fails_on({"window_length": 16}, "labelling.window_length")


def test_bad_scripted_noise():
    fails_on({"scripted": {"malformed_rate": 3}}, "labelling.scripted")


@pytest.mark.parametrize("value", [1.5, -0.1, "5%", float("nan"), True])
def test_bad_max_failure_rate_is_named(value):
    with pytest.raises(ParamError) as error:
        labelling_config({"max_failure_rate": value})
    assert error.value.key == "labelling.max_failure_rate" and repr(value) in str(error.value)
    assert "[0.0, 1.0]" in str(error.value) or "a number" in str(error.value)


def test_deadline_is_checked_and_passed_to_the_client():
    for value in (0, float("inf"), "60"):
        with pytest.raises(ParamError, match="labelling.deadline_s"):
            labelling_config({"deadline_s": value})
    assert labelling_config({}).deadline_s is None and labelling_config({}).max_failure_rate == 0.05
    assert labelling_config({"deadline_s": 90}).deadline_s == 90.0
