//! Random HF-named weights for a config (benchmarks and tests without a checkpoint, like
//! SGLang's `--load-format dummy`).

use std::collections::HashMap;

use rayon::prelude::*;

use super::arch::lookup;
use super::qwen3_vl::Qwen3VlConfig;
use super::Result;
use crate::loader::config::ModelConfig;
use half::{bf16, f16};

use crate::tensor::{DType, Tensor};

/// splitmix64 → uniform `[-scale, scale)`.
/// `n` values of one splitmix64 stream, `u · scale + offset` for `u` uniform in [-1, 1),
/// computed in f32 and stored as `T`: element `i` mixes `seed + (start + i + 1)·γ`, so any slice
/// of the stream can be computed on its own (in parallel, identical to a sequential walk), and
/// bf16 weights never pass through an f32 copy.
/// `convert` rounds the f32 value to `T` (the same value an f64 detour would give: f32 is exact
/// in f64).
fn fill<T: Send>(n: usize, start: u64, seed: u64, scale: f32, offset: f32, convert: fn(f32) -> T) -> Vec<T> {
    (0..n as u64)
        .into_par_iter()
        .map(|i| {
            let mut z = seed.wrapping_add((start + i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            convert(u * scale + offset)
        })
        .collect()
}

/// [`fill`] into a tensor of `dtype`.
fn random_tensor(shape: &[usize], dtype: DType, (start, seed): (u64, u64), scale: f32, offset: f32) -> Result<Tensor> {
    let n = shape.iter().product();
    Ok(match dtype {
        DType::BF16 => Tensor::from_vec(fill(n, start, seed, scale, offset, bf16::from_f32), shape)?,
        DType::F16 => Tensor::from_vec(fill(n, start, seed, scale, offset, f16::from_f32), shape)?,
        _ => Tensor::from_f32(&fill(n, start, seed, scale, offset, |v| v), shape, dtype)?,
    })
}

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
    fill_shapes(shapes, seed, dtype)
}

/// Random tensors for `(name, shape)` pairs: norm weights near 1, biases small, matrices scaled
/// by 1/√fan-in (fan-in: every dimension after the first).
fn fill_shapes(shapes: Vec<(String, Vec<usize>)>, seed: u64, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let mut start = 0u64;
    let mut out = HashMap::new();
    for (name, shape) in shapes {
        let (scale, offset) = match shape.len() {
            1 if name.contains("norm") && name.ends_with(".weight") => (0.1, 1.0),
            1 => (0.1, 0.0),
            _ => (1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt(), 0.0),
        };
        let t = random_tensor(&shape, dtype, (start, seed), scale, offset)?;
        start += t.numel() as u64;
        out.insert(name, t);
    }
    Ok(out)
}

/// Random weights for a whole Qwen3-VL model under its HF names (`model.language_model.*`,
/// `model.visual.*`, `lm_head.weight`): what [`super::qwen3_vl::Qwen3VlModel::load`] reads.
///
/// ```
/// use mllm_engine::models::qwen3_vl::{Qwen3VlConfig, Qwen3VlModel};
/// use mllm_engine::models::random::random_vl_weights;
/// let cfg = Qwen3VlConfig::from_dir("tests/fixtures/qwen3_vl_model")?;
/// let w = random_vl_weights(&cfg, 0, mllm_engine::tensor::DType::F32)?;
/// assert!(w.contains_key("model.visual.blocks.0.attn.qkv.weight"));
/// Qwen3VlModel::load(cfg, &w, &Default::default())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn random_vl_weights(cfg: &Qwen3VlConfig, seed: u64, dtype: DType) -> Result<HashMap<String, Tensor>> {
    let text = ModelConfig {
        architectures: vec!["Qwen3ForCausalLM".into()],
        ..cfg.text.clone()
    };
    let mut out: HashMap<String, Tensor> = random_weights(&text, seed, dtype)?
        .into_iter()
        .map(|(name, t)| match name.strip_prefix("model.") {
            Some(rest) => (format!("model.language_model.{rest}"), t),
            None => (name, t),
        })
        .collect();
    let v = &cfg.vision;
    let (d, ff, merged) = (v.hidden_size, v.intermediate_size, v.hidden_size * v.merge_unit());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        (
            "patch_embed.proj.weight".into(),
            vec![d, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size],
        ),
        ("patch_embed.proj.bias".into(), vec![d]),
        ("pos_embed.weight".into(), vec![v.num_position_embeddings, d]),
    ];
    let mut linear = |name: String, out: usize, inp: usize| {
        shapes.push((format!("{name}.weight"), vec![out, inp]));
        shapes.push((format!("{name}.bias"), vec![out]));
    };
    for i in 0..v.depth {
        linear(format!("blocks.{i}.attn.qkv"), 3 * d, d);
        linear(format!("blocks.{i}.attn.proj"), d, d);
        linear(format!("blocks.{i}.mlp.linear_fc1"), ff, d);
        linear(format!("blocks.{i}.mlp.linear_fc2"), d, ff);
    }
    let mergers = std::iter::once(("merger".to_string(), d))
        .chain((0..v.deepstack_visual_indexes.len()).map(|j| (format!("deepstack_merger_list.{j}"), merged)));
    let mut norms: Vec<(String, usize)> = (0..v.depth)
        .flat_map(|i| [(format!("blocks.{i}.norm1"), d), (format!("blocks.{i}.norm2"), d)])
        .collect();
    for (name, norm_dim) in mergers {
        linear(format!("{name}.linear_fc1"), merged, merged);
        linear(format!("{name}.linear_fc2"), v.out_hidden_size, merged);
        norms.push((format!("{name}.norm"), norm_dim));
    }
    for (name, n) in norms {
        shapes.push((format!("{name}.weight"), vec![n]));
        shapes.push((format!("{name}.bias"), vec![n]));
    }
    let shapes = shapes
        .into_iter()
        .map(|(n, s)| (format!("model.visual.{n}"), s))
        .collect();
    out.extend(fill_shapes(shapes, seed ^ 0x5eed_0f00_u64, dtype)?);
    Ok(out)
}
