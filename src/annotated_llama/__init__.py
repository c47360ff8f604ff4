"""The Annotated LLaMA: a readable, tested LLaMA forward pass on real checkpoints."""
