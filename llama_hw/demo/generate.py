"""Write the embedded demo's assets: a letter-puzzle conversation data set, its tokenizer, its model config.

`python -m llama_hw.demo.generate [DIR]` rewrites them (default: this package's folder); the output is
identical on every run (seeded, single-threaded SentencePiece training), and a test checks that the
committed files are exactly what this script writes.

The task: a user gives an instruction and a short sequence of letters, the assistant answers with the
transformed sequence — "reverse: k f a m" -> "m a f k", "upper: q u i t e" -> "Q U I T E". A tiny Llama
learns it from scratch in about a minute on two CPU cores, and it has an unambiguous held-out score:
the exact match of the reply on sequences never seen in training. An untrained model scores 0.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import string
from collections.abc import Callable
from pathlib import Path

from llama_hw.demo import DEMO_DIR, SEED, TEMPLATE

LETTERS = string.ascii_lowercase
LENGTHS = (3, 6)  # letters per puzzle, inclusive
TRAIN_CONVERSATIONS = 2000
HELDOUT_CONVERSATIONS = 200
MAX_TURNS = 2  # some conversations ask a second puzzle, so the model also learns to answer after history
# At most; SentencePiece stops when no pair is left to merge (at 421 pieces here): 256 byte-fallback
# pieces, 3 specials, the characters, one piece per spaced letter ("▁k", "▁K"), the template's words.
MAX_VOCAB_SIZE = 512

OPERATIONS: dict[str, Callable[[list[str]], list[str]]] = {
    "reverse": lambda letters: letters[::-1],
    "upper": lambda letters: [letter.upper() for letter in letters],
}

MODEL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": None,  # the tokenizer's size, filled in by generate()
    "hidden_size": 128,
    "intermediate_size": 512,
    # Held-out exact match after 800 steps in a plain training loop (measured here): 2 layers reached
    # 99.7-100% with 3 of 6 seeds, ~90% with 2 and 34% with 1; 3 layers 99.7-100% with all 4 tried.
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


def puzzle(rng: random.Random) -> tuple[str, str]:
    operation = rng.choice(sorted(OPERATIONS))
    letters = [rng.choice(LETTERS) for _ in range(rng.randint(*LENGTHS))]
    return f"{operation}: {' '.join(letters)}", " ".join(OPERATIONS[operation](letters))


def conversations(rng: random.Random, count: int, split: str, seen: set[str]) -> list[dict]:
    """`count` ShareGPT records whose questions appear nowhere else (`seen` is shared between splits)."""
    records = []
    while len(records) < count:
        turns = []
        for _ in range(rng.randint(1, MAX_TURNS)):
            question, answer = puzzle(rng)
            if question in seen:
                continue
            seen.add(question)
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        if turns:
            records.append({"id": f"letters-{split}-{len(records):05d}", "conversations": turns})
    return records


def write_records(records: list[dict], path: Path) -> None:
    """A JSON list, one record per line: valid ShareGPT JSON that still diffs line by line."""
    lines = ",\n".join(json.dumps(record, ensure_ascii=False, separators=(",", ":")) for record in records)
    path.write_text(f"[\n{lines}\n]\n", encoding="utf-8")


def tokenizer_corpus(records: list[dict]) -> list[str]:
    """The training conversations as the template renders them, minus the EOS marker (a special token)."""
    from fastchat.conversation import get_conv_template

    texts = []
    for record in records:
        conv = get_conv_template(TEMPLATE)
        for index, turn in enumerate(record["conversations"]):
            conv.append_message(conv.roles[index % 2], turn["value"])
        texts.append(conv.get_prompt().replace(conv.sep2, " "))
    return texts


def train_tokenizer(texts: list[str]) -> bytes:
    """A SentencePiece BPE model with LLaMA's conventions (unk 0, bos 1, eos 2, no pad, byte fallback)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="bpe",
        vocab_size=MAX_VOCAB_SIZE,
        hard_vocab_limit=False,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return model.getvalue()


def vocab_size(tokenizer: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=tokenizer).get_piece_size()


def generate(directory: Path = DEMO_DIR) -> list[Path]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    train = conversations(rng, TRAIN_CONVERSATIONS, "train", seen)
    heldout = conversations(rng, HELDOUT_CONVERSATIONS, "heldout", seen)
    data_dir, model_dir = directory / "data", directory / "model"
    data_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    write_records(train, data_dir / "train.json")
    write_records(heldout, data_dir / "heldout.json")
    tokenizer = train_tokenizer(tokenizer_corpus(train))
    (model_dir / "tokenizer.model").write_bytes(tokenizer)
    config = {**MODEL_CONFIG, "vocab_size": vocab_size(tokenizer)}
    (model_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return [data_dir / "train.json", data_dir / "heldout.json", model_dir / "tokenizer.model", model_dir / "config.json"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llama_hw.demo.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEMO_DIR, help="where to write (default: the package)")
    args = parser.parse_args(argv)
    for path in generate(args.directory):
        print(f"{path}  {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
