"""Load a tokenizer whose ids are the same in training, in chat, and after `save_pretrained`.

A directory with `tokenizer.json` is loaded with `AutoTokenizer`, as every Hugging Face tool does.
A directory with only SentencePiece's `tokenizer.model` (the original LLaMA / Llama-2 release, llama2.c
models) is converted here, because transformers 5 gets it wrong: `AutoTokenizer` drops the leading
"▁" of the first word, and its converter orders the BPE merges by piece id instead of by score, so
"a  USER" becomes ["▁a", "▁▁", "USER"] where SentencePiece says ["▁a", "▁", "▁US", "ER"]. The
conversion below builds a `tokenizers` BPE with merges ranked by SentencePiece's scores and a normalizer
that mirrors SentencePiece's (dummy prefix, whitespace escaping, `remove_extra_whitespaces`), so the ids
equal `SentencePieceProcessor.encode` (tests check thousands of strings). Like FastChat's slow LLaMA
tokenizer, `</s>` written in a prompt is the EOS token and text after a special token gets the dummy
prefix again. The result is a fast tokenizer (offset mappings for exact loss masks) that saves as
`tokenizer.json`, so `AutoTokenizer.from_pretrained` on the saved directory gives the same ids.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from llama_hw.errors import UsageError

SENTENCEPIECE_FILE = "tokenizer.model"
# The files a fast tokenizer is built from: without one of them transformers goes looking on the Hub.
TOKENIZER_SOURCES = (SENTENCEPIECE_FILE, "tokenizer.json", "vocab.json")
SPIECE_UNDERLINE = "▁"
BPE_MODEL_TYPE = 2  # sentencepiece_model.proto TrainerSpec.ModelType
NORMAL, USER_DEFINED = 1, 4  # sentencepiece_model.proto SentencePiece.Type


def load_tokenizer(
    path: str,
    model_max_length: int | None = None,
    padding_side: str | None = None,
    trust_remote_code: bool = False,
):
    """The tokenizer at `path` with BOS/EOS/pad set explicitly (pad = unk, as FastChat does, if it has none).

    `padding_side` None keeps the side saved with the tokenizer (right if none was saved); a given side is
    also recorded in init_kwargs, so `save_pretrained` persists it (the cls task trains with left padding).
    """
    directory = tokenizer_directory(path)
    bare_sentencepiece = (directory / SENTENCEPIECE_FILE).is_file() and not (directory / "tokenizer.json").is_file()
    if bare_sentencepiece:
        tokenizer = tokenizer_from_sentencepiece(directory)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
        except Exception as err:  # noqa: BLE001 - the tokenizers library raises a bare Exception for bad JSON
            detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(
                f"cannot load the tokenizer in {directory} ({detail}); re-download its tokenizer.json, or give a "
                f"directory with tokenizer.json or SentencePiece's {SENTENCEPIECE_FILE}"
            ) from None
    if not tokenizer.is_fast:
        raise UsageError(
            f"the tokenizer at {path} is a slow (Python) tokenizer; loss masks need a fast tokenizer's offset "
            "mapping. Save a tokenizer.json for it (tokenizer.save_pretrained with a fast tokenizer)"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    if model_max_length is not None:
        tokenizer.model_max_length = model_max_length
    if padding_side is not None:
        tokenizer.padding_side = padding_side
        tokenizer.init_kwargs["padding_side"] = padding_side
    return tokenizer


def tokenizer_directory(path: str) -> Path:
    """The local folder of the tokenizer `path` names (a Hub id `org/name` resolved through the Hugging Face
    cache), checked to hold tokenizer files before transformers would look for them on the Hub."""
    from llama_hw.models.hub import looks_like_hub_id, resolve_model_path

    directory = Path(path).expanduser()
    if not directory.exists() and looks_like_hub_id(str(path)):
        directory = resolve_model_path(path, flag="--tokenizer")
    if not directory.is_dir():
        what = "does not exist" if not directory.exists() else "is a file; give the folder that holds it"
        raise UsageError(f"tokenizer directory {directory} {what}")
    if not any((directory / name).is_file() for name in TOKENIZER_SOURCES):
        raise UsageError(
            f"no {SENTENCEPIECE_FILE} / tokenizer.json in {directory}; copy the tokenizer files of the model it "
            "came from (tokenizer.model, or tokenizer.json and tokenizer_config.json) into it"
        )
    return directory


def tokenizer_from_sentencepiece(directory: Path):
    """A fast tokenizer equal to SentencePiece's BPE model in `directory` (see the module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import import_protobuf

    from google.protobuf.message import DecodeError

    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString((directory / SENTENCEPIECE_FILE).read_bytes())
    except DecodeError as err:
        raise UsageError(f"{directory / SENTENCEPIECE_FILE} is not a SentencePiece model ({err}); re-download "
                         "it from the model's source") from None
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    if spec.model_type != BPE_MODEL_TYPE or norm.precompiled_charsmap:
        raise UsageError(
            f"{directory / SENTENCEPIECE_FILE} is not a plain SentencePiece BPE model (LLaMA family); "
            "give a directory with the model's tokenizer.json instead"
        )
    pieces = [(piece.piece, piece.score, piece.type) for piece in proto.pieces]
    vocab = {piece: index for index, (piece, _score, _type) in enumerate(pieces)}
    # SentencePiece merges the adjacent pair whose merged piece scores highest; a BPE merge rank ordered
    # by that score (ties: lower id, then shorter left part) reproduces it.
    scores = {piece: score for piece, score, kind in pieces if kind == NORMAL}
    merges = sorted(
        (-score, vocab[piece], cut, piece)
        for piece, score in scores.items()
        for cut in range(1, len(piece))
        if piece[:cut] in scores and piece[cut:] in scores
    )
    backend = Tokenizer(
        BPE(
            vocab=vocab,
            merges=[(piece[:cut], piece[cut:]) for _score, _id, cut, piece in merges],
            unk_token=spec.unk_piece,
            fuse_unk=True,
            byte_fallback=spec.byte_fallback,
        )
    )
    steps = []
    if norm.remove_extra_whitespaces:
        # SentencePiece drops leading spaces, trailing spaces (and escaped ones), and squeezes runs of spaces.
        steps += [
            normalizers.Replace(Regex(r"\A +"), ""),
            normalizers.Replace(Regex(rf"[ {SPIECE_UNDERLINE}]+\z"), ""),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend(SPIECE_UNDERLINE))
    if norm.escape_whitespaces:
        steps.append(normalizers.Replace(" ", SPIECE_UNDERLINE))
    backend.normalizer = normalizers.Sequence(steps)
    decode_steps = [decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode_steps.append(decoders.Strip(content=" ", left=1, right=0))
    backend.decoder = decoders.Sequence(decode_steps)
    backend.add_tokens([AddedToken(piece, normalized=False) for piece, _s, kind in pieces if kind == USER_DEFINED])

    def piece(piece_id: int) -> str | None:
        return proto.pieces[piece_id].piece if 0 <= piece_id < len(proto.pieces) else None

    config = _tokenizer_config(directory)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=piece(spec.bos_id),
        eos_token=piece(spec.eos_id),
        unk_token=piece(spec.unk_id),
        pad_token=piece(spec.pad_id),
        add_bos_token=config.get("add_bos_token", True),
        add_eos_token=config.get("add_eos_token", False),
        chat_template=config.get("chat_template"),
        clean_up_tokenization_spaces=False,
    )


def _tokenizer_config(directory: Path) -> dict:
    """The few settings an old slow-tokenizer directory keeps beside tokenizer.model, if any."""
    config_file = directory / "tokenizer_config.json"
    return json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides the ids: vocabulary, merges, normalizer, special tokens, template."""
    digest = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    settings = {
        "special": tokenizer.special_tokens_map,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "class": type(tokenizer).__name__,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()
