#!/usr/bin/env python3
"""Generate HF-transformers parity fixtures for engine/tests/models.rs (`hf_parity_fixtures`).

Creates tiny random Qwen3 (tied embeddings), Llama (rope_scaling llama3) and Qwen2 (qkv bias,
untied lm_head) models in f32 and writes, per model, to engine/tests/fixtures/parity/<name>/:
config.json + model.safetensors (save_pretrained) and reference.json with a few prompts, their
full-sequence logits (all positions, 6 significant digits) and a 32-token greedy continuation.

With --gpu (run on the GPU machine by scripts/gpu-test.sh, output not committed): the same three
architectures with the head dims the CUDA attention kernels support (Qwen3 128, Llama and Qwen2
64), run by transformers in bf16 on CUDA; reference.json also records, per greedy step, the gap
between HF's top two logits so a test can tell a real divergence from a bf16 near-tie.

Needs: torch, transformers, safetensors (CPU is fine without --gpu).
Usage: python3 scripts/gen_parity_fixtures.py [--out engine/tests/fixtures/parity] [--gpu]
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

# --gpu: GQA everywhere, head dims 128 and 64, a longer context.
GPU_COMMON = dict(intermediate_size=384, num_hidden_layers=3, vocab_size=512, max_position_embeddings=1024,
                  rms_norm_eps=1e-6, torch_dtype="float32")
GPU_MODELS = {
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**GPU_COMMON, hidden_size=256, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=128, tie_word_embeddings=True,
                                            rope_theta=1000000.0)),
    "llama": (LlamaForCausalLM, LlamaConfig(**GPU_COMMON, hidden_size=256, num_attention_heads=4,
                                            num_key_value_heads=1, tie_word_embeddings=False,
                                            rope_theta=500000.0,
                                            rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                          "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 64})),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config(**GPU_COMMON, hidden_size=256, num_attention_heads=4,
                                            num_key_value_heads=2, tie_word_embeddings=False,
                                            rope_theta=1000000.0)),
}

PROMPTS = [[1, 17, 42, 99, 3, 250, 7], [5], list(range(10, 60, 3))]
GPU_PROMPTS = PROMPTS + [[(7 * i + 3) % 500 for i in range(300)]]
GREEDY_TOKENS = 32


def write_tiny_tokenizer(out_dir, vocab_size):
    """A word-level tokenizer over the model's ids plus a ChatML template, so `mllm serve` can
    answer chat requests on the random model (--gpu only)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    special = ["[UNK]", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(special)}
    vocab.update({f"w{i}": i for i in range(len(special), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(special[1:])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    template = ("{% for m in messages %}<|im_start|> {{ m.role }} {{ m.content }} <|im_end|> {% endfor %}"
                "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": template, "eos_token": "<|im_end|>", "unk_token": "[UNK]"}, f)


def sig6(x):
    return float(f"{x:.6g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "engine", "tests",
                                                   "fixtures", "parity"))
    ap.add_argument("--gpu", action="store_true", help="bf16 on CUDA, head dims 64/128")
    args = ap.parse_args()
    torch.manual_seed(0)
    models, prompts = (GPU_MODELS, GPU_PROMPTS) if args.gpu else (MODELS, PROMPTS)
    for name, (cls, cfg) in models.items():
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
        if args.gpu:
            write_tiny_tokenizer(out_dir, cfg.vocab_size)
            # Reload as users do: from_pretrained in bf16 keeps the RoPE inv_freq buffer in f32,
            # while model.to(bfloat16) would round it to bf16 (phase errors of ~0.3 at position 300).
            model = cls.from_pretrained(out_dir, dtype=torch.bfloat16).eval().to("cuda")
            assert model.model.rotary_emb.inv_freq.dtype == torch.float32
        device = "cuda" if args.gpu else "cpu"
        cases = []
        for prompt in prompts:
            ids = torch.tensor([prompt], device=device)
            with torch.no_grad():
                logits = model(ids).logits[0].float()
                gen = model.generate(ids, max_new_tokens=GREEDY_TOKENS, do_sample=False,
                                     min_new_tokens=GREEDY_TOKENS, eos_token_id=None, pad_token_id=0,
                                     output_scores=True, return_dict_in_generate=True)
            case = {
                "input_ids": prompt,
                "logits": [[sig6(v) for v in row] for row in logits.tolist()],
                "greedy": gen.sequences[0, len(prompt):].tolist(),
            }
            if args.gpu:
                top2 = [torch.topk(s[0].float(), 2).values.tolist() for s in gen.scores]
                case["greedy_gaps"] = [sig6(a - b) for a, b in top2]
            cases.append(case)
        extra = {}
        if args.gpu:
            # HF's RoPE at the last prompt position, to tell RoPE from attention when they differ.
            rot = model.model.rotary_emb
            pos = max(len(p) for p in prompts) - 1
            ang = pos * rot.inv_freq.float()
            extra["rope_check"] = {"position": pos, "cos": ang.cos().tolist(), "sin": ang.sin().tolist(),
                                   "attention_scaling": float(rot.attention_scaling)}
        with open(os.path.join(out_dir, "reference.json"), "w") as f:
            json.dump({"generator": "scripts/gen_parity_fixtures.py", "model": name,
                       "transformers": __import__("transformers").__version__,
                       "torch": torch.__version__, "cases": cases, **extra}, f)
        print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
