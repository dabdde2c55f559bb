"""`python -m llama_hw.launch`: torchrun for every backend, on one node or many (see recipe.py)."""
