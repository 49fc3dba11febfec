"""SPEC 2: every validation rule of a task, the defaults, and prompts kept exactly as written."""

from __future__ import annotations

from typing import Any

import pytest

from grsai_pipeline.domain.tasks import TaskSpec, validate_task
from grsai_pipeline.errors import InvalidTask

SORA: dict[str, Any] = {"prompt": "A cinematic video", "model": "sora-2"}
VEO: dict[str, Any] = {"prompt": "A cinematic video", "model": "veo-flash"}
URL = "https://example.com/image.jpg"


def rejected(task: object, field: str, **kwargs: Any) -> str:
    """Validate ``task``, expect it refused for ``field``; return the stored message."""
    with pytest.raises(InvalidTask) as info:
        validate_task(task, **kwargs)
    message = str(info.value)
    assert message.startswith(f"INVALID_INPUT: {field}: "), message
    assert info.value.field == field
    # The rule is spelled out after the field, not left empty.
    assert len(message) > len(f"INVALID_INPUT: {field}: ") + 3
    return message


def test_the_two_seed_examples_are_valid() -> None:
    sora = validate_task(
        {
            "prompt": "A cinematic video",
            "model": "sora-2",
            "reference_url": URL,
            "aspect_ratio": "9:16",
            "duration": 10,
        }
    )
    assert sora == TaskSpec(
        prompt="A cinematic video",
        model="sora-2",
        aspect_ratio="9:16",
        duration=10,
        reference_url=URL,
        meta=None,
    )
    meta = {
        "firstFrameUrl": "https://example.com/first.jpg",
        "lastFrameUrl": "https://example.com/last.jpg",
        "urls": ["https://example.com/ref1.jpg"],
    }
    veo = validate_task(
        {"prompt": "A cinematic video", "model": "veo-flash", "aspect_ratio": "16:9", "meta": meta}
    )
    assert veo.model == "veo-flash"
    assert veo.aspect_ratio == "16:9"
    assert veo.duration is None
    assert veo.meta == meta
    assert veo.first_frame_url == "https://example.com/first.jpg"
    assert veo.last_frame_url == "https://example.com/last.jpg"
    assert veo.reference_urls == ["https://example.com/ref1.jpg"]


# --- prompt ------------------------------------------------------------------------------


def test_prompt_missing_is_rejected() -> None:
    message = rejected({"model": "sora-2"}, "prompt")
    assert "required" in message


@pytest.mark.parametrize("prompt", [42, ["a prompt"], {"text": "a prompt"}, True])
def test_prompt_that_is_not_a_string_is_rejected(prompt: object) -> None:
    message = rejected({**SORA, "prompt": prompt}, "prompt")
    assert "string" in message


@pytest.mark.parametrize("prompt", ["", " ", "   \t\n  ", "\u3000\u00a0"])
def test_prompt_empty_or_only_whitespace_is_rejected(prompt: str) -> None:
    message = rejected({**SORA, "prompt": prompt}, "prompt")
    assert "empty" in message


def test_prompt_over_4000_characters_is_rejected() -> None:
    message = rejected({**SORA, "prompt": "x" * 4001}, "prompt")
    assert "4000" in message
    assert "4001" in message


def test_prompt_of_exactly_4000_characters_is_accepted() -> None:
    # Multi-byte characters count as one character each.
    prompt = "猫" * 3999 + "x"
    assert len(prompt) == 4000
    assert validate_task({**SORA, "prompt": prompt}).prompt == prompt


def test_prompt_with_nul_character_is_rejected() -> None:
    message = rejected({**SORA, "prompt": "a cat\x00 on a roof"}, "prompt")
    assert "NUL" in message


def test_prompt_with_lone_surrogate_is_rejected() -> None:
    rejected({**SORA, "prompt": "a cat \ud800"}, "prompt")


@pytest.mark.parametrize("model", ["sora-2", "veo-flash", "veo-pro"])
def test_unicode_prompt_with_quotes_and_sql_is_kept_byte_for_byte(model: str) -> None:
    prompt = '  一只猫 "cinematic" \'; DROP TABLE video_tasks; -- 🎬\\n  '
    spec = validate_task({"prompt": prompt, "model": model})
    assert spec.prompt == prompt
    assert spec.prompt.encode("utf-8") == prompt.encode("utf-8")


# --- model -------------------------------------------------------------------------------


def test_model_missing_is_rejected() -> None:
    message = rejected({"prompt": "a cat"}, "model")
    assert "required" in message


@pytest.mark.parametrize("model", ["sora-1", "veo3.1-fast", "Sora-2", "", 2])
def test_unknown_model_is_rejected(model: object) -> None:
    message = rejected({"prompt": "a cat", "model": model}, "model")
    for known in ("sora-2", "veo-flash", "veo-pro"):
        assert known in message


# --- aspect_ratio ------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["sora-2", "veo-flash", "veo-pro"])
@pytest.mark.parametrize("aspect_ratio", ["1:1", "16x9", "9/16", "", 1.77])
def test_aspect_ratio_other_than_9_16_or_16_9_is_rejected(model: str, aspect_ratio: object) -> None:
    message = rejected(
        {"prompt": "a cat", "model": model, "aspect_ratio": aspect_ratio}, "aspect_ratio"
    )
    assert "9:16" in message and "16:9" in message


@pytest.mark.parametrize(
    ("model", "expected"), [("sora-2", "9:16"), ("veo-flash", "16:9"), ("veo-pro", "16:9")]
)
def test_aspect_ratio_defaults_per_model(model: str, expected: str) -> None:
    assert validate_task({"prompt": "a cat", "model": model}).aspect_ratio == expected


@pytest.mark.parametrize("model", ["sora-2", "veo-flash", "veo-pro"])
@pytest.mark.parametrize("aspect_ratio", ["9:16", "16:9"])
def test_either_aspect_ratio_is_accepted_for_every_model(model: str, aspect_ratio: str) -> None:
    spec = validate_task({"prompt": "a cat", "model": model, "aspect_ratio": aspect_ratio})
    assert spec.aspect_ratio == aspect_ratio


# --- duration ----------------------------------------------------------------------------


def test_sora_duration_defaults_to_10() -> None:
    assert validate_task(SORA).duration == 10


@pytest.mark.parametrize("duration", [10, 15])
def test_sora_duration_10_or_15_is_accepted(duration: int) -> None:
    assert validate_task({**SORA, "duration": duration}).duration == duration


@pytest.mark.parametrize("duration", [12, 5, 0, -10, 20, "10", True, False, 10.5])
def test_sora_duration_other_than_10_or_15_is_rejected(duration: object) -> None:
    message = rejected({**SORA, "duration": duration}, "duration")
    assert "10 or 15" in message


@pytest.mark.parametrize("model", ["veo-flash", "veo-pro"])
@pytest.mark.parametrize("duration", [10, 15, 8])
def test_any_duration_on_veo_is_rejected(model: str, duration: int) -> None:
    message = rejected({"prompt": "a cat", "model": model, "duration": duration}, "duration")
    assert "sora-2 only" in message


@pytest.mark.parametrize("model", ["veo-flash", "veo-pro"])
def test_veo_has_no_duration(model: str) -> None:
    assert validate_task({"prompt": "a cat", "model": model}).duration is None


# --- URLs --------------------------------------------------------------------------------

BAD_URLS = [
    "ftp://example.com/image.jpg",
    "example.com",
    "example.com/image.jpg",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "https://",
    "https://example.com/a b.jpg",
    "",
    42,
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_reference_url_that_is_not_http_or_https_is_rejected(url: object) -> None:
    message = rejected({**SORA, "reference_url": url}, "reference_url")
    assert "http(s)" in message


@pytest.mark.parametrize("url", ["http://example.com/a.jpg", "https://example.com/a.jpg?x=1"])
def test_http_and_https_reference_urls_are_accepted(url: str) -> None:
    assert validate_task({**SORA, "reference_url": url}).reference_url == url


@pytest.mark.parametrize("meta", [[URL], "https://example.com/a.jpg", 3])
def test_meta_that_is_not_an_object_is_rejected(meta: object) -> None:
    message = rejected({**VEO, "meta": meta}, "meta")
    assert "object" in message


@pytest.mark.parametrize("key", ["firstFrameUrl", "lastFrameUrl"])
@pytest.mark.parametrize("url", ["ftp://example.com/f.jpg", "example.com", "javascript:void(0)"])
def test_meta_frame_url_that_is_not_http_or_https_is_rejected(key: str, url: str) -> None:
    meta = {"firstFrameUrl": URL, "lastFrameUrl": URL, key: url}
    rejected({**VEO, "meta": meta}, f"meta.{key}")


@pytest.mark.parametrize("urls", [URL, {"0": URL}, 1])
def test_meta_urls_that_is_not_a_list_is_rejected(urls: object) -> None:
    message = rejected({**VEO, "meta": {"urls": urls}}, "meta.urls")
    assert "list" in message


def test_meta_urls_bad_item_is_named_by_index() -> None:
    urls = ["https://example.com/1.jpg", "ftp://example.com/2.jpg", "https://example.com/3.jpg"]
    rejected({**VEO, "meta": {"urls": urls}}, "meta.urls[1]")


def test_meta_urls_more_than_3_is_rejected() -> None:
    urls = [f"https://example.com/{i}.jpg" for i in range(4)]
    message = rejected({**VEO, "meta": {"urls": urls}}, "meta.urls")
    assert "3" in message


def test_meta_urls_up_to_3_are_accepted() -> None:
    urls = [f"https://example.com/{i}.jpg" for i in range(3)]
    assert validate_task({**VEO, "meta": {"urls": urls}}).reference_urls == urls


def test_veo_reference_urls_fall_back_to_reference_url() -> None:
    spec = validate_task({**VEO, "reference_url": URL})
    assert spec.reference_urls == [URL]
    with_meta = validate_task(
        {**VEO, "reference_url": URL, "meta": {"urls": ["https://example.com/m.jpg"]}}
    )
    assert with_meta.reference_urls == ["https://example.com/m.jpg"]


# --- shape of the task -------------------------------------------------------------------


@pytest.mark.parametrize("field", ["aspectRatio", "referenceUrl", "size", "id"])
def test_unknown_top_level_field_is_rejected(field: str) -> None:
    message = rejected({**SORA, field: "9:16"}, field)
    assert "unknown field" in message


def test_unknown_fields_are_allowed_for_rows_read_back() -> None:
    row = {**SORA, "aspectRatio": "16:9", "id": "t-1", "status": "pending"}
    spec = validate_task(row, allow_unknown_fields=True)
    # The typo is ignored, not taken as the aspect ratio.
    assert spec.aspect_ratio == "9:16"
    assert spec.prompt == SORA["prompt"]


def test_rows_read_back_are_still_checked_by_every_rule() -> None:
    rejected({**SORA, "duration": 12, "id": "t-1"}, "duration", allow_unknown_fields=True)


@pytest.mark.parametrize("task", [None, "a cat", ["a cat", "sora-2"], 3, [SORA]])
def test_task_that_is_not_an_object_is_rejected(task: object) -> None:
    message = rejected(task, "task")
    assert "object" in message
