//! Random HF-named weights for a config (benchmarks and tests without a checkpoint, like
//! SGLang's `--load-format dummy`).

use std::collections::HashMap;

use super::arch::lookup;
use super::Result;
use crate::loader::config::ModelConfig;
use crate::tensor::{DType, Tensor};

/// splitmix64 → uniform `[-scale, scale)`.
fn fill(n: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Every parameter `config`'s architecture loads, with HF names, random values of `dtype`
/// (norm weights near 1, projections scaled by `1/sqrt(fan_in)`).
pub fn random_weights(config: &ModelConfig, seed: u64, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let arch = lookup(config.architectures.first().unwrap_or(&config.model_type))?;
    let (h, d, inter) = (config.hidden_size, config.head_dim, config.intermediate_size);
    let (q, kv) = (config.num_attention_heads * d, config.num_key_value_heads * d);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![config.vocab_size, h]),
        ("model.norm.weight".into(), vec![h]),
    ];
    if !config.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![config.vocab_size, h]));
    }
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut add = |n: &str, s: Vec<usize>| shapes.push((format!("{p}.{n}"), s));
        for (n, rows) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
            add(&format!("self_attn.{n}.weight"), vec![rows, h]);
            if arch.qkv_bias || config.attention_bias {
                add(&format!("self_attn.{n}.bias"), vec![rows]);
            }
        }
        add("self_attn.o_proj.weight", vec![h, q]);
        if arch.qk_norm {
            add("self_attn.q_norm.weight", vec![d]);
            add("self_attn.k_norm.weight", vec![d]);
        }
        add("mlp.gate_proj.weight", vec![inter, h]);
        add("mlp.up_proj.weight", vec![inter, h]);
        add("mlp.down_proj.weight", vec![h, inter]);
        add("input_layernorm.weight", vec![h]);
        add("post_attention_layernorm.weight", vec![h]);
    }
    let mut s = seed;
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let v = if shape.len() == 1 && name.ends_with("norm.weight") {
            fill(n, &mut s, 0.1).into_iter().map(|x| x + 1.0).collect()
        } else if shape.len() == 1 {
            fill(n, &mut s, 0.1)
        } else {
            fill(n, &mut s, 1.0 / (shape[1] as f32).sqrt())
        };
        out.insert(name, Tensor::from_f32(&v, &shape, dtype)?);
    }
    Ok(out)
}
