"""transformers' Trainer with checkpoints that count only once complete, and an atomic final save.

Trainer writes checkpoint-N in place and deletes old checkpoints (save_total_limit) in the same call,
while other ranks may still be writing their optimizer shards: a crash then leaves no checkpoint that
loads. Here rotation waits until every rank has finished, rank 0 marks the checkpoint complete, and only
then are old checkpoints deleted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from llama_hw.models import write_run_metadata
from llama_hw.train.checkpointing import mark_complete, publish_staged, staging_dir


class LlamaHwTrainer(Trainer):
    def _save_checkpoint(self, model, trial) -> None:
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate below, once the new checkpoint is complete everywhere
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(checkpoint, self.state.global_step, self.args.world_size)
            rotate_checkpoints(str(run_dir), limit, self.state.best_model_checkpoint, use_mtime=True)

    def save_final(self, metadata: dict[str, Any]) -> Path:
        """Save the trained model, tokenizer, trainer state and `llama_hw.json` into output_dir.

        Everything is written to a staging directory first (every rank takes part: ZeRO-3 and FSDP gather
        the weights collectively) and then moved into place with the metadata file last.
        """
        output_dir = Path(self.args.output_dir)
        staged = staging_dir(output_dir)
        base = self.accelerator.unwrap_model(self.model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        base.config.use_cache = True  # saved for inference, where the KV cache pays off
        self.save_model(str(staged))
        if self.args.should_save:
            self.state.save_to_json(str(staged / "trainer_state.json"))
            write_run_metadata(staged, **metadata)
            publish_staged(output_dir)
        self.accelerator.wait_for_everyone()
        return output_dir
