"""The OpenAI-compatible HTTP surface: `POST /v1/audio/transcriptions` and `GET /v1/models`, on FastAPI and uvicorn
(the web stack Gradio already brings).

Every error, the client's or the server's, is one JSON line in OpenAI's shape, `{"error": {"message", "type",
"param", "code"}}`, with a 4xx status for a bad request (400 unreadable, empty, too short or too long audio, an unknown
response_format or language, timestamps of a model without the CTC branch; 404 another model's name; 413 a file over
the size limit; 503 a full queue) and 500 for the model's own failures; the server keeps serving after each.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from funasr_swap.asr_io import Transcript, load_sources
from funasr_swap.errors import SettingError
from funasr_swap.serve.batching import BatchingQueue, QueueFull, log
from funasr_swap.serve.config import ServeConfig
from funasr_swap.serve.recognizers import Recognizer
from funasr_swap.timestamps import words_of
from tokenmap.prompt import language_name

__all__ = ["GRANULARITIES", "RESPONSE_FORMATS", "ApiError", "bind", "build_app", "hotwords_of", "run", "running"]

RESPONSE_FORMATS = ("json", "text", "verbose_json")
GRANULARITIES = ("word", "segment")  # OpenAI's timestamp_granularities[]; "segment" is refused (build_app says why)
FORM_ROOM = 64 * 1024  # bytes a request may hold beyond the file: the other fields and the multipart boundaries
_HOTWORD_SEPARATORS = re.compile(r"[,，\n]")  # ASCII and full-width commas, newlines
_SERVER_FLAGS = {"max_audio_seconds": "the server's --max-seconds"}  # how a duration error names the limit


class ApiError(Exception):
    """An error response: `status` and OpenAI's error object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return JSONResponse({"error": body}, status_code=self.status)


def hotwords_of(prompt: str | None) -> list[str]:
    """The hotwords of an OpenAI `prompt`: the words or phrases between its commas (ASCII or full-width) and
    newlines, stripped, empty ones dropped ("Fun-ASR, Qwen3" -> ["Fun-ASR", "Qwen3"])."""
    return [word.strip() for word in _HOTWORD_SEPARATORS.split(prompt or "") if word.strip()]


def _transcript_response(transcript: Transcript, response_format: str, language: str | None) -> Response:
    if response_format == "text":
        return PlainTextResponse(transcript.text)
    if response_format == "verbose_json":  # language: the one asked for; None when the model chose
        body = {"task": "transcribe", "language": language, "duration": transcript.audio_seconds,
                "text": transcript.text}  # fmt: skip
        if transcript.timestamps is not None:
            body["words"] = [{"word": w.token, "start": w.start, "end": w.end} for w in words_of(transcript.timestamps)]
        return JSONResponse(body)
    return JSONResponse({"text": transcript.text})


def build_app(recognizer: Recognizer, config: ServeConfig = ServeConfig()) -> FastAPI:
    """The server's app: `recognizer` behind the endpoints, with `config`'s limits and batching. The batching queue
    starts and stops with the app (its lifespan); `app.state.batching.batch_sizes` counts the model calls by
    their number of clips. `recognizer.close()` runs when the app stops."""
    load_sources([], recognizer.sampling_rate, 1, config.max_audio_seconds, recognizer.max_seconds)  # the limit fits
    model_name = config.model_name or recognizer.name
    created = int(time.time())  # OpenAI's model object says when the model was made; here, when it was loaded
    max_bytes = config.max_file_bytes

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batching = BatchingQueue(
            recognizer.transcribe, config.max_batch_size, config.max_wait_ms / 1000, config.queue_size
        )  # fmt: skip
        batching.start()
        app.state.batching = batching
        try:
            yield
        finally:
            await batching.close()
            recognizer.close()

    app = FastAPI(title="funasr-swap", summary="OpenAI-compatible speech to text", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        param = str(first["loc"][-1]) if first.get("loc") else None
        return ApiError(400, f"{param}: {first['msg']}", param=param).response()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return ApiError(error.status_code, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def server_error(request: Request, error: Exception) -> JSONResponse:
        return ApiError(500, f"{type(error).__name__}: {error}", type="server_error").response()

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        """A body announced larger than the file limit allows is refused before it is read (the file's own size is
        checked again once read: a body may come without a length)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes + FORM_ROOM:
            return _too_large("the request", int(length)).response()
        return await call_next(request)

    def _too_large(what: str, size: int) -> ApiError:
        return ApiError(413, f"{what} is {size:,} bytes, over this server's limit of {config.max_file_size} for the "
                        f"file ({max_bytes:,} bytes)", param="file", code="file_too_large")  # fmt: skip

    @app.get("/v1/models")
    async def models() -> dict:
        """The one model this server serves."""
        served = {"id": model_name, "object": "model", "created": created, "owned_by": "funasr-swap"}
        return {"object": "list", "data": [served]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: UploadFile = File(..., description="the audio file: wav, flac, ogg, ... (any rate and channels)"),
        model: str = Form(..., description="the served model's id (GET /v1/models)"),
        language: str | None = Form(None, description="zh, en or ja; none: the model's choice"),
        prompt: str | None = Form(None, description="hotwords, separated by commas"),
        response_format: str = Form("json", description="json, text or verbose_json"),
        timestamp_granularities: list[str] = Form(
            [], alias="timestamp_granularities[]",
            description="word: verbose_json's `words`, each word's start and end in seconds (the model's CTC branch)",
        ),
        stream: bool = Form(False, description="not served: transcripts come whole"),
    ) -> Response:  # fmt: skip
        """Transcribe one audio file, batched with the requests that arrive with it."""
        if model != model_name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {model_name!r}",
                           param="model", code="model_not_found")  # fmt: skip
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format {response_format!r} is not served; choose one of "
                           f"{', '.join(RESPONSE_FORMATS)}", param="response_format")  # fmt: skip
        if stream:
            raise ApiError(400, "streaming is not served: leave stream out, the transcript comes whole", param="stream")
        _check_granularities(timestamp_granularities, response_format)
        if language is not None:
            try:
                language_name(language)
            except ValueError as error:
                raise ApiError(400, str(error), param="language") from None
        data = await file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise _too_large(_named(file.filename, "the file"), file.size or len(data))
        if not data:
            raise ApiError(400, _named(file.filename, "the file is empty (0 bytes)"), param="file")
        try:
            waveform = await run_in_threadpool(recognizer.waveform, data, config.max_audio_seconds)
        except SettingError as error:
            raise ApiError(400, _named(file.filename, error.spelled(_SERVER_FLAGS)), param="file") from None
        except ValueError as error:
            raise ApiError(400, _named(file.filename, str(error)), param="file") from None
        try:
            transcript = await app.state.batching.submit(
                waveform, language, hotwords_of(prompt), timestamps=bool(timestamp_granularities)
            )
        except QueueFull:
            raise ApiError(503, f"the server is busy: {config.queue_size} requests wait already; try again shortly",
                           type="server_error", code="queue_full") from None  # fmt: skip
        except ValueError as error:  # the task: a hotword or language that spells a control token
            raise ApiError(400, str(error), param="prompt") from None
        except Exception as error:  # the model's failure, answered here: unhandled, it would also drop the connection
            log.exception("the model call failed")
            raise ApiError(500, f"{type(error).__name__}: {error}", type="server_error") from None
        return _transcript_response(transcript, response_format, language)

    def _check_granularities(granularities: list[str], response_format: str) -> None:
        """Timestamps are words of verbose_json, from a model with the CTC branch. Segments are refused: OpenAI's
        segment carries decoder statistics (avg_logprob, no_speech_prob, ...) this server does not compute."""
        param = "timestamp_granularities[]"
        if not granularities:
            return
        if unknown := [g for g in granularities if g not in GRANULARITIES]:
            raise ApiError(400, f"timestamp_granularities {unknown[0]!r} is not one of {', '.join(GRANULARITIES)}",
                           param=param)  # fmt: skip
        if "segment" in granularities:
            raise ApiError(400, "segment timestamps are not served (no decoder statistics per segment); ask for "
                           "word", param=param)  # fmt: skip
        if response_format != "verbose_json":
            raise ApiError(400, f"timestamp_granularities needs response_format verbose_json, got {response_format!r}",
                           param=param)  # fmt: skip
        if recognizer.no_timestamps is not None:
            raise ApiError(400, f"no timestamps from {model_name!r}: {recognizer.no_timestamps}", param=param)

    return app


def _named(filename: str | None, message: str) -> str:
    """`message` of `load_sources` about the upload (which it calls "audio #0"), said of the upload's file name."""
    return f"{filename or 'the file'}: {message.removeprefix('audio #0: ')}"


def bind(config: ServeConfig) -> socket.socket:
    """A listening socket at `config.host`:`config.port` (port 0: one the system picks), made before the model loads
    so that a busy port fails at once; a SettingError naming the port."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((config.host, config.port))
    except OSError as error:
        sock.close()
        raise SettingError(f"{{port}} on {config.host} is not free ({error.strerror}): choose another port",
                           port=config.port) from None  # fmt: skip
    sock.listen(2048)
    return sock


def _server(app: FastAPI, log_level: str):
    import uvicorn

    # after Ctrl-C / SIGTERM, up to 30 s for the requests in flight to finish (their batch runs to its end)
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=30))


def run(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve `app` on `sock` until Ctrl-C or SIGTERM: new connections stop, requests in flight finish, then the
    batching queue and the model close."""
    _server(app, log_level).run(sockets=[sock])


@contextlib.contextmanager
def running(app: FastAPI, sock: socket.socket, log_level: str = "warning") -> Iterator[str]:
    """Serve `app` on `sock` in a thread (tests, benchmarks); yields its base URL (`http://host:port`) once it
    accepts requests, and stops it gracefully on exit."""
    server = _server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="funasr-swap-serve", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server stopped as it started; its log says why")
            time.sleep(0.01)
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join()
