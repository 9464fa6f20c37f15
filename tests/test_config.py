"""Settings and Secret: values reach the code that needs them and never any text."""

from __future__ import annotations

import pickle
import re

import pytest

from pipeline.api.errors import ConfigError
from pipeline.client.config import BAIDU_ENDPOINT, Secret, Settings

KEY, SECRET = "ak-7f3e-visible-nowhere", "sk-91bd-visible-nowhere"


def test_secret_is_masked_in_every_text_form() -> None:
    s = Secret(SECRET)
    for text in (repr(s), str(s), f"{s}", f"{s!r}", str([s]), str({"k": s})):
        assert SECRET not in text
        assert "*" in text
    assert s.reveal() == SECRET


def test_secret_equality_truth_and_pickle() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert not Secret("")
    assert Secret("x")
    restored = pickle.loads(pickle.dumps(Secret(SECRET)))
    assert restored.reveal() == SECRET


def test_settings_repr_and_public_hide_credentials() -> None:
    settings = Settings(api_key=Secret(KEY), secret_key=Secret(SECRET), app_id="123")
    for text in (repr(settings), str(settings), str(settings.public())):
        assert KEY not in text and SECRET not in text
    assert settings.public() == {"endpoint": BAIDU_ENDPOINT, "app_id": "123",
                                 "connect_timeout": 10.0, "read_timeout": None}


def test_from_env_reads_variables_and_overrides_win() -> None:
    env = {"FACEFLOW_ENDPOINT": "http://127.0.0.1:8480", "FACEFLOW_API_KEY": KEY,
           "FACEFLOW_SECRET_KEY": SECRET, "FACEFLOW_APP_ID": "42"}
    settings = Settings.from_env(env, read_timeout=5.0, app_id=None, secret_key="other")
    assert settings.endpoint == "http://127.0.0.1:8480"
    assert settings.api_key.reveal() == KEY
    assert settings.secret_key.reveal() == "other"  # a plain string override is wrapped
    assert settings.app_id == "42"  # None overrides are ignored
    assert settings.read_timeout == 5.0


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"endpoint": "aip.baidubce.com"}, "not an http(s) URL"),
        ({"api_key": Secret("")}, "no credentials"),
        ({"secret_key": Secret("")}, "no credentials"),
        ({"connect_timeout": 0}, "timeouts must be positive"),
        ({"read_timeout": -1.0}, "timeouts must be positive"),
    ],
    ids=["endpoint", "no-api-key", "no-secret-key", "connect-timeout", "read-timeout"],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], words: str) -> None:
    values: dict[str, object] = {"api_key": Secret(KEY), "secret_key": Secret(SECRET)}
    values.update(kwargs)
    with pytest.raises(ConfigError, match=re.escape(words)) as info:
        Settings(**values)  # type: ignore[arg-type]
    assert KEY not in str(info.value) and SECRET not in str(info.value)


def test_plain_string_credentials_are_wrapped_and_masked() -> None:
    settings = Settings(endpoint="http://127.0.0.1:1", api_key="ak-plain-123",
                        secret_key="sk-plain-456")
    assert isinstance(settings.api_key, Secret) and settings.api_key.reveal() == "ak-plain-123"
    assert "ak-plain-123" not in repr(settings) and "sk-plain-456" not in repr(settings)
