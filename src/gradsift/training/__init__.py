"""Fine-tuning with TRL: warm-up, SFT and DPO."""
