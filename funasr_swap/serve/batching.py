"""Requests that arrive together, transcribed together: a bounded queue, and one worker thread that runs the model.

The first request waits at most `max_wait_seconds` for others to join it (fewer when the batch fills first); while
the worker runs a batch, new requests queue up and form the next one, so under load the batches grow by themselves.
Batch-mates must share a task (language, hotwords and whether token times are asked: one `transcribe` call takes one
prompt), so a batch splits into
one model call per task. A full queue turns a request away at once (`QueueFull`) rather than making it wait unseen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from funasr_swap.asr_io import Transcript
from funasr_swap.serve.recognizers import Transcribe

__all__ = ["BatchingQueue", "QueueFull"]

log = logging.getLogger("funasr_swap.serve")


class QueueFull(Exception):
    """The queue holds `queue_size` requests already."""


@dataclass(frozen=True)
class Task:
    """What batch-mates share: the prompt, and whether they want token times."""

    language: str | None
    hotwords: tuple[str, ...]
    timestamps: bool = False


@dataclass
class Job:
    waveform: np.ndarray
    task: Task
    result: asyncio.Future = field(repr=False)


class BatchingQueue:
    """Collects requests into batches and runs `transcribe` on them in one worker thread; start it with `start()`
    inside the event loop, stop it with `close()`.

    `batch_sizes` counts the model calls by their number of clips (the server's log has each call)."""

    def __init__(self, transcribe: Transcribe, max_batch_size: int, max_wait_seconds: float, queue_size: int) -> None:
        self._transcribe = transcribe
        self.max_batch_size, self.max_wait_seconds = max_batch_size, max_wait_seconds
        self._queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=queue_size)
        self._arrived = asyncio.Event()  # set by each submit: the collector waits on it, never on the queue itself
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="funasr-swap-serve")
        self._collector: asyncio.Task | None = None
        self.batch_sizes: Counter[int] = Counter()  # bounded: one key per size up to max_batch_size

    def start(self) -> None:
        self._collector = asyncio.get_running_loop().create_task(self._run())

    async def submit(
        self, waveform: np.ndarray, language: str | None, hotwords: Sequence[str], timestamps: bool = False
    ) -> Transcript:
        """The transcript of `waveform` (with its token times if `timestamps`) once its batch has run; QueueFull when
        the queue is full. An exception of the model call (a hotword spelling a control token, for one) is raised
        here, in every batch-mate's request of the same task."""
        job = Job(waveform, Task(language, tuple(hotwords), timestamps), asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull from None
        self._arrived.set()
        return await job.result

    async def close(self) -> None:
        """Stop collecting, let the running batch finish, and fail what still waits (a shutdown past its grace)."""
        if self._collector is not None:
            self._collector.cancel()
            await asyncio.gather(self._collector, return_exceptions=True)
        await asyncio.to_thread(self._worker.shutdown, wait=True)
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.result.done():
                job.result.set_exception(RuntimeError("the server is shutting down"))

    async def _run(self) -> None:
        while True:
            jobs = [job for job in await self._collect() if not job.result.done()]  # done: its client went away
            for task in dict.fromkeys(job.task for job in jobs):
                await self._run_task(task, [job for job in jobs if job.task == task])

    async def _collect(self) -> list[Job]:
        """The first waiting job, and those that join it within `max_wait_seconds`, up to `max_batch_size`."""
        loop = asyncio.get_running_loop()
        jobs = [await self._queue.get()]
        deadline = loop.time() + self.max_wait_seconds
        while len(jobs) < self.max_batch_size:
            try:
                jobs.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return jobs

    async def _run_task(self, task: Task, jobs: list[Job]) -> None:
        began = time.perf_counter()
        try:
            transcripts = await asyncio.get_running_loop().run_in_executor(
                self._worker,
                self._transcribe,
                [job.waveform for job in jobs],
                task.language,
                task.hotwords,
                task.timestamps,
            )
        except Exception as error:  # the request's fault or the model's: every batch-mate gets it, the server goes on
            for job in jobs:
                if not job.result.done():
                    job.result.set_exception(error)
            return
        finally:
            self.batch_sizes[len(jobs)] += 1
        log.info("batch of %d clip(s) in %.2f s", len(jobs), time.perf_counter() - began)
        for job, transcript in zip(jobs, transcripts):
            if not job.result.done():
                job.result.set_result(transcript)
