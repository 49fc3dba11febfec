"""Signed links to archived videos: made and checked by one pure module, and the settings that
turn them on."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from grsai_pipeline.config import load_settings
from grsai_pipeline.domain.links import LinkCheck, VideoLinks, check_link, link_signature
from grsai_pipeline.errors import SettingsError

SECRET = "link-secret-0123456789abcdef"
TASK = "3f6c1a9e-0b7d-4c55-9a59-4b1f2f0d8c11"
NOW = 1_900_000_000.5


def parts(url: str) -> tuple[str, int, str]:
    split = urlsplit(url)
    query = parse_qs(split.query)
    (expires,), (signature,) = query["expires"], query["signature"]
    return split.path, int(expires), signature


def test_a_link_opens_its_video_until_it_expires() -> None:
    links = VideoLinks("https://api.example.com/", SECRET, ttl_s=3600)

    path, expires, signature = parts(links.url(TASK, NOW))

    assert path == f"/v1/videos/{TASK}"
    assert links.path(TASK) == f"https://api.example.com/v1/videos/{TASK}"
    assert expires == int(NOW) + 3600 == links.expires(NOW)
    assert signature == link_signature(SECRET, TASK, expires) and len(signature) == 64
    assert check_link(SECRET, TASK, expires, signature, NOW) is LinkCheck.VALID
    assert check_link(SECRET, TASK, expires, signature, expires - 1) is LinkCheck.VALID
    assert check_link(SECRET, TASK, expires, signature, expires) is LinkCheck.EXPIRED
    assert SECRET not in repr(links)


@pytest.mark.parametrize(
    ("secret", "task", "expires_delta", "signature"),
    [
        ("another-secret-0123456789", TASK, 0, None),  # signed with another key
        (SECRET, "another-task", 0, None),  # the link of another video
        (SECRET, TASK, 86_400, None),  # the expiry moved forward, the signature kept
        (SECRET, TASK, 0, "0" * 64),
        (SECRET, TASK, 0, ""),
        (SECRET, TASK, 0, "é" * 64),  # not ASCII: refused, not an error
    ],
)
def test_a_link_altered_in_any_part_is_forged(
    secret: str, task: str, expires_delta: int, signature: str | None
) -> None:
    _, expires, good = parts(VideoLinks("http://h", SECRET, 60).url(TASK, NOW))
    signature = signature if signature is not None else link_signature(secret, task, expires)

    found = check_link(SECRET, TASK, expires + expires_delta, signature, NOW)

    assert found is LinkCheck.FORGED
    assert check_link(SECRET, TASK, expires, good, NOW) is LinkCheck.VALID


def test_an_expired_forgery_reads_as_forged_not_expired() -> None:
    signature = link_signature("another-secret-0123456789", TASK, 10)
    assert check_link(SECRET, TASK, 10, signature, NOW) is LinkCheck.FORGED
    assert check_link(SECRET, TASK, 10, link_signature(SECRET, TASK, 10), NOW) is LinkCheck.EXPIRED


def test_links_are_on_only_with_both_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().video_links is None
    monkeypatch.setenv("GRSAI_LINK_SECRET", SECRET)
    assert load_settings().video_links is None  # no public URL: nowhere to point
    monkeypatch.setenv("GRSAI_API_PUBLIC_URL", "https://api.example.com/")
    links = load_settings().video_links
    assert links == VideoLinks("https://api.example.com", SECRET, 7 * 24 * 3600)
    assert SECRET not in repr(load_settings())
    monkeypatch.setenv("GRSAI_LINK_TTL_S", "600")
    assert load_settings().video_links == VideoLinks("https://api.example.com", SECRET, 600)
    monkeypatch.setenv("GRSAI_LINK_SECRET", "")
    assert load_settings().video_links is None  # empty: unset


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("GRSAI_LINK_SECRET", "short", "GRSAI_LINK_SECRET: must be a long random string"),
        ("GRSAI_API_PUBLIC_URL", "api.example.com", "GRSAI_API_PUBLIC_URL: must be an http(s)"),
        ("GRSAI_LINK_TTL_S", "10", "GRSAI_LINK_TTL_S"),
    ],
)
def test_bad_link_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=said.replace("(", r"\(").replace(")", r"\)")) as err:
        load_settings()
    assert value not in str(err.value) or name != "GRSAI_LINK_SECRET"
