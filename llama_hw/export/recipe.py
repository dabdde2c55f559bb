"""`python -m llama_hw.export --base B --adapter A --out O` (or `llama-hw export`): merge a LoRA adapter.

The result is a plain Hugging Face model (safetensors, tokenizer, llama_hw.json with the template), which
transformers, `llama_hw.chat` and any serving stack load without peft.
"""

from __future__ import annotations

import argparse

from llama_hw.errors import UsageError
from llama_hw.export.merge import DTYPES, merge_adapter


class Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message}; see `python -m llama_hw.export --help`")


def parser() -> Parser:
    p = Parser(prog="python -m llama_hw.export", description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--base", help="the base model directory or Hub id (default: the one the adapter records)")
    p.add_argument("--adapter", required=True, help="the LoRA adapter directory a training run saved")
    p.add_argument("--out", required=True,
                   help="directory for the merged model: a new one, or with --overwrite an earlier export")
    p.add_argument("--dtype", default="auto", choices=list(DTYPES),
                   help="dtype of the merged weights; auto keeps the base checkpoint's")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if an earlier `llama_hw export` wrote it (it carries llama_hw_export.json and "
                   "nothing else); any other folder is refused")
    p.add_argument("--trust_remote_code", "--trust-remote-code", action="store_true",
                   help="allow a base model that needs its own Python code (config.json auto_map) to run it")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    out = merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype, overwrite=args.overwrite,
                        trust_remote_code=args.trust_remote_code)
    print(f"merged {args.adapter} into {out}")
    return 0
