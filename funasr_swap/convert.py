"""Load a Fun-ASR-Nano checkpoint in either format, and convert the original format to a Hugging Face folder.

Two formats exist (../shared/reference/fun_asr_nano.md): the Hugging Face one (`config.json` with model_type
`fun_asr_nano`, safetensors, processor files) loads with `from_pretrained`; the original one (`config.yaml`,
`model.pt`, `Qwen3-0.6B/`) is converted in memory: `original_config` reads the hyper-parameters, `convert_state_dict`
renames the keys of `model.pt` to the module tree of the installed transformers (the renames are data, below) and
returns what it could not rename; `check_state_dict` raises naming every unexpected, missing or mis-shaped key, and
reports the CTC branch, which the generation model has no module for, as skipped. `convert_checkpoint` writes the
result as a `save_pretrained` folder that stock transformers loads (the shape of transformers'
`convert_fun_asr_nano_to_hf.py`).
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import yaml
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoTokenizer,
    FunAsrNanoAdaptorConfig,
    FunAsrNanoConfig,
    FunAsrNanoEncoderConfig,
    FunAsrNanoForConditionalGeneration,
    FunAsrNanoProcessor,
    GenerationConfig,
    PreTrainedTokenizerBase,
)

from funasr_swap.compat import NO_HUB_KERNELS, fill_gaps
from funasr_swap.ctc_branch import CTC_BRANCH_FILE, CTC_PREFIXES, copy_ctc_branch, write_ctc_branch
from funasr_swap.features import load_feature_extractor, load_processor
from funasr_swap.llms import BASE_LLM, get_llm
from tokenmap.families import ChatFamily, get_family
from tokenmap.io import atomic_folder
from tokenmap.prompt import QWEN3_PLACEHOLDER, build_chat_template

__all__ = [
    "ADAPTOR_LAYER_NORM_EPS",
    "ENCODER_LAYER_NORM_EPS",
    "LAYER_RENAMES",
    "SKIPPED_PREFIXES",
    "build_processor",
    "check_state_dict",
    "checkpoint_format",
    "convert_checkpoint",
    "convert_state_dict",
    "generation_config",
    "load_base",
    "original_config",
    "prefix_renames",
    "read_original_state_dict",
]

logger = logging.getLogger(__name__)

ORIGINAL_CONFIG = "config.yaml"
ORIGINAL_WEIGHTS = "model.pt"
ORIGINAL_LLM = "Qwen3-0.6B"  # the LLM folder inside an original checkpoint: config.json and tokenizer
SKIPPED_PREFIXES = CTC_PREFIXES  # the CTC branch: trained beside the LLM, no module of the generation model

# Inside encoder layers and adaptor blocks: funasr's SAN-M / transformer EncoderLayer -> FunAsrNanoEncoderLayer.
# The encoder's fused `linear_q_k_v` is split into q/k/v by `convert_state_dict` after these renames.
LAYER_RENAMES: tuple[tuple[str, str], ...] = (
    (".self_attn.linear_q.", ".self_attn.q_proj."),
    (".self_attn.linear_k.", ".self_attn.k_proj."),
    (".self_attn.linear_v.", ".self_attn.v_proj."),
    (".self_attn.linear_out.", ".self_attn.o_proj."),
    (".self_attn.fsmn_block.", ".self_attn.fsmn.conv."),
    (".feed_forward.w_1.", ".mlp.fc1."),
    (".feed_forward.w_2.", ".mlp.fc2."),
    (".norm1.", ".input_layernorm."),
    (".norm2.", ".post_attention_layernorm."),
)
_AUDIO_PREFIXES = ("model.audio_tower.", "model.multi_modal_projector.")  # where LAYER_RENAMES apply
ADAPTOR_LAYER_NORM_EPS = 1e-12  # funasr's transformer LayerNorm, used by the adaptor blocks (transformers: 1e-5)
ENCODER_LAYER_NORM_EPS = 1e-5  # SenseVoiceEncoderSmall's LayerNorm is torch's default (so is transformers')
_FUSED_QKV = ".self_attn.linear_q_k_v."


def prefix_renames(config: FunAsrNanoConfig) -> list[tuple[str, str]]:
    """Original key prefix -> transformers key prefix, first match wins.

    The encoder is one flat list in transformers: `encoders0.0`, then `encoders.{i}`, then `tp_encoders.{j}`; the
    two final norms belong to the last transcription layer and the last layer. Every encoder layer is listed by its
    index, so a layer the config does not have matches nothing and is reported as unexpected.
    """
    audio = config.audio_config
    n_transcription = audio.num_hidden_layers - audio.num_timestamp_prediction_layers
    tower = "model.audio_tower.layers."
    renames = [("audio_encoder.encoders0.0.", f"{tower}0.")]
    renames += [(f"audio_encoder.encoders.{i}.", f"{tower}{i + 1}.") for i in range(n_transcription - 1)]
    renames += [
        (f"audio_encoder.tp_encoders.{j}.", f"{tower}{n_transcription + j}.")
        for j in range(audio.num_timestamp_prediction_layers)
    ]
    renames += [
        ("audio_encoder.after_norm.", f"{tower}{n_transcription - 1}.final_layernorm."),
        ("audio_encoder.tp_norm.", f"{tower}{audio.num_hidden_layers - 1}.final_layernorm."),
        ("audio_adaptor.linear1.", "model.multi_modal_projector.linear_1."),
        ("audio_adaptor.linear2.", "model.multi_modal_projector.linear_2."),
        ("audio_adaptor.blocks.", "model.multi_modal_projector.layers."),
        ("llm.model.", "model.language_model."),
        ("llm.lm_head.", "lm_head."),
    ]
    return renames


def _rename(key: str, renames: list[tuple[str, str]]) -> str | None:
    for old, new in renames:
        if key.startswith(old):
            key = new + key[len(old) :]
            if key.startswith(_AUDIO_PREFIXES):
                for old_part, new_part in LAYER_RENAMES:
                    key = key.replace(old_part, new_part)
            return key
    return None


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: FunAsrNanoConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename an original state dict to transformers' keys for `config`; split each fused encoder q/k/v.

    Returns `(converted, unconverted)`: the renamed tensors, and the original keys no rename matched (the CTC branch
    of a real checkpoint, or keys of another model).
    """
    renames = prefix_renames(config)
    converted: dict[str, torch.Tensor] = {}
    unconverted: list[str] = []
    for key, value in state_dict.items():
        new_key = _rename(key, renames)
        if new_key is None:
            unconverted.append(key)
        elif _FUSED_QKV in new_key:
            if value.shape[0] % 3:
                raise ValueError(f"{key}: fused q/k/v needs dim 0 divisible by 3, got shape {tuple(value.shape)}")
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):  # funasr's split order
                converted[new_key.replace(_FUSED_QKV, f".self_attn.{name}.")] = chunk
        else:
            converted[new_key] = value
    return converted, unconverted


def check_state_dict(
    converted: dict[str, torch.Tensor], unconverted: list[str], config: FunAsrNanoConfig, source: str | Path
) -> list[str]:
    """Raise naming every unexpected, missing or mis-shaped key of a converted state dict; return the skipped keys.

    `converted` must hold every tensor of `FunAsrNanoForConditionalGeneration(config)` with its shape; with tied
    word embeddings `lm_head.weight` may be absent (a present one must equal the embeddings, and is dropped from
    `converted`, since the model ties it). Unconverted keys of the CTC branch (`SKIPPED_PREFIXES`) are returned as
    skipped; any other is unexpected. `source` names the checkpoint in messages.
    """
    with torch.device("meta"):  # shapes and names only, no memory
        expected = FunAsrNanoForConditionalGeneration(config).state_dict()
    tied = config.tie_word_embeddings
    if tied and "lm_head.weight" in converted:
        embeddings = converted.get("model.language_model.embed_tokens.weight")
        if embeddings is not None and not torch.equal(converted["lm_head.weight"], embeddings):
            raise ValueError(
                f"{source}: the config ties word embeddings (tie_word_embeddings=True) but llm.lm_head.weight differs "
                "from llm.model.embed_tokens.weight; set tie_word_embeddings to false in the LLM's config.json"
            )
        del converted["lm_head.weight"]
    skipped = [key for key in unconverted if key.startswith(SKIPPED_PREFIXES)]
    unmatched = [key for key in unconverted if not key.startswith(SKIPPED_PREFIXES)]
    unexpected = [key for key in converted if key not in expected]
    missing = [key for key in expected if key not in converted and not (tied and key == "lm_head.weight")]
    mismatched = [
        f"{key}: {tuple(value.shape)} != {tuple(expected[key].shape)}"
        for key, value in converted.items()
        if key in expected and value.shape != expected[key].shape
    ]
    problems = []
    if unmatched:
        problems.append(f"{len(unmatched)} unexpected key(s) that no rename matches: {', '.join(unmatched)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unexpected key(s), renamed but no tensor of the model (transformers "
            f"names): {', '.join(unexpected)}"
        )
    if missing:
        problems.append(f"{len(missing)} missing key(s) (transformers names): {', '.join(missing)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es) (checkpoint != config): {'; '.join(mismatched)}")
    if problems:
        raise ValueError(f"{source} does not match the Fun-ASR-Nano model of its config:\n" + "\n".join(problems))
    return skipped


def _require(conf: Mapping, key: str, where: str) -> int:
    if key not in conf:
        raise KeyError(f"{where} has no {key!r}; found: {', '.join(sorted(conf)) or 'nothing'}")
    return conf[key]


def original_config(folder: str | Path) -> FunAsrNanoConfig:
    """The `FunAsrNanoConfig` of an original checkpoint: `config.yaml` (encoder, adaptor, frontend) and the LLM's
    `Qwen3-0.6B/config.json`. LayerNorm eps are funasr's, which config.yaml does not state: 1e-5 in the encoder,
    1e-12 in the adaptor blocks."""
    folder = Path(folder)
    yaml_path, llm_path = folder / ORIGINAL_CONFIG, folder / ORIGINAL_LLM
    conf = yaml.safe_load(yaml_path.read_text()) or {}
    encoder = conf.get("audio_encoder_conf") or {}
    adaptor = conf.get("audio_adaptor_conf") or {}
    frontend = conf.get("frontend_conf") or {}
    where_encoder, where_adaptor = f"{yaml_path}: audio_encoder_conf", f"{yaml_path}: audio_adaptor_conf"
    text_config = AutoConfig.from_pretrained(llm_path)

    hidden = _require(encoder, "output_size", where_encoder)
    tp_blocks = _require(encoder, "tp_blocks", where_encoder)
    if tp_blocks < 1:  # transformers normalises after the last transcription layer and the last layer only
        raise ValueError(f"{where_encoder}.tp_blocks is {tp_blocks}; transformers' encoder needs at least 1")
    # funasr's own defaults where config.yaml may omit a value (adaptor.py `Transformer`, SenseVoiceEncoderSmall).
    downsample_rate = adaptor.get("downsample_rate", 2)
    if downsample_rate != 1:
        raise ValueError(f"{where_adaptor}.downsample_rate is {downsample_rate}; transformers' FunAsrNano supports 1")
    encoder_dim = adaptor.get("encoder_dim", hidden)
    if encoder_dim != hidden:
        raise ValueError(f"{where_adaptor}.encoder_dim {encoder_dim} != audio_encoder_conf.output_size {hidden}")
    llm_dim = adaptor.get("llm_dim", text_config.hidden_size)
    if llm_dim != text_config.hidden_size:
        raise ValueError(
            f"{where_adaptor}.llm_dim {llm_dim} != hidden_size {text_config.hidden_size} of "
            f"{llm_path / 'config.json'}: the adaptor must output the LLM's width"
        )

    audio_config = FunAsrNanoEncoderConfig(
        num_mel_bins=_require(frontend, "n_mels", f"{yaml_path}: frontend_conf"),
        num_stacked_frames=_require(frontend, "lfr_m", f"{yaml_path}: frontend_conf"),
        hidden_size=hidden,
        num_attention_heads=_require(encoder, "attention_heads", where_encoder),
        intermediate_size=_require(encoder, "linear_units", where_encoder),
        num_hidden_layers=_require(encoder, "num_blocks", where_encoder) + tp_blocks,
        num_timestamp_prediction_layers=tp_blocks,
        hidden_dropout=encoder.get("dropout_rate", 0.1),
        attention_dropout=encoder.get("attention_dropout_rate", 0.0),
        fsmn_kernel_size=encoder.get("kernel_size", 11),
        layer_norm_eps=ENCODER_LAYER_NORM_EPS,
    )
    adaptor_config = FunAsrNanoAdaptorConfig(
        hidden_size=llm_dim,
        num_attention_heads=adaptor.get("attention_heads", 8),
        intermediate_size=llm_dim // 4,  # funasr hard-codes the blocks' FFN at llm_dim // 4
        num_hidden_layers=adaptor.get("n_layer", 2),
        projector_hidden_size=adaptor.get("ffn_dim", 2048),
        hidden_dropout=adaptor.get("dropout_rate", 0.0),
        attention_dropout=adaptor.get("attention_dropout_rate", 0.0),
        layer_norm_eps=ADAPTOR_LAYER_NORM_EPS,
    )
    return FunAsrNanoConfig(
        audio_config=audio_config,
        adaptor_config=adaptor_config,
        text_config=text_config,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )


def read_original_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in an original `model.pt` (tensors only, `weights_only=True`), unwrapped from a "state_dict" or
    "model" entry when the file holds a training checkpoint."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # truncated or not a torch file
        raise OSError(f"{path}: cannot read the weights ({error}): truncated or corrupt; copy it again") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
            break
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (maybe under 'state_dict' or 'model')")
    return loaded


# a tokenizer AutoTokenizer builds: the fast one's file, a SentencePiece model or a BPE vocabulary (the first named)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def _check_tokenizer(folder: Path) -> None:
    """FileNotFoundError naming `folder` when it holds no tokenizer: AutoTokenizer would otherwise build an empty
    one (and the model then fails on prompts of no tokens) or llama.cpp's converter blame its pre-tokenizer."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} has no tokenizer ({TOKENIZER_FILES[0]}, or {' or '.join(TOKENIZER_FILES[1:])}): copy the "
            "model's tokenizer files into it"
        )


def checkpoint_format(path: str | Path) -> Literal["hf", "original"]:
    """ "hf" for a folder with a `config.json` of model_type fun_asr_nano, "original" for one with `config.yaml`,
    `model.pt` and `Qwen3-0.6B/config.json`; anything else raises, saying what was looked for and found. Either must
    hold its tokenizer (`TOKENIZER_FILES`; the original's in `Qwen3-0.6B/`)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    config_json = path / "config.json"
    model_type = json.loads(config_json.read_text()).get("model_type") if config_json.is_file() else None
    if model_type == "fun_asr_nano":
        _check_tokenizer(path)
        return "hf"
    original_files = (ORIGINAL_CONFIG, ORIGINAL_WEIGHTS, f"{ORIGINAL_LLM}/config.json")
    missing = [name for name in original_files if not (path / name).is_file()]
    if not missing:
        _check_tokenizer(path / ORIGINAL_LLM)
        return "original"
    found = f"model_type {model_type!r}" if config_json.is_file() else "no config.json"
    raise FileNotFoundError(
        f"{path} is not a Fun-ASR-Nano checkpoint: looked for a Hugging Face folder (config.json with model_type "
        f"'fun_asr_nano'; found {found}) and for an original one ({', '.join(original_files)}; missing "
        f"{', '.join(missing)})"
    )


def build_processor(tokenizer_folder: str | Path) -> FunAsrNanoProcessor:
    """The processor of the Qwen3 base: the tokenizer in `tokenizer_folder`, the Kaldi fbank features, the converted
    checkpoint's chat template and the `<|object_ref_start|>` audio placeholder.

    The tokenizer pads batches on the left by default (batched generation; saved with it), and its chat template is
    the processor's: save_pretrained writes both to the same chat_template.jinja.
    """
    chat_template = build_chat_template(get_llm(BASE_LLM).family)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, padding=True, padding_side="left")
    tokenizer.chat_template = chat_template
    return FunAsrNanoProcessor(
        feature_extractor=load_feature_extractor(),
        tokenizer=tokenizer,
        chat_template=chat_template,
        audio_token=QWEN3_PLACEHOLDER,
    )


def generation_config(
    tokenizer: PreTrainedTokenizerBase, family: str | ChatFamily = get_llm(BASE_LLM).family
) -> GenerationConfig:
    """Greedy decoding that stops at the family's stop tokens (a qwen3 transcription ends with `<|im_end|>`)."""
    stop_ids = [tokenizer.convert_tokens_to_ids(token) for token in get_family(family).stop_tokens]
    return GenerationConfig(eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id, do_sample=False)


def _load_original(
    folder: Path, dtype: torch.dtype, device_map: str | dict | torch.device | None
) -> tuple[FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor, dict[str, torch.Tensor]]:
    """(model, processor, the CTC branch's tensors under their original names: empty when it has none)."""
    config = original_config(folder)
    processor = build_processor(folder / ORIGINAL_LLM)
    config.audio_token_id = processor.audio_token_id
    weights = folder / ORIGINAL_WEIGHTS
    state_dict = read_original_state_dict(weights)
    converted, unconverted = convert_state_dict(state_dict, config)
    skipped = check_state_dict(converted, unconverted, config, weights)
    if skipped:
        logger.info("%s: skipped %d key(s) of no module of the generation model: %s", weights, len(skipped), skipped)
    model = FunAsrNanoForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=converted, dtype=dtype, device_map=device_map, **NO_HUB_KERNELS
    )
    model.generation_config = generation_config(processor.tokenizer)
    fill_gaps(model)
    return model, processor, {key: state_dict[key].to(dtype) for key in skipped}


def load_base(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
) -> tuple[FunAsrNanoForConditionalGeneration, FunAsrNanoProcessor]:
    """A Fun-ASR-Nano checkpoint as `(model, processor)`, in eval mode.

    Args:
        path: a Hugging Face folder, or an original one (converted in memory; see `checkpoint_format`).
        dtype: of the weights; default bfloat16 when loading onto CUDA, float32 otherwise.
        device: where the whole model goes (default CPU); or
        device_map: passed through to `from_pretrained` (e.g. "auto" to spread a large LLM over GPUs).
    """
    if device is not None and device_map is not None:
        raise ValueError(f"pass device ({device}) or device_map ({device_map}), not both")
    path = Path(path)
    fmt = checkpoint_format(path)
    if device is not None:
        on_cuda = torch.device(device).type == "cuda"
    else:  # a device_map places the model on GPUs when there are any
        on_cuda = device_map is not None and torch.cuda.is_available()
    dtype = dtype or (torch.bfloat16 if on_cuda else torch.float32)
    placement = device_map if device_map is not None else device
    if fmt == "original":
        return _load_original(path, dtype, placement)[:2]
    try:
        model = FunAsrNanoForConditionalGeneration.from_pretrained(
            path, dtype=dtype, device_map=placement, **NO_HUB_KERNELS
        )
    except SafetensorError as error:  # its message names no file
        files = ", ".join(str(file) for file in sorted(path.glob("*.safetensors")))
        raise OSError(f"{files}: cannot read the weights ({error}): truncated or corrupt; copy it again") from None
    fill_gaps(model)
    return model, load_processor(path)


def convert_checkpoint(
    src: str | Path, dst: str | Path, *, dtype: torch.dtype = torch.bfloat16, overwrite: bool = False
) -> Path:
    """Write checkpoint `src` (either format) as a Hugging Face folder `dst`: config, safetensors weights in `dtype`
    (default bfloat16, as the published `-hf` checkpoint), generation config, and the processor (tokenizer, feature
    extractor, chat template). The original's CTC branch (`ctc_decoder.*`, `ctc.*`), which the generation model has
    no module for, goes to `CTC_BRANCH_FILE` beside the weights (`funasr_swap.ctc_branch`; stock loading ignores
    it); a Hugging Face `src` that has one passes it on, and the branch's tokenizer folder `ctc_tokenizer/` of either
    format goes along. The folder is written beside `dst` and renamed into place;
    an existing `dst` is an error unless `overwrite`."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    ctc: dict[str, torch.Tensor] = {}
    if checkpoint_format(src) == "original":
        model, processor, ctc = _load_original(src, dtype, None)
        conf = (yaml.safe_load((src / ORIGINAL_CONFIG).read_text()) or {}).get("ctc_decoder_conf")
    else:
        model, processor = load_base(src, dtype=dtype)
    with atomic_folder(dst) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        copy_ctc_branch(src, tmp)  # a converted src's branch; either format's ctc_tokenizer/
        if ctc:
            write_ctc_branch(ctc, conf, tmp / CTC_BRANCH_FILE)
    return dst
