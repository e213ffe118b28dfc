"""Transcribe with an exported folder (`funasr-swap export`): numpy features, onnxruntime for the audio tower and
adaptor, llama.cpp (through llama-cpp-python's low-level API) for the LLM; torch is never imported.

Greedy, several clips at a time as llama.cpp sequences: each clip's prompt ids before the audio go in as tokens, the
adaptor's rows as embeddings (`llama_batch.embd`), the ids after the audio as tokens, each in its own sequence; then
one batch per step carries every unfinished clip's argmax token, each clip leaving the batch at its first stop id, as
`funasr_swap.transcribe.transcribe` decodes with `num_beams=1`. The batches are numpy arrays llama.cpp reads in place
(`_Batch`): a step is one `llama_decode`, one argmax over the logits' rows and a few array writes, no Python loop over
clips or positions. Text positions go in as token ids, so the runtime needs no embedding table; the rows are divided
by the LLM's embedding scale first, because llama.cpp multiplies injected rows by it as it does token rows (Gemma-2:
sqrt(hidden_size)) and transformers does not.

Token timestamps (an export with the CTC branch): audio.onnx gives the tower's outputs beside the rows, ctc.onnx
turns them into the branch's log-posteriors, `tokenizers` reads the transcript in the branch's tokens, and
`funasr_swap.timestamps` aligns the two, as `funasr_swap.transcribe.clip_timestamps` does with torch.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from funasr_swap.asr_io import DEFAULT_MAX_AUDIO_SECONDS, DEFAULT_MAX_NEW_TOKENS, AudioSource, Transcript, load_sources
from funasr_swap.edge.config import EDGE_CONFIG, EdgeConfig, TaskPrompt, read_edge_config
from funasr_swap.edge.features import fbank, lfr_stack, num_lfr_frames
from funasr_swap.timestamps import TokenTime, lfr_frame_seconds, token_timestamps

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CONTEXT", "EdgeModel", "transcribe"]

DEFAULT_CONTEXT = 2048  # the first context (prompt + audio rows + answer; 60 s of audio is 1,000 rows); it grows
DEFAULT_BATCH_SIZE = 8  # clips decoded together (llama.cpp sequences), as `transcribe`'s batch_size


def _import_runtime():
    try:
        import llama_cpp
        import onnxruntime
    except ImportError as error:
        raise ImportError(
            f"the edge runtime needs onnxruntime and llama-cpp-python ({error}); install them with "
            "`pip install 'funasr-swap[edge]'` (scripts/setup.sh does)"
        ) from error
    return llama_cpp, onnxruntime


def _quiet_llama_logs(llama_cpp) -> None:
    """llama.cpp logs every load to stderr; keep errors only (once per process, the callback kept alive)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            if level == _GGML_LOG_LEVEL_ERROR:
                os.write(2, text)

        _LOG_CALLBACK = callback
        llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


_LOG_CALLBACK = None
_GGML_LOG_LEVEL_ERROR = 4  # ggml.h's enum ggml_log_level, which llama-cpp-python does not export


def _onnx_session(onnxruntime, path: Path, threads: int):
    """onnxruntime's session of `path`; ValueError naming it when onnxruntime cannot load it (a truncated file)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime's errors (InvalidProtobuf, Fail, ...) share no base but Exception
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{path}: onnxruntime cannot load it ({reason}); export the model again") from None


class _Batch:
    """A `llama_batch` over numpy arrays that the runtime writes in place: `size` inputs, token ids or (`width` > 0)
    embedding rows, each with its position, its one sequence id and whether llama.cpp keeps its logits. Owns its
    memory (no `llama_batch_init` / `llama_batch_free`)."""

    def __init__(self, llama_cpp, size: int, width: int = 0):
        self.token = np.zeros(size, np.int32)
        self.embd = np.zeros((size, width), np.float32)
        self.pos = np.zeros(size, np.int32)
        self.seq = np.zeros(size, np.int32)
        self.logits = np.zeros(size, np.int8)
        self._n_seq_id = np.ones(size, np.int32)
        # llama_batch.seq_id is one pointer per input to its sequence ids: here each to its slot of `seq`
        self._seq_pointers = self.seq.ctypes.data + self.seq.itemsize * np.arange(size, dtype=np.uintp)

        def pointer(array: np.ndarray, kind):
            return array.ctypes.data_as(ctypes.POINTER(kind))

        self.struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=None if width else pointer(self.token, llama_cpp.llama_token),
            embd=pointer(self.embd, ctypes.c_float) if width else None,
            pos=pointer(self.pos, llama_cpp.llama_pos),
            n_seq_id=pointer(self._n_seq_id, ctypes.c_int32),
            seq_id=pointer(self._seq_pointers, ctypes.POINTER(llama_cpp.llama_seq_id)),
            logits=pointer(self.logits, ctypes.c_int8),
        )

    def fill(self, count: int, start: int, seq: int, logits: bool) -> None:
        """Inputs `[:count]` at positions `start...` of sequence `seq`, logits kept for the last one if `logits`."""
        self.pos[:count] = np.arange(start, start + count)
        self.seq[:count] = seq
        self.logits[:count] = 0
        self.logits[count - 1] = logits
        self.struct.n_tokens = count


class EdgeModel:
    """An exported folder, loaded: `config` (edge.json), the ONNX audio session and the llama.cpp model + context.

    Args:
        folder: what `funasr-swap export` wrote.
        threads: CPU threads for onnxruntime and llama.cpp (None: half the logical cores, about the physical ones;
            llama.cpp's threads spin while they wait, so more threads than free cores is far slower, not faster).
        context: llama.cpp's context in tokens at first, per sequence: prompt + audio rows (one per 60 ms) +
            answer. It grows when a clip and its answer need more (`reserve`), so any clip `transcribe` accepts fits.
        sequences: clips decoded together at first (`generate_batch`); grows as `reserve` is asked.

    The parts are checked against each other before llama.cpp or onnxruntime sees any input (ValueError naming the
    file and both values): audio.onnx's feature and row widths, llm.gguf's width, edge.json's; every prompt and stop
    id inside llm.gguf's vocabulary. An export with the CTC branch (edge.json's `ctc`) loads it too, for
    `timestamps`. Use it as a context manager, or call `close()`, to free llama.cpp's memory at once; a constructor
    that fails frees what it made.
    """

    # what close() frees, when made: a constructor that fails part-way leaves the rest None
    _model = _ctx = _tokens = _rows = None

    def __init__(
        self, folder: str | Path, threads: int | None = None, context: int = DEFAULT_CONTEXT, sequences: int = 1
    ):
        llama_cpp, onnxruntime = _import_runtime()
        self._llama = llama_cpp
        # sequence -> the prompt ids before the audio that its cache holds from position 0 (`prefill` reuses them)
        self._held: dict[int, tuple[int, ...]] = {}
        self.folder = Path(folder)
        self.config: EdgeConfig = read_edge_config(self.folder)
        for name in (self.config.audio_model, self.config.llm):
            if not (self.folder / name).is_file():
                raise FileNotFoundError(f"{self.folder / name} is missing: export the model again")
        self._threads = threads or max(1, (os.cpu_count() or 2) // 2)
        self._audio = _onnx_session(onnxruntime, self.folder / self.config.audio_model, self._threads)
        self._ctc = self._ctc_tokenizer = None
        if (ctc := self.config.ctc) is not None:
            from tokenizers import Tokenizer

            for name in (ctc.model, ctc.tokenizer):
                if not (self.folder / name).is_file():
                    raise FileNotFoundError(f"{self.folder / name} is missing: export the model again")
            self._ctc = _onnx_session(onnxruntime, self.folder / ctc.model, self._threads)
            self._ctc_tokenizer = Tokenizer.from_file(str(self.folder / ctc.tokenizer))
        _quiet_llama_logs(llama_cpp)
        llama_cpp.llama_backend_init()
        try:
            self._model = llama_cpp.llama_model_load_from_file(
                str(self.folder / self.config.llm).encode(), llama_cpp.llama_model_default_params()
            )
            if not self._model:
                raise ValueError(f"{self.folder / self.config.llm}: llama.cpp could not load it (see the error above)")
            self._vocab = llama_cpp.llama_model_get_vocab(self._model)
            self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
            self.width = llama_cpp.llama_model_n_embd(self._model)
            self._check_parts()
            self.context = self.sequences = 0
            self.reserve(context, sequences)
        except BaseException:
            self.close()
            raise

    def _check_parts(self) -> None:
        """The widths and ids each part hands another agree (the class docstring); ValueError naming the file."""
        config, folder = self.config, self.folder
        inputs = {i.name: i.shape for i in self._audio.get_inputs()}
        outputs = [o.name for o in self._audio.get_outputs()]
        expected = ["audio_embeds", "encoder_outputs"] if config.ctc else ["audio_embeds"]
        if sorted(inputs) != ["input_features", "input_features_mask"] or outputs[: len(expected)] != expected:
            raise ValueError(
                f"{folder / config.audio_model}: takes {sorted(inputs)} and gives {outputs}; the runtime feeds "
                f"['input_features', 'input_features_mask'] and reads {expected}: export the model again"
            )
        features = config.features.num_mel_bins * config.features.lfr_m
        # a width that is a name (a dynamic axis) is checked on each output instead (audio_rows)
        for what, width, expected in (
            ("takes features", inputs["input_features"][-1], features),
            ("gives rows", self._audio.get_outputs()[0].shape[-1], config.hidden_size),
        ):
            if isinstance(width, int) and width != expected:
                source = "hidden_size" if what == "gives rows" else "features (num_mel_bins x lfr_m)"
                raise ValueError(
                    f"{folder / config.audio_model} {what} {width} wide; {folder / EDGE_CONFIG} says {expected} "
                    f"({source}): the files come from different exports"
                )
        if self.width != config.hidden_size:
            raise ValueError(
                f"{folder / config.llm} is {self.width} wide; {folder / EDGE_CONFIG} says {config.hidden_size} "
                "(hidden_size): the files come from different exports"
            )
        named = [("stop_ids", config.stop_ids)]
        named += [(f"prompts[{i}].{part}", getattr(p, part)) for i, p in enumerate(config.prompts)
                  for part in ("before", "after")]  # fmt: skip
        for name, ids in named:
            if outside := [i for i in ids if not 0 <= i < self._n_vocab]:
                raise ValueError(
                    f"{folder / EDGE_CONFIG}: {name} holds id {outside[0]}, outside {folder / config.llm}'s vocabulary "
                    f"of {self._n_vocab} tokens: the files come from different exports"
                )

    def reserve(self, positions: int, sequences: int = 1) -> None:
        """Make llama.cpp's context hold `sequences` sequences of at least `positions` each (prompt + audio rows +
        answer) and its batches as many inputs; a larger need makes it anew (positions rounded up to 256), a smaller
        one keeps the context there is. Each sequence has its own cache (llama.cpp's `kv_unified` off): a step's
        attention reads its own clip's positions only."""
        if positions <= self.context and sequences <= self.sequences:
            return
        size, sequences = max(-(-positions // 256) * 256, self.context), max(sequences, self.sequences, 1)
        llama_cpp = self._llama
        self._free_context()
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = size * sequences
        params.n_batch = max(size, sequences)
        params.n_seq_max = sequences
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = self._threads
        params.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not self._ctx:
            llm = self.folder / self.config.llm
            raise MemoryError(f"llama.cpp could not make a context of {sequences} x {size} tokens for {llm}")
        self._tokens = _Batch(llama_cpp, params.n_batch)
        self._rows = _Batch(llama_cpp, size, self.width)  # the rows' buffer: size x width floats
        self.context, self.sequences = size, sequences

    def _free_context(self) -> None:
        self._tokens = self._rows = None
        self._held = {}
        if self._ctx:
            self._llama.llama_free(self._ctx)
        self._ctx, self.context, self.sequences = None, 0, 0

    def close(self) -> None:
        """Free llama.cpp's context, batches and model (the object is unusable after)."""
        self._free_context()
        if self._model:
            self._llama.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> EdgeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def audio_rows(self, waveform: np.ndarray) -> np.ndarray:
        """The adaptor's rows `(lfr_frames, hidden_size)` float32 of a mono waveform at the features' rate."""
        return self.audio_outputs(waveform)[0]

    def audio_outputs(
        self, waveform: np.ndarray, encoder_outputs: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`audio_rows` of a waveform, and with `encoder_outputs` the audio tower's outputs `(lfr_frames, encoder
        hidden)` (an export with the CTC branch gives them; None otherwise)."""
        settings = self.config.features
        features = lfr_stack(fbank(waveform, settings), settings.lfr_m, settings.lfr_n)[None]
        mask = np.ones(features.shape[:2], np.int32)
        names = ["audio_embeds", "encoder_outputs"] if encoder_outputs else ["audio_embeds"]
        rows, *encoded = self._audio.run(names, {"input_features": features, "input_features_mask": mask})
        if rows.shape != (1, features.shape[1], self.width):
            raise ValueError(
                f"{self.folder / self.config.audio_model} gave rows of shape {rows.shape} for {features.shape[1]} "
                f"frames; {self.folder / self.config.llm} takes (1, {features.shape[1]}, {self.width})"
            )
        return rows[0], encoded[0][0] if encoded else None

    def require_ctc_branch(self) -> None:
        """FileNotFoundError, one line naming the folder, for an export without the CTC branch."""
        if self._ctc is None or self.config.ctc is None:
            raise FileNotFoundError(
                f"{self.folder} was exported without the CTC branch (no ctc in {EDGE_CONFIG}), which timestamps need; "
                "export a model folder that carries it (`funasr-swap convert` of an original checkpoint keeps it)"
            )

    def timestamps(self, encoder_outputs: np.ndarray, text: str, audio_seconds: float) -> tuple[TokenTime, ...]:
        """Per-token times of `text` over one clip's tower outputs `(frames, encoder hidden)`, as
        `funasr_swap.transcribe.clip_timestamps` gives them: the exported CTC branch's log-posteriors, the text in
        its tokenizer's tokens, forced alignment."""
        self.require_ctc_branch()
        mask = np.ones((1, len(encoder_outputs)), np.int32)
        (log_probs,) = self._ctc.run(None, {"encoder_outputs": encoder_outputs[None], "mask": mask})
        tokenizer, settings = self._ctc_tokenizer, self.config.features
        return token_timestamps(
            log_probs[0], tokenizer.encode(text, add_special_tokens=False).ids, self.config.ctc.blank_id,
            lambda token: tokenizer.decode([token], skip_special_tokens=False),
            lfr_frame_seconds(settings.sampling_rate, settings.frame_samples[1], settings.lfr_n), audio_seconds,
        )  # fmt: skip

    def tokenize(self, text: str) -> list[int]:
        """`text` as the GGUF's tokenizer reads it, special tokens parsed, no BOS added (prompt pieces)."""
        data = text.encode()
        ids = (self._llama.llama_token * (len(data) + 8))()
        count = self._llama.llama_tokenize(self._vocab, data, len(data), ids, len(ids), False, True)
        if count < 0:
            raise ValueError(f"could not tokenize {text[:40]!r}")
        return list(ids[:count])

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids`, special tokens left out (as `skip_special_tokens=True`)."""
        array = (self._llama.llama_token * max(1, len(ids)))(*ids)
        size = 64 + 32 * len(ids)
        buffer = ctypes.create_string_buffer(size)
        count = self._llama.llama_detokenize(self._vocab, array, len(ids), buffer, size, False, False)
        if count < 0:  # the buffer was too small: -count is the size the text needs
            size = -count
            buffer = ctypes.create_string_buffer(size)
            count = self._llama.llama_detokenize(self._vocab, array, len(ids), buffer, size, False, False)
        return buffer.raw[: max(count, 0)].decode("utf-8", errors="replace")

    def _decode(self, batch: _Batch) -> None:
        if self._llama.llama_decode(self._ctx, batch.struct) != 0:
            first = int(batch.pos[0])
            raise RuntimeError(f"llama_decode failed at position {first} ({batch.struct.n_tokens} inputs)")

    def _decode_ids(self, ids: Sequence[int], start: int, logits: bool, seq: int = 0) -> None:
        self._tokens.token[: len(ids)] = ids
        self._tokens.fill(len(ids), start, seq, logits)
        self._decode(self._tokens)

    def prefill(
        self, before: Sequence[int], rows: np.ndarray, after: Sequence[int], room: int = 0, seq: int = 0
    ) -> np.ndarray:
        """Put prompt `before` + audio `rows` + `after` into sequence `seq` (cleared first; with `room` positions left
        for the answer); a copy of the logits `(vocab,)` at its last position. The context grows to fit (`reserve`).

        Every clip of a task has the same `before` (the chat header and instruction, about a third of a short clip's
        prompt), so a sequence that holds it from its last clip keeps it: only the positions after it are cleared
        and decoded again, as llama.cpp's own server reuses a common prompt prefix."""
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"audio rows must be (frames, {self.width}) for {self.folder / self.config.llm}, got "
                             f"{rows.shape}")  # fmt: skip
        for name, ids in (("before", before), ("after", after)):
            if outside := [i for i in ids if not 0 <= i < self._n_vocab]:
                llm = self.folder / self.config.llm
                raise ValueError(f"prompt ids {name} the audio hold {outside[0]}, outside {llm}'s vocabulary of "
                                 f"{self._n_vocab} tokens")  # fmt: skip
        self.reserve(len(before) + len(rows) + len(after) + room, seq + 1)
        held = self._held.pop(seq, None) == tuple(before)  # popped: a failed decode leaves the sequence unknown
        self._llama.llama_memory_seq_rm(self._llama.llama_get_memory(self._ctx), seq, len(before) if held else -1, -1)
        np.divide(rows, np.float32(self.config.audio_embedding_scale), out=self._rows.embd[: len(rows)])
        if not held:
            self._decode_ids(before, 0, False, seq)
        self._held[seq] = tuple(before)
        self._rows.fill(len(rows), len(before), seq, False)
        self._decode(self._rows)
        self._decode_ids(after, len(before) + len(rows), True, seq)
        return self._logits().copy()

    def _logits(self, rows: int | None = None) -> np.ndarray:
        """A view of llama.cpp's logits: the last output's `(vocab,)`, or the first `rows` outputs' `(rows, vocab)`;
        valid until the next decode or `close()`."""
        if rows is None:
            return np.ctypeslib.as_array(self._llama.llama_get_logits_ith(self._ctx, -1), shape=(self._n_vocab,))
        return np.ctypeslib.as_array(self._llama.llama_get_logits(self._ctx), shape=(rows, self._n_vocab))

    def generate(self, before: Sequence[int], rows: np.ndarray, after: Sequence[int], max_new_tokens: int) -> list[int]:
        """Greedy answer ids (the stop id not included) to prompt `before` + audio `rows` + `after`."""
        return self.generate_batch(before, [rows], after, max_new_tokens)[0]

    def generate_batch(
        self, before: Sequence[int], clips: Sequence[np.ndarray], after: Sequence[int], max_new_tokens: int
    ) -> list[list[int]]:
        """Greedy answer ids (the stop id not included) to prompt `before` + each clip's audio rows + `after`, the
        clips decoded together, one llama.cpp sequence each (the module docstring)."""
        count = len(clips)
        self.reserve(len(before) + max((len(r) for r in clips), default=0) + len(after) + max_new_tokens, count)
        first = np.array([int(np.argmax(self.prefill(before, rows, after, max_new_tokens, seq)))
                          for seq, rows in enumerate(clips)], np.int32)  # fmt: skip
        answers = np.zeros((count, max_new_tokens), np.int32)
        lengths = np.full(count, max_new_tokens)
        stops = np.array(self.config.stop_ids, np.int32)
        active = np.arange(count, dtype=np.int32)  # the unfinished clips' sequence ids, in batch order
        positions = np.array([len(before) + len(rows) + len(after) for rows in clips], np.int32)
        batch, tokens = self._tokens, first
        for step in range(max_new_tokens):
            if (stopped := np.isin(tokens, stops)).any():
                lengths[active[stopped]] = step
                active, tokens, positions = active[~stopped], tokens[~stopped], positions[~stopped]
                if not active.size:
                    break
            answers[active, step] = tokens
            if step == max_new_tokens - 1:
                break
            n = active.size
            batch.token[:n], batch.pos[:n], batch.seq[:n], batch.logits[:n] = tokens, positions, active, 1
            batch.struct.n_tokens = n
            self._decode(batch)
            positions = positions + 1
            tokens = self._logits(n).argmax(axis=1).astype(np.int32)
        return [answer[:length].tolist() for answer, length in zip(answers, lengths)]

    def prompt(self, language: str | None, hotwords: Sequence[str], itn: bool) -> tuple[list[int], list[int]]:
        """The ids before and after the audio for a task, as `funasr_swap.transcribe.prompt_ids` builds them."""
        from tokenmap.prompt import refuse_control_text

        for field, texts in (("hotword", hotwords), ("language", [language] if language else [])):
            refuse_control_text(self.config.control_tokens, field, texts, suggest_allow_special_text=False)
        task: TaskPrompt = self.config.prompt(language, itn)
        if not hotwords:
            return task.before, task.after
        slot = task.hotwords
        return self.tokenize(slot.prefix + slot.separator.join(hotwords) + slot.suffix), task.after


def transcribe(
    model: EdgeModel | str | Path,
    audios: Sequence[AudioSource],
    language: str | None = None,
    hotwords: Sequence[str] | None = None,
    itn: bool = True,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS,
    progress: bool | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    timestamps: bool = False,
) -> list[Transcript]:
    """Transcribe `audios` with an exported model: `funasr_swap.transcribe.transcribe`'s inputs (less the processor
    and beams: greedy) and outputs, one `Transcript` per input in input order; `batch_size` clips decoded together.

    Args:
        model: an `EdgeModel`, or the folder `funasr-swap export` wrote (loaded for this call).
        audios, language, hotwords, itn, max_new_tokens, max_audio_seconds, progress, batch_size, timestamps: as
            `transcribe`'s (a Transcript's `seconds` is its batch's wall time divided by the batch's clips, as
            there); timestamps need an export with the CTC branch (FileNotFoundError naming the folder otherwise).
    """
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens} and {batch_size}")
    if not isinstance(model, EdgeModel):
        with EdgeModel(model) as loaded:
            return transcribe(
                loaded, audios, language, hotwords, itn, max_new_tokens, max_audio_seconds, progress, batch_size,
                timestamps,
            )  # fmt: skip
    from tqdm.auto import tqdm

    settings = model.config.features
    rate = settings.sampling_rate
    if timestamps:
        model.require_ctc_branch()
    before, after = model.prompt(language, hotwords or (), itn)
    waveforms = load_sources(
        audios, rate, settings.frame_samples[0], max_audio_seconds, model.config.max_audio_seconds
    )  # fmt: skip
    # one context for the longest clip and its answer, made before the first: none is made anew mid-way
    longest = max((num_lfr_frames(len(w), settings) for w in waveforms), default=0)
    model.reserve(len(before) + longest + len(after) + max_new_tokens, min(batch_size, len(waveforms)))
    results = []
    with tqdm(
        total=len(waveforms), unit="audio", disable=not (progress if progress is not None else len(audios) > 1)
    ) as bar:
        for first in range(0, len(waveforms), batch_size):
            batch = waveforms[first : first + batch_size]
            began = time.perf_counter()
            outputs = [model.audio_outputs(w, encoder_outputs=timestamps) for w in batch]
            answers = model.generate_batch(before, [rows for rows, _ in outputs], after, max_new_tokens)
            texts = [model.detokenize(answer).strip() for answer in answers]
            times = [model.timestamps(encoded, t, len(w) / rate) if timestamps else None
                     for (_, encoded), t, w in zip(outputs, texts, batch)]  # fmt: skip
            share = (time.perf_counter() - began) / len(batch)
            results += [Transcript(t, len(w) / rate, share, len(a), clip_times)
                        for t, w, a, clip_times in zip(texts, batch, answers, times)]  # fmt: skip
            bar.update(len(batch))
    return results
