"""The README's screenshot of the demo: every model a quickstart built, comparing one of its held-out test clips.

    .venv/bin/python scripts/demo_screenshot.py runs/quickstart -o docs/images/compare_demo.png

Serves the page on 127.0.0.1 (`demos.compare_app.serve`, the defaults of `funasr-swap demo`), picks the example,
runs the comparison in Debian's chromium (`demos.browser`) and saves the whole page once every model has answered.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from demos.browser import chromium_page, open_demo, pick_example, run_comparison
from demos.compare_app import read_examples, serve
from demos.config import DemoConfig
from funasr_swap.miniature import held_out_manifest, read_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart", type=Path, help="the quickstart's folder (its models.json and corpus)")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/images/compare_demo.png"))
    parser.add_argument("--example", type=int, default=0, help="which held-out clip, by its place in the examples")
    args = parser.parse_args()

    entries = read_index(args.quickstart)
    manifest = held_out_manifest(args.quickstart)
    with tempfile.TemporaryDirectory(prefix="funasr-swap-screenshot-") as temp:
        config = DemoConfig(temp_dir=Path(temp))
        example = read_examples(manifest, config.max_examples)[args.example]
        app, url = serve([args.quickstart / e.folder for e in entries], manifest, config, block=False, quiet=True)
        try:
            with chromium_page(width=1400, height=1000) as page:
                open_demo(page, url)
                pick_example(page, example.text)
                shown = run_comparison(page, len(entries))
                args.output.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.output, full_page=True)
        finally:
            app.close()
    print(f"wrote {args.output}: {example.audio.name} ({example.text!r})")
    for entry, text in zip(entries, shown):
        print(f"  {entry.name}: {text!r}")


if __name__ == "__main__":
    main()
