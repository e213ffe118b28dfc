"""The page in a real browser: Debian's chromium driven by Playwright (`demos.browser`), against the running demo."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from playwright.sync_api import expect

from demos.browser import (
    CHROMIUM,
    chromium_page,
    clear_audio,
    distinct_glyphs,
    open_demo,
    pick_example,
    record,
    run_comparison,
)  # fmt: skip
from demos.browser import upload as upload_file
from funasr_swap.synth import sentences

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed (scripts/setup.sh)"),
]


def test_a_person_compares_an_example_and_is_told_a_file_is_too_large(
    demo_server, world_models, world_examples, tmp_path
):
    from gradio_client import Client, handle_file

    _, url = demo_server
    example, names = world_examples[0], [m.name for m in world_models]
    api = Client(url, verbose=False).predict(handle_file(str(example.audio)), example.text, names, api_name="/compare")
    expected = [api[2][name]["text"] for name in names]
    too_large = tmp_path / "too-large.wav"  # 384 KB, over the fixture's 300 KB max_file_size
    soundfile.write(too_large, np.full(12 * 16000, 0.1, np.float32), 16000)

    with chromium_page() as page:
        open_demo(page, url)
        pick_example(page, example.text)
        shown = run_comparison(page, len(names))
        page.screenshot(path=tmp_path / "compare.png", full_page=True)
        assert shown == expected
        ranking = page.locator("#ranking").inner_text()
        assert all(name in ranking for name in names)
        assert "CER" in page.locator("#stats-0").inner_text()
        # the last model's edge column (conftest: its f16 export): the export's transcript, equal to PyTorch's
        last, edge = len(names) - 1, api[2][names[-1]]["edge"]
        assert "· edge" in page.locator(f"#edge-card-{last}").inner_text()
        assert page.locator(f"#edge-transcript-{last} textarea").input_value() == edge["text"] == shown[-1]
        assert "equals PyTorch's ✓" in page.locator(f"#edge-stats-{last}").inner_text()
        page.locator(f"#edge-card-{last}").screenshot(path=tmp_path / "edge-card.png")

        clear_audio(page)
        upload_file(page, too_large)
        page.get_by_text("exceed the maximum allowed size").wait_for()
        page.screenshot(path=tmp_path / "too-large.png")

        # a Chinese transcript (as the corpus builder writes Mandarin) is drawn, not boxes: needs a CJK font
        chinese, reference = sentences("zh", 1, seed=0)[0], page.locator("#reference textarea")
        reference.fill(chinese)
        reference.screenshot(path=tmp_path / "chinese.png")
        assert distinct_glyphs(page, "#reference textarea", chinese) == len(set(chinese)), (
            "Chinese drawn as boxes: install a CJK font (fonts-noto-cjk; scripts/setup.sh does)"
        )

        page.get_by_role("tab", name="Prompts").click()
        placeholder = world_models[0].processor.audio_token
        page.locator("span[title^='audio ']", has_text=placeholder).first.wait_for()
    assert (tmp_path / "compare.png").stat().st_size > 0
    print(f"screenshots in {tmp_path}")


def test_a_person_records_from_the_microphone_and_compares(demo_server, demo_config, world_models, world_examples):
    _, url = demo_server
    before = set(demo_config.temp_dir.rglob("*.wav"))
    with chromium_page(microphone=world_examples[0].audio) as page:  # the fake microphone plays a test clip
        open_demo(page, url)
        pick_example(page, world_examples[1].text)  # a reference that the recording must not be scored against
        clear_audio(page)
        record(page, 2.0)
        expect(page.locator("#reference textarea")).to_have_value("")  # the page clears it (waits for that)
        shown = run_comparison(page, len(world_models))
        stats = [page.locator(f"#stats-{i}").inner_text() for i in range(len(world_models))]
    assert all("latency" in s and "CER" not in s for s in stats), stats
    assert all(isinstance(text, str) for text in shown)
    assert set(demo_config.temp_dir.rglob("*.wav")) - before  # the recording was uploaded into the temp folder


def test_distinct_glyphs_tells_drawn_characters_from_boxes():
    chinese = sentences("zh", 1, seed=0)[0]
    private_use = "".join(map(chr, range(0xE000, 0xE008)))  # no font draws these: every one is the same box
    with chromium_page() as page:
        page.set_content('<p id="text" style="font-family: sans-serif">text</p>')
        assert distinct_glyphs(page, "#text", "abcdef") == 6
        assert distinct_glyphs(page, "#text", private_use) == 1
        assert distinct_glyphs(page, "#text", chinese) == len(set(chinese))  # a CJK font is installed
