"""The model a student reads, in reading order: layers.py (embeddings, linear, LayerNorm, GELU,
dropout, softmax, cross-entropy), attention.py, block.py, config.py, model.py, optim.py,
sampling.py; gradcheck.py proves every backward; lora.py adds low-rank adapters."""
