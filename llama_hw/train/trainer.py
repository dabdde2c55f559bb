"""transformers' Trainer with checkpoints that count only once complete, and an atomic final save.

Trainer writes checkpoint-N in place and deletes old checkpoints (save_total_limit) in the same call,
while other ranks may still be writing their optimizer shards: a crash then leaves no checkpoint that
loads. Here rotation waits until every rank has finished, rank 0 marks the checkpoint complete, and only
then are old checkpoints deleted.

A model that transformers sharded with FSDP2 while loading (the FSDP engine on the host CPU, see
`llama_hw.train.fsdp`) gets only its weights checkpointed by transformers. For an exact resume this
trainer also saves the optimizer state (gathered in full on rank 0 with CPU offload), the scheduler and
the RNG states, and loads them back by broadcasting from rank 0 into every rank's shard.

Resumed from a checkpoint of the last step, Trainer would still run one more step before it looks at
`max_steps` (global step 5 of 4); here an epoch starts only while steps remain. A full disk while saving
ends in one line (`llama_hw.train.disk`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from llama_hw.models import write_run_metadata
from llama_hw.train.checkpointing import (
    CHECKPOINT_MARKER,
    latest_complete_checkpoint,
    mark_complete,
    publish_staged,
    staging_dir,
)
from llama_hw.train.disk import directory_bytes, optimizer_bytes, reporting_disk_full, weights_bytes

OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"


def full_state_options(**options):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **options)


class LlamaHwTrainer(Trainer):
    def _run_epoch(self, *args, **kwargs):
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True  # resumed at the last step: nothing left to train
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate below, once the new checkpoint is complete everywhere
        run_dir = Path(self._get_output_dir(trial=trial))
        checkpoint = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with reporting_disk_full(checkpoint.name, checkpoint, self._checkpoint_bytes,
                                 after=f"{checkpoint.name} stays incomplete and is ignored on resume; free space, "
                                       "then run the same command again to resume from the last complete "
                                       "checkpoint"):
            if self.args.should_save:  # a damaged checkpoint of this step, passed over on resume, is rewritten
                (checkpoint / CHECKPOINT_MARKER).unlink(missing_ok=True)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if self.is_distributed_loading_by_transformers:
                self._save_sharded_training_state(checkpoint)
            self.accelerator.wait_for_everyone()
            if self.args.should_save:
                mark_complete(checkpoint, self.state.global_step, self.args.world_size)
        if self.args.should_save:
            rotate_checkpoints(str(run_dir), limit, self.state.best_model_checkpoint, use_mtime=True)

    def _checkpoint_bytes(self) -> int:
        """The last complete checkpoint's size, else the weights and this rank's optimizer state."""
        previous = latest_complete_checkpoint(Path(self.args.output_dir))
        if previous is not None:
            return directory_bytes(previous)
        return weights_bytes(self.accelerator.unwrap_model(self.model)) + optimizer_bytes(self.optimizer)

    # -- models sharded at load time (FSDP2 by transformers) -------------------------------------------
    def _save_sharded_training_state(self, checkpoint: Path) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=full_state_options(cpu_offload=True))
        if self.args.should_save:
            torch.save(optimizer_state, checkpoint / OPTIMIZER_FILE)
            torch.save(self.lr_scheduler.state_dict(), checkpoint / SCHEDULER_FILE)
        self._save_rng_state(str(checkpoint))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if not self.is_distributed_loading_by_transformers or hasattr(self.model, "peft_config"):
            # A LoRA adapter added after sharding is a plain, replicated module: Trainer loads it as usual.
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        weights: dict[str, torch.Tensor] = {}
        if self.args.process_index == 0:
            for shard in sorted(Path(resume_from_checkpoint).glob("*.safetensors")):
                weights.update(load_file(shard))
        # strict=False: a tied lm_head is saved once, as the embedding it shares its weight with
        set_model_state_dict(self.model, weights, options=full_state_options(broadcast_from_rank0=True, strict=False))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not self.is_distributed_loading_by_transformers:
            return super()._load_optimizer_and_scheduler(checkpoint)
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        optimizer_file = Path(checkpoint) / OPTIMIZER_FILE
        if not optimizer_file.is_file():
            return  # a checkpoint without optimizer state: the optimizer starts fresh, as in Trainer
        state = torch.load(optimizer_file, weights_only=True) if self.args.process_index == 0 else {}
        set_optimizer_state_dict(self.model, self.optimizer, optim_state_dict=state,
                                 options=full_state_options(broadcast_from_rank0=True))
        self.lr_scheduler.load_state_dict(torch.load(Path(checkpoint) / SCHEDULER_FILE, weights_only=True))

    # -- the final model -----------------------------------------------------------------------------
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
        with reporting_disk_full("the final model", staged, lambda: weights_bytes(self.accelerator.unwrap_model(self.model)),
                                 after=f"nothing in {output_dir} was replaced; free space, then run the same command "
                                       "again (it resumes from the last complete checkpoint, if any)"):
            self.save_model(str(staged))
            if self.args.should_save:
                self.state.save_to_json(str(staged / "trainer_state.json"))
                write_run_metadata(staged, **metadata)
        if self.args.should_save:
            publish_staged(output_dir)
        self.accelerator.wait_for_everyone()
        return output_dir
