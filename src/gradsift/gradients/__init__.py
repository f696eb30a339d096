"""Per-example gradient features: batched LoRA gradients, projection, preconditioning."""
