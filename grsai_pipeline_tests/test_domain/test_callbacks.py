"""SPEC 3 and 5: the callback URL sent as ``webHook`` carries a per-task token that verifies."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from grsai_pipeline.domain.callbacks import callback_token, callback_url, token_is_valid

SECRET = "whsec-4f9Kq2"
TASK = "3f2b8c1e-7a4d-4e0b-9d61-0c5a2e9b7f10"


@pytest.mark.parametrize("app_url", ["https://app.example.com", "https://app.example.com/"])
def test_callback_url_is_app_url_plus_callback_path(app_url: str) -> None:
    parts = urlsplit(callback_url(app_url, SECRET, TASK))
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "app.example.com",
        "/api/video/callback",
    )
    query = parse_qs(parts.query)
    assert query["task_id"] == [TASK]
    assert token_is_valid(SECRET, TASK, query["token"][0])


def test_callback_url_keeps_a_base_path() -> None:
    url = callback_url("https://example.com/studio/", SECRET, TASK)
    assert urlsplit(url).path == "/studio/api/video/callback"


def test_callback_url_never_carries_the_secret() -> None:
    assert SECRET not in callback_url("https://app.example.com", SECRET, TASK)


def test_token_verifies_only_for_its_task_and_secret() -> None:
    token = callback_token(SECRET, TASK)
    assert token_is_valid(SECRET, TASK, token)
    assert not token_is_valid(SECRET, TASK + "0", token)
    assert not token_is_valid("another-secret", TASK, token)
    assert callback_token(SECRET, "other-task") != token


@pytest.mark.parametrize("forged", ["", "0" * 64, "abc", "not-a-token"])
def test_forged_token_is_refused(forged: str) -> None:
    assert not token_is_valid(SECRET, TASK, forged)


def test_tampered_token_is_refused() -> None:
    token = callback_token(SECRET, TASK)
    flipped = ("1" if token[0] == "0" else "0") + token[1:]
    assert not token_is_valid(SECRET, TASK, flipped)
    assert not token_is_valid(SECRET, TASK, token[:-1])
    assert not token_is_valid(SECRET, TASK, token + "0")


def test_non_ascii_token_is_refused_not_an_error() -> None:
    assert not token_is_valid(SECRET, TASK, "é" * 64)
