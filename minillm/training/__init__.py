"""The machinery around the model: datasets and batches (data.py), the training loop (train.py),
fine-tuning (finetune.py), pictures (viz.py), and glibc's memory settings (malloc.py)."""
