"""chat never prompts to run a model's own code: without --trust-remote-code such a model is refused."""

from __future__ import annotations

import json
import shutil

from llama_hw.chat import recipe
from llama_hw.errors import run_cli


def test_a_model_that_needs_its_own_code_is_refused(stories260k_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = tmp_path / "custom"
    model.mkdir()
    for file in stories260k_dir.iterdir():
        shutil.copyfile(file, model / file.name)
    witness = tmp_path / "custom_code_ran"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="llama_hw_test_custom",
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (model / name).write_text(f"open({str(witness)!r}, 'w').close()\n")

    code = run_cli(recipe.main, ["--model-path", str(model), "--device", "cpu", "--template", "raw", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: the model {model} needs its own Python code to load")
    assert err.rstrip().endswith("pass --trust-remote-code to run it")
    assert not witness.exists()
