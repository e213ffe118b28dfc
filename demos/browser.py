"""The comparison page in a real browser: Debian's `chromium` (scripts/setup.sh installs it) driven by Playwright
through `executable_path`, so nothing downloads a browser. The browser test and `scripts/demo_screenshot.py` use
these steps; elements are found by the `elem_id`s `demos.compare_app.build_app` gives them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

__all__ = [
    "CHROMIUM", "chromium_page", "clear_audio", "distinct_glyphs", "open_demo", "pick_example", "record",
    "run_comparison", "transcripts", "upload",
]  # fmt: skip

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package `chromium`
TIMEOUT_MS = 120_000  # a comparison on 2 CPU cores: every model transcribes the clip in turn


@contextmanager
def chromium_page(
    width: int = 1400,
    height: int = 1000,
    microphone: str | os.PathLike | None = None,
    executable: str | os.PathLike = CHROMIUM,
) -> Iterator[Page]:
    """A page of a headless Chromium of `width` x `height` CSS pixels; the browser closes on exit. With
    `microphone` (a wav file), the page may use a microphone that plays that file in a loop (Chromium's fake capture
    device, as Gradio's own browser tests record)."""
    from playwright.sync_api import sync_playwright

    if not Path(executable).is_file():
        raise FileNotFoundError(f"no Chromium at {executable}: install Debian's `chromium` (scripts/setup.sh does)")
    args, permissions = [], []
    if microphone is not None:
        args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}"]  # fmt: skip
        permissions = ["microphone"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=args)
        try:
            context = browser.new_context(viewport={"width": width, "height": height}, permissions=permissions)
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def open_demo(page: Page, url: str) -> None:
    """Load the page and wait until it is ready for a comparison."""
    page.goto(url)
    page.locator("#compare").wait_for()


def pick_example(page: Page, reference: str) -> None:
    """Click the example whose reference is `reference`; returns once the page has filled in the reference."""
    from playwright.sync_api import expect

    page.locator("#examples tbody tr", has_text=reference).first.click()
    expect(page.locator("#reference textarea")).to_have_value(reference)


def transcripts(page: Page, count: int) -> list[str]:
    """The transcripts the page shows for its first `count` models."""
    return [page.locator(f"#transcript-{index} textarea").input_value() for index in range(count)]


def run_comparison(page: Page, count: int) -> list[str]:
    """Press Compare and wait until the first `count` models (the selected ones) show their results; their
    transcripts."""
    page.locator("#compare").click()
    page.wait_for_function(
        """count => [...Array(count).keys()].every(i => {
            const stats = document.querySelector(`#stats-${i}`);
            return stats && /latency|error/.test(stats.textContent);
        })""",
        arg=count,
    )
    return transcripts(page, count)


def clear_audio(page: Page) -> None:
    """Remove the audio the input holds (an example's), which brings back its upload box."""
    page.locator("#audio").get_by_label("Clear").click()


def record(page: Page, seconds: float) -> None:
    """Record `seconds` from the microphone into the audio input (which must be empty); returns once the recording
    is in the input."""
    audio = page.locator("#audio")
    audio.get_by_label("Record audio").click()
    audio.locator(".record-button").click()
    page.wait_for_timeout(seconds * 1000)
    audio.locator(".stop-button").click()
    audio.get_by_label("Play", exact=True).wait_for()


def distinct_glyphs(page: Page, selector: str, text: str) -> int:
    """How many different drawings the distinct characters of `text` get in the font of the (first) element
    `selector` (its family list and weight, with the browser's fallback). Each character is drawn alone on a canvas and
    the pixels compared: a font that has the characters draws each differently, while a browser without one draws
    every one as the same missing-glyph box ("tofu"), which gives 1."""
    return page.locator(selector).first.evaluate(
        """(element, text) => {
            const style = getComputedStyle(element);
            const canvas = document.createElement("canvas");
            canvas.width = canvas.height = 64;
            const context = canvas.getContext("2d", {willReadFrequently: true});
            const drawings = new Set();
            for (const character of new Set(text)) {
                context.clearRect(0, 0, 64, 64);
                context.font = `${style.fontStyle} ${style.fontWeight} 32px ${style.fontFamily}`;
                context.fillText(character, 8, 48);
                drawings.add(context.getImageData(0, 0, 64, 64).data.join(","));
            }
            return drawings.size;
        }""",
        text,
    )


def upload(page: Page, path: str | os.PathLike) -> None:
    """Choose `path` in the empty audio input's file dialog, as a person uploading it would."""
    page.locator("#audio input[type=file]").set_input_files(str(path))
