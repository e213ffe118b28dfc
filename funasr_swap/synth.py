"""A reproducible synthetic ASR corpus: seeded sentences spoken by espeak-ng, as 16 kHz wav and JSONL manifests.

`sentences(language, n, seed)` draws distinct sentences from templates over a small vocabulary (names, numbers
1-99, colours, objects, places, times, verbs), in English (lowercase words, numbers spelled out, no punctuation)
and Mandarin (characters only, numbers as Chinese numerals, about 200 distinct characters). The combinations run
into the millions, so a test sentence is new even though its words are not: recognising it needs the audio.

`synthesize(folder, utterances)` speaks them with varied espeak-ng voices (accents x voice variants), speeds and
pitches, and writes:

    folder/clips/<hash>.wav                         16 kHz mono PCM-16; the name hashes (text, voice, speed, pitch)
    folder/train.jsonl, valid.jsonl, test.jsonl     {"audio": "clips/<hash>.wav", "text", "language", "duration"}

Audio paths are relative to the manifest's folder (`funasr_swap.data.load_manifest` resolves them), so the corpus
folder can move. Every sentence occurs once in the corpus, so valid and test sentences are unseen in train. A
clip that exists is reused: rerunning (after a kill, or with more utterances) only speaks what is missing.

Mandarin uses espeak-ng's `cmn-latn-pinyin` voice: in espeak-ng 1.51 (Debian 12) the plain `cmn` voice reads the
pinyin of many characters as English words ("ni three" for 你); both share the character dictionary, and
`cmn-latn-pinyin` speaks its pinyin as Mandarin (espeak-ng issue #1370).

Speed: each utterance costs about 14 ms of CPU (11 ms in espeak-ng, of which about 10 ms is the program loading
its voice data; 3 ms resampling and writing). 10,000 utterances (8 hours of audio) took 138 s with 2 workers on the
2-core development machine while other jobs kept it busy (load 2-5), and should take about 70 s on 2 free cores. One
espeak-ng process reading many lines spends about 5 ms per line, but its output is one waveform that would have to
be cut back into sentences; one process per utterance keeps every clip independent.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from tqdm.auto import tqdm

from funasr_swap.audio import load_audio
from tokenmap.io import atomic_write_lines

__all__ = [
    "LANGUAGES",
    "SAMPLING_RATE",
    "SPLITS",
    "Clip",
    "SynthReport",
    "plan_corpus",
    "sentences",
    "speak",
    "synthesize",
]

LANGUAGES = ("en", "zh")
SPLITS = ("train", "valid", "test")
SAMPLING_RATE = 16000

# --- English: lowercase words, numbers spelled out -------------------------------------------------------------
EN_NAMES = (
    "alice", "bob", "carol", "david", "emma", "frank", "grace", "henry", "isabel", "jack", "kate", "leo",
    "mia", "noah", "olivia", "peter", "rose", "sam", "tom", "victor", "wendy", "zoe",
)  # fmt: skip
EN_COLOURS = ("red", "blue", "green", "yellow", "white", "black", "purple", "orange", "brown", "grey", "pink", "silver")
EN_ADJECTIVES = ("big", "small", "old", "new", "heavy", "light", "clean", "dirty", "pretty", "broken")
EN_OBJECTS = (  # (singular, plural)
    ("apple", "apples"), ("book", "books"), ("cup", "cups"), ("chair", "chairs"), ("table", "tables"),
    ("cat", "cats"), ("dog", "dogs"), ("bird", "birds"), ("flower", "flowers"), ("car", "cars"),
    ("shirt", "shirts"), ("hat", "hats"), ("shoe", "shoes"), ("pen", "pens"), ("umbrella", "umbrellas"),
    ("ball", "balls"), ("fish", "fish"), ("boat", "boats"), ("computer", "computers"), ("phone", "phones"),
    ("box", "boxes"), ("bag", "bags"), ("key", "keys"), ("lamp", "lamps"), ("clock", "clocks"),
    ("bottle", "bottles"), ("cake", "cakes"), ("letter", "letters"), ("window", "windows"), ("house", "houses"),
)  # fmt: skip
EN_PLACES = (
    "the school", "the park", "the shop", "the hospital", "the library", "the station", "the airport", "the beach",
    "the kitchen", "the garden", "the office", "the market", "the museum", "the bank", "the farm",
)  # fmt: skip
EN_TIMES = (  # past or present: the templates that use them are in the past tense
    "today", "yesterday", "this morning", "this evening", "on monday", "on friday", "at noon", "last week",
    "last year", "last night",
)  # fmt: skip
EN_VERBS = (  # (base, past)
    ("buy", "bought"), ("sell", "sold"), ("find", "found"), ("carry", "carried"), ("paint", "painted"),
    ("wash", "washed"), ("bring", "brought"), ("borrow", "borrowed"), ("open", "opened"), ("move", "moved"),
    ("clean", "cleaned"), ("hide", "hid"), ("drop", "dropped"), ("take", "took"), ("fix", "fixed"),
)  # fmt: skip
EN_RELATIONS = ("next to", "under", "behind", "on", "near", "inside", "in front of")
EN_UNITS = ("", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
EN_TEENS = (
    "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
EN_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")

# --- Mandarin: characters only, numbers as numerals; each object carries its measure word ------------------------
ZH_NAMES = (
    "小明", "小红", "小华", "小丽", "李雷", "韩梅梅", "王芳", "张伟", "刘洋", "陈静", "老师", "妈妈", "爸爸", "哥哥",
    "姐姐", "弟弟", "妹妹", "爷爷", "奶奶", "医生",
)  # fmt: skip
ZH_COLOURS = ("红色", "蓝色", "绿色", "黄色", "白色", "黑色", "紫色", "灰色")
ZH_ADJECTIVES = ("大", "小", "旧", "新", "漂亮", "干净", "便宜", "可爱")
ZH_OBJECTS = (  # (noun, measure word)
    ("书", "本"), ("苹果", "个"), ("杯子", "个"), ("椅子", "把"), ("桌子", "张"), ("猫", "只"), ("狗", "只"),
    ("鸟", "只"), ("花", "朵"), ("车", "辆"), ("衣服", "件"), ("帽子", "顶"), ("鞋", "双"), ("笔", "支"),
    ("伞", "把"), ("球", "个"), ("鱼", "条"), ("船", "条"), ("电脑", "台"), ("手机", "部"), ("面包", "个"),
    ("蛋糕", "块"), ("钥匙", "把"), ("包", "个"), ("钟", "个"), ("瓶子", "个"), ("信", "封"), ("箱子", "个"),
)  # fmt: skip
ZH_PLACES = (
    "学校", "公园", "商店", "医院", "图书馆", "车站", "机场", "海边", "厨房", "花园", "办公室", "市场", "博物馆",
    "银行", "农场",
)  # fmt: skip
ZH_TIMES = ("今天", "昨天", "前天", "早上", "晚上", "下午", "中午", "周末", "上个星期", "去年")  # past: with 了
ZH_VERBS = ("买", "卖", "找到", "拿", "画", "洗", "带", "借", "打开", "搬", "擦", "藏", "送", "修")
ZH_RELATIONS = ("旁边", "下面", "后面", "上面", "附近", "里面", "前面")
ZH_DIGITS = ("", "一", "二", "三", "四", "五", "六", "七", "八", "九")

# --- Voices ------------------------------------------------------------------------------------------------------
# espeak-ng accents and voice variants (`espeak-ng --voices`, `--voices=variant`); a voice is "accent+variant".
VOICES = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc"),
    "zh": ("cmn-latn-pinyin",),  # not `cmn`: see the module docstring
}
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
SPEEDS = {"en": (140, 200), "zh": (160, 220)}  # words per minute (espeak's -s); its Mandarin is slow at 175
PITCHES = (25, 75)  # espeak's -p, 0-99, default 50


def _en_number(n: int) -> str:
    if n < 10:
        return EN_UNITS[n]
    if n < 20:
        return EN_TEENS[n - 10]
    return f"{EN_TENS[n // 10]} {EN_UNITS[n % 10]}".strip()


def _zh_number(n: int) -> str:
    """1-99 as Chinese numerals, before a measure word (so 2 is 两, but 12 and 22 end in 二)."""
    if n == 2:
        return "两"
    tens, units = divmod(n, 10)
    if tens == 0:
        return ZH_DIGITS[units]
    return ("" if tens == 1 else ZH_DIGITS[tens]) + "十" + ZH_DIGITS[units]


def _en_sentence(rng: random.Random) -> str:
    name, other = rng.sample(EN_NAMES, 2)
    count = rng.randint(1, 99)
    singular, plural = rng.choice(EN_OBJECTS)
    things = f"{rng.choice(EN_COLOURS)} {singular if count == 1 else plural}"
    base, past = rng.choice(EN_VERBS)
    templates = (
        lambda: f"{name} {past} {_en_number(count)} {things} {rng.choice(EN_TIMES)}",
        lambda: (
            f"{name} saw the {rng.choice(EN_ADJECTIVES)} {rng.choice(EN_COLOURS)} {singular} at {rng.choice(EN_PLACES)}"
        ),
        lambda: f"please {base} the {rng.choice(EN_COLOURS)} {singular} before {name} arrives",
        lambda: f"{rng.choice(EN_TIMES)} {name} and {other} went to {rng.choice(EN_PLACES)}",
        lambda: f"there are {_en_number(max(count, 2))} {rng.choice(EN_COLOURS)} {plural} in {rng.choice(EN_PLACES)}",
        lambda: f"{name} wants to {base} the {rng.choice(EN_ADJECTIVES)} {singular}",
        lambda: (
            f"the {rng.choice(EN_COLOURS)} {singular} is {rng.choice(EN_RELATIONS)} the {rng.choice(EN_OBJECTS)[0]}"
        ),
        lambda: f"can you {base} {_en_number(count)} {things} for {name}",
    )
    return rng.choice(templates)()


def _zh_sentence(rng: random.Random) -> str:
    name, other = rng.sample(ZH_NAMES, 2)
    count = _zh_number(rng.randint(1, 99))
    noun, measure = rng.choice(ZH_OBJECTS)
    verb = rng.choice(ZH_VERBS)
    templates = (
        lambda: f"{name}{rng.choice(ZH_TIMES)}{verb}了{count}{measure}{rng.choice(ZH_COLOURS)}的{noun}",
        lambda: f"{name}在{rng.choice(ZH_PLACES)}看见了{rng.choice(ZH_ADJECTIVES)}{rng.choice(ZH_COLOURS)}的{noun}",
        lambda: f"请在{name}来之前{verb}{rng.choice(ZH_COLOURS)}的{noun}",
        lambda: f"{rng.choice(ZH_TIMES)}{name}和{other}一起去了{rng.choice(ZH_PLACES)}",
        lambda: f"{rng.choice(ZH_PLACES)}里有{count}{measure}{rng.choice(ZH_COLOURS)}的{noun}",
        lambda: f"{name}想{verb}那{measure}{rng.choice(ZH_ADJECTIVES)}的{noun}",
        lambda: f"{rng.choice(ZH_COLOURS)}的{noun}在{rng.choice(ZH_OBJECTS)[0]}的{rng.choice(ZH_RELATIONS)}",
        lambda: f"你能帮{name}{verb}{count}{measure}{noun}吗",
    )
    return rng.choice(templates)()


_GENERATORS = {"en": _en_sentence, "zh": _zh_sentence}


def _check_language(language: str) -> None:
    if language not in _GENERATORS:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}; got {language!r}")


def sentences(language: str, n: int, seed: int = 0) -> list[str]:
    """`n` distinct sentences in `language` ("en" or "zh"), the same for the same `(language, n, seed)`.

    Draws are sequential, so `sentences(lang, n, seed)` is a prefix of `sentences(lang, m, seed)` for m > n.
    English is lowercase words without punctuation; Mandarin is characters without punctuation or spaces.
    """
    _check_language(language)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"sentences:{language}:{seed}")  # a str seed hashes with sha512: stable across runs
    found: dict[str, None] = {}  # insertion-ordered set
    for _ in range(100 * n + 1000):  # the space holds millions: this bound only stops a runaway request
        if len(found) == n:
            return list(found)
        found.setdefault(_GENERATORS[language](rng))
    raise ValueError(f"found only {len(found)} distinct {language} sentences, {n} requested; use fewer")


@dataclass(frozen=True)
class Clip:
    """One planned utterance: what is said, by which espeak-ng voice, and the split it belongs to."""

    text: str
    language: str
    split: str
    voice: str  # espeak-ng -v, e.g. "en-gb+f3"
    speed: int  # espeak-ng -s, words per minute
    pitch: int  # espeak-ng -p, 0-99

    @property
    def filename(self) -> str:
        """`clips/<hash>.wav`: the same text, voice, speed and pitch give the same file, which is then reused."""
        key = json.dumps([self.text, self.voice, self.speed, self.pitch, SAMPLING_RATE], ensure_ascii=False)
        return f"clips/{hashlib.sha1(key.encode()).hexdigest()[:16]}.wav"


def _split_sizes(n: int, valid_fraction: float, test_fraction: float, language: str) -> tuple[int, int]:
    """(valid, test) counts of one language's `n` sentences; a non-zero fraction gets at least one."""
    valid, test = (0 if f == 0 else max(1, round(n * f)) for f in (valid_fraction, test_fraction))
    if n - valid - test < 1:
        raise ValueError(
            f"{n} {language} utterance(s) leave none for train after {valid} valid and {test} test; "
            "ask for more utterances or smaller fractions"
        )
    return valid, test


def plan_corpus(
    utterances: int,
    languages: Sequence[str] = LANGUAGES,
    *,
    seed: int = 0,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
) -> list[Clip]:
    """The clips of a corpus, deterministic in its arguments.

    `utterances` are shared evenly between `languages` (the first ones get the remainder). Each language's sentences
    (`sentences(language, n, seed)`, all distinct) go first to test, then valid, then train, so no valid or test
    sentence occurs in train. Voice (accent + variant), speed and pitch are drawn per clip from their own stream.
    """
    if not languages or len(set(languages)) != len(languages):
        raise ValueError(f"languages must be distinct and non-empty; got {list(languages)}")
    for language in languages:
        _check_language(language)
    for name, fraction in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}")
    clips = []
    for index, language in enumerate(languages):
        n = utterances // len(languages) + (index < utterances % len(languages))
        valid, test = _split_sizes(n, valid_fraction, test_fraction, language)
        rng = random.Random(f"voices:{language}:{seed}")
        for position, text in enumerate(sentences(language, n, seed)):
            split = "test" if position < test else "valid" if position < test + valid else "train"
            variant = rng.choice(VARIANTS)
            voice = rng.choice(VOICES[language]) + (f"+{variant}" if variant else "")
            clips.append(Clip(text, language, split, voice, rng.randint(*SPEEDS[language]), rng.randint(*PITCHES)))
    return clips


def speak(text: str, voice: str, speed: int = 175, pitch: int = 50) -> np.ndarray:
    """espeak-ng's rendering of `text` as a mono float32 waveform at 16 kHz (espeak speaks at 22.05 kHz)."""
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0 or not result.stdout:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.decode().strip()}")
    return load_audio(result.stdout, SAMPLING_RATE)


def _make_clip(clip: Clip, folder: Path) -> tuple[float, bool]:
    """(duration in seconds, whether it was synthesised now) of `clip`'s wav, written atomically if missing."""
    path = folder / clip.filename
    if path.exists():
        return soundfile.info(path).duration, False
    waveform = speak(clip.text, clip.voice, clip.speed, clip.pitch)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".wav", dir=path.parent)
    os.close(fd)
    try:
        soundfile.write(tmp, waveform, SAMPLING_RATE, subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(waveform) / SAMPLING_RATE, True


@dataclass(frozen=True)
class SynthReport:
    """What `synthesize` wrote."""

    manifests: dict[str, Path]  # split -> manifest path
    counts: dict[tuple[str, str], int]  # (split, language) -> utterances
    hours: dict[tuple[str, str], float]  # (split, language) -> hours of audio
    synthesized: int  # clips spoken in this call
    reused: int  # clips found from an earlier call
    seconds: float  # wall time of this call


def synthesize(
    folder: str | os.PathLike,
    utterances: int,
    languages: Sequence[str] = LANGUAGES,
    *,
    seed: int = 0,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    workers: int | None = None,
    progress: bool = True,
) -> SynthReport:
    """Speak the corpus `plan_corpus(utterances, languages, ...)` into `folder` and write its three manifests.

    Each clip is one espeak-ng process (run by `workers` threads, default: the CPU count), resampled to 16 kHz and
    written atomically, so a killed run leaves only complete clips; a rerun reuses them and speaks the rest. The
    manifests are written last (atomically), in planned order. 10,000 utterances take one to two and a half minutes
    on 2 CPU cores (module docstring); a rerun that finds every clip takes 2 s.
    """
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed: apt-get install espeak-ng (scripts/setup.sh does)")
    began = time.perf_counter()
    clips = plan_corpus(utterances, languages, seed=seed, valid_fraction=valid_fraction, test_fraction=test_fraction)
    folder = Path(folder)
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        # Threads suffice: each waits on its espeak-ng process, and soxr and libsndfile release the GIL.
        jobs = pool.map(lambda clip: _make_clip(clip, folder), clips)
        results = list(tqdm(jobs, total=len(clips), unit="utt", desc="synth", disable=not progress))
    lines: dict[str, list[str]] = {split: [] for split in SPLITS}
    counts: dict[tuple[str, str], int] = {}
    hours: dict[tuple[str, str], float] = {}
    for clip, (duration, _) in zip(clips, results):
        record = {"audio": clip.filename, "text": clip.text, "language": clip.language, "duration": round(duration, 3)}
        lines[clip.split].append(json.dumps(record, ensure_ascii=False))
        key = (clip.split, clip.language)
        counts[key] = counts.get(key, 0) + 1
        hours[key] = hours.get(key, 0.0) + duration / 3600
    manifests = {split: atomic_write_lines(folder / f"{split}.jsonl", lines[split]) for split in SPLITS}
    synthesized = sum(made for _, made in results)
    return SynthReport(manifests, counts, hours, synthesized, len(clips) - synthesized, time.perf_counter() - began)
