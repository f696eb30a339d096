"""Loading models (local, hub, GGUF, built-in) and attaching LoRA adapters."""
