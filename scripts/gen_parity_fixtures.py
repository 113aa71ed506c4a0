#!/usr/bin/env python3
"""Generate HF-transformers parity fixtures for engine/tests/models.rs (`hf_parity_fixtures`).

Creates tiny random Qwen3 (tied embeddings), Llama (rope_scaling llama3) and Qwen2 (qkv bias,
untied lm_head) models in f32 and writes, per model, to engine/tests/fixtures/parity/<name>/:
config.json + model.safetensors (save_pretrained) and reference.json with a few prompts, their
full-sequence logits (all positions, 6 significant digits) and a 32-token greedy continuation.

Needs: torch, transformers, safetensors (CPU is fine).
Usage: python3 scripts/gen_parity_fixtures.py [--out engine/tests/fixtures/parity]
"""
import argparse
import json
import os

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
              rms_norm_eps=1e-6, torch_dtype="float32")

MODELS = {
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**COMMON, head_dim=16, tie_word_embeddings=True,
                                            rope_theta=1000000.0)),
    "llama": (LlamaForCausalLM, LlamaConfig(**COMMON, tie_word_embeddings=False, rope_theta=500000.0,
                                            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                          "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 64})),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**COMMON, tie_word_embeddings=False,
                                            rope_theta=1000000.0)),
}

PROMPTS = [[1, 17, 42, 99, 3, 250, 7], [5], list(range(10, 60, 3))]
GREEDY_TOKENS = 32


def sig6(x):
    return float(f"{x:.6g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "engine", "tests",
                                                   "fixtures", "parity"))
    args = ap.parse_args()
    torch.manual_seed(0)
    for name, (cls, cfg) in MODELS.items():
        model = cls(cfg).eval().to(torch.float32)
        # Wider-than-default init so logits are not all near zero.
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                else:
                    p.normal_(0.0, 0.08)
            if hasattr(model.model.layers[0].self_attn.q_proj, "bias") and \
                    model.model.layers[0].self_attn.q_proj.bias is not None:
                for layer in model.model.layers:
                    for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                        proj.bias.normal_(0.0, 0.1)
        out_dir = os.path.join(args.out, name)
        os.makedirs(out_dir, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        cases = []
        for prompt in PROMPTS:
            ids = torch.tensor([prompt])
            with torch.no_grad():
                logits = model(ids).logits[0]
                gen = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                     min_new_tokens=GREEDY_TOKENS, eos_token_id=None, pad_token_id=0)
            cases.append({
                "input_ids": prompt,
                "logits": [[sig6(v) for v in row] for row in logits.tolist()],
                "greedy": gen[0, len(prompt):].tolist(),
            })
        with open(os.path.join(out_dir, "reference.json"), "w") as f:
            json.dump({"generator": "scripts/gen_parity_fixtures.py", "model": name,
                       "transformers": __import__("transformers").__version__,
                       "torch": torch.__version__, "cases": cases}, f)
        print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
