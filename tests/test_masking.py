"""What ``masking.py`` hides, and what it leaves visible (issue 26, item 5; review).

One vocabulary names secrets: a key is secret-looking for the ``--params`` refusal exactly
when its value is masked in a text (``pad_token``, ``eos_token``, ``max_new_tokens`` are
neither); the credentials' values are remembered only under secret-looking keys (a
``base_url`` stays visible), and key-shaped values wherever they are."""

from __future__ import annotations

import logging

import pytest

from vlv_pipeline import masking
from vlv_pipeline.masking import (
    MASK,
    SecretsFilter,
    is_secret_key,
    mask_secrets,
    remember_secrets_in,
)

SK_KEY = "sk-proj-" + "Zq8vW3tYb1Nc4Rk7Xm2Lp9Hd5Gf6Js0A"
HF_KEY = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3f"


@pytest.fixture(autouse=True)
def _nothing_remembered(monkeypatch):
    monkeypatch.setattr(masking, "_remembered", set())


def _logged(message: str, *args) -> str:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, args, None)
    assert SecretsFilter().filter(record)
    return record.getMessage()


def test_tokens_that_are_not_secrets_stay_visible_in_a_log_line():
    line = "generation: pad_token=151643, eos_token: 2, max_new_tokens=300, num_beams=1"
    assert _logged(line) == line
    assert _logged("tokenizer %s: {'pad_token': 151643, 'bos_token': 1}", "x") == (
        "tokenizer x: {'pad_token': 151643, 'bos_token': 1}"
    )


def test_secret_keys_values_are_masked_in_a_log_line():
    line = _logged("calling with api_key=%s and hf_token=%s", SK_KEY, HF_KEY)
    assert line == f"calling with api_key={MASK} and hf_token={MASK}"
    # values of no known shape too: the key says it is a secret
    assert _logged("api_key=abc123xyz hf_token=plainvalue") == f"api_key={MASK} hf_token={MASK}"
    assert _logged("OPENAI_API_KEY=abc123xyz") == f"OPENAI_API_KEY={MASK}"
    assert _logged("--params stage2.hf_token=abcdef") == f"--params stage2.hf_token={MASK}"
    assert _logged("{'my_password': 'hunter2'}") == f"{{'my_password': '{MASK}'}}"


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "OPENAI_API_KEY",
        "apikey",
        "x-api-key",
        "hf_token",
        "HF_TOKEN",
        "github_token",
        "access_token",
        "token",
        "password",
        "db_password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "secret_key",
        "aws_secret_access_key",
        "private_key",
        "pad_token",
        "eos_token",
        "bos_token",
        "unk_token",
        "max_new_tokens",
        "tokenizer",
        "pad_token_id",
        "num_key_value_heads",
        "key",
        "sort_key",
        "base_url",
    ],
)
def test_the_refusal_and_the_masking_agree_on_every_key(name):
    """A key refused on the command line is a key whose value is masked, and the other
    way round."""
    masked = mask_secrets(f"{name}=value123") == f"{name}={MASK}"
    assert masked is is_secret_key(name), (name, mask_secrets(f"{name}=value123"))
    dotted = f"synthesize.captioner.{name}"
    assert (mask_secrets(f"{dotted}: value123") == f"{dotted}: {MASK}") is masked


def test_the_vocabulary_knows_secrets_from_ordinary_tokens():
    for name in ("api_key", "hf_token", "token", "client_secret", "password"):
        assert is_secret_key(name), name
    for name in ("pad_token", "eos_token", "max_new_tokens", "tokenizer", "base_url"):
        assert not is_secret_key(name), name


def test_credentials_mask_their_secrets_not_their_addresses():
    credentials = {
        "captioner": {
            "api_key": "plain-but-secret-1",  # no known shape: masked for its key
            "base_url": "https://llm.example.org/v1",
            "organization": "my-team-name",
            "key": "s3-key-value-9",  # a credential named `key` is a secret
            "sas_token": "sv=2024&sig=abc",
            "note": SK_KEY,  # key-shaped wherever it is
        }
    }
    remember_secrets_in(credentials, credentials=True)
    text = (
        "POST https://llm.example.org/v1 for my-team-name with plain-but-secret-1, "
        f"s3-key-value-9, sv=2024&sig=abc and {SK_KEY}"
    )
    assert mask_secrets(text) == (
        f"POST https://llm.example.org/v1 for my-team-name with {MASK}, {MASK}, {MASK} and {MASK}"
    )


def test_params_remember_their_secret_keys_and_key_shaped_values_only():
    remember_secrets_in({"stage2": {"hf_token": "plainvalue", "model": "my-model-name"}})
    assert mask_secrets("plainvalue my-model-name") == f"{MASK} my-model-name"


def test_a_shortened_value_is_masked_when_it_starts_like_any_provider_key():
    for key in (SK_KEY, HF_KEY, "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW", "ghp_" + "a1" * 18):
        shortened = f"input_value='{key[:10]}...{key[-5:]}'"
        assert mask_secrets(shortened) == f"input_value='{MASK}'", key
        assert key not in mask_secrets(f"value {key} here"), key


def test_a_long_value_is_masked_in_linear_time():
    """A log record holding a long value (a base64 image, a data URL) is filtered at once: a
    shortened-value check tried from every character made it quadratic (minutes)."""
    import time

    long_value = "data:image/png;base64," + "QUJD" * 25_000 + " and " + "a" * 100_000
    start = time.perf_counter()
    assert mask_secrets(long_value) == long_value
    assert time.perf_counter() - start < 5
