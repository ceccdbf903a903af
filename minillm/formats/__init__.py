"""Files on disk: atomic writes (files.py), safetensors in NumPy (safetensors.py), minillm's
training checkpoints (checkpoint.py) and Hugging Face GPT-2 folders (hf.py)."""
