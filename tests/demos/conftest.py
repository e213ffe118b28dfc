"""The demo's fixtures: the quick world's models loaded once (the last with an edge export), and one running demo
server over them."""

from __future__ import annotations

import pytest

from demos.config import DemoConfig

# small enough that the browser test can send a file over it; the examples (about 100 KB) fit
MAX_FILE_SIZE = "300kb"


@pytest.fixture(scope="session")
def world_export(quick_world, tmp_path_factory):
    """(model folder, its f16 edge export) for the quick world's last model, exported once (outside the world, which
    tests never write into)."""
    from funasr_swap.export import export_edge
    from funasr_swap.miniature import read_index

    folder = quick_world / read_index(quick_world)[-1].folder
    export = tmp_path_factory.mktemp("demo-export") / "edge"
    export_edge(folder, export, "f16")
    return folder, export


@pytest.fixture(scope="session")
def world_models(quick_world, world_export):
    """The quick world's models (`demos.models.load_models` over its index), loaded once; the last one with its edge
    export (f16: its transcripts equal PyTorch's), which gives it an edge column."""
    from demos.models import load_models
    from funasr_swap.miniature import read_index

    folder, export = world_export
    return load_models([quick_world / entry.folder for entry in read_index(quick_world)], {folder: export})


@pytest.fixture(scope="session")
def world_examples(quick_world):
    """The quick world's held-out test clips, as the demo offers them."""
    from demos.compare_app import read_examples
    from funasr_swap.miniature import held_out_manifest

    return read_examples(held_out_manifest(quick_world), DemoConfig().max_examples)


@pytest.fixture(scope="session")
def demo_config(tmp_path_factory):
    # few new tokens: the quick world's models are untrained and rarely stop on their own
    return DemoConfig(
        max_file_size=MAX_FILE_SIZE,
        max_audio_seconds=10.0,
        max_new_tokens=12,
        temp_dir=tmp_path_factory.mktemp("demo-temp"),
    )


@pytest.fixture(scope="session")
def demo_server(world_models, world_examples, demo_config):
    """The demo over the quick world, served on 127.0.0.1 in a thread for the session: (app, local URL)."""
    from demos.compare_app import build_app, launch

    with pytest.MonkeyPatch.context() as env:  # build_app points Gradio's temp folder here: restored afterwards
        env.setenv("GRADIO_TEMP_DIR", str(demo_config.temp_dir))
        env.setenv("GRADIO_EXAMPLES_CACHE", str(demo_config.temp_dir / "examples"))
        app = build_app(world_models, world_examples, demo_config)
        url = launch(app, demo_config, block=False, quiet=True)
        yield app, url
        app.close()
