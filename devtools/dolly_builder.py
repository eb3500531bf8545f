"""Random-weight GPT-NeoX models with Dolly's tokenizer, for tests and benchmarks.

Needs torch (the `export` extra); nothing at run time imports this module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# Dolly-v2-3b's exact architecture; "tiny" keeps its vocabulary and layout but not its size.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512
    ),
    "3b": dict(
        hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240
    ),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_random_dolly(
    dest: Path, tokenizer_dir: Path, shape: str = "tiny", seed: int = 0, bf16: bool = False
) -> Path:
    """Write a PyTorch checkpoint of a random Dolly-shaped model plus Dolly's tokenizer,
    in float32, or in bfloat16 as Databricks published Dolly (`bf16`)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=50280,
        max_position_embeddings=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
        # A wide initialisation gives peaked logits, so greedy argmax is not a coin toss
        # between near-equal tokens and FP16 IR vs PyTorch parity is a meaningful check.
        initializer_range=0.2 if shape == "tiny" else 0.02,
        **SHAPES[shape],
    )
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():  # FP16-representable weights: FP16 IR loses nothing
            p.copy_(p.half().float())
    if bf16:
        model = model.to(torch.bfloat16)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, dest / name)
    return dest
