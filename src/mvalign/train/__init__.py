"""Training of LoRA value vectors: tokenisation, log-probs with a cached reference, the DPO loss, the loop."""
