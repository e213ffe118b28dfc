"""The Gradio comparison demo (`funasr-swap demo`): a thin layer over funasr_swap's public API.

`config` (its settings), `models` (loading the models and their cards), `compare` (transcribing one clip with each
model and scoring it), `prompt_view` (each model's ASR prompt, token by token), `compare_app` (the page and its
server), `browser` (driving the page in Chromium, for the tests and the README's screenshot).
"""
