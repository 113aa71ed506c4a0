//! Model-level tests on tiny random models: batching, prefix caching and decode consistency,
//! GGUF name mapping with llama.cpp's q/k permutation, HF parity fixtures, and a CPU benchmark.

use std::collections::HashMap;
use std::path::Path;

use mllm_engine::executor::device::Device;
use mllm_engine::executor::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
use mllm_engine::executor::model_runner::{ModelRunner, RunnerConfig};
use mllm_engine::executor::sampler::{SamplingParams, SequenceState};
use mllm_engine::loader::config::ModelConfig;
use mllm_engine::loader::gguf::GgufFile;
use mllm_engine::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};
use mllm_engine::models::gguf::{permute_qk, unpermute_qk};
use mllm_engine::models::random::random_weights;
use mllm_engine::models::{CausalLM, LoadOptions, ModelError};
use mllm_engine::tensor::{DType, Tensor};

fn config(arch: &str, model_type: &str, extra: &str) -> ModelConfig {
    let json = format!(
        r#"{{"architectures": ["{arch}"], "model_type": "{model_type}", "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 256 {extra}}}"#
    );
    ModelConfig::from_json_str(&json, "test/config.json").unwrap()
}

fn configs() -> Vec<ModelConfig> {
    vec![
        config("Qwen3ForCausalLM", "qwen3", r#", "tie_word_embeddings": true"#),
        config(
            "LlamaForCausalLM",
            "llama",
            r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}"#,
        ),
        config("Qwen2ForCausalLM", "qwen2", ""),
    ]
}

fn model(cfg: &ModelConfig) -> CausalLM {
    let w = random_weights(cfg, 7, DType::F32).unwrap();
    CausalLM::load(cfg.clone(), &w, &LoadOptions::default()).unwrap()
}

struct Pools {
    req: ReqToTokenPool,
    kv: TokenToKvPool,
}

fn pools(m: &CausalLM) -> Pools {
    let c = m.config();
    Pools {
        req: ReqToTokenPool::new(8, 256),
        kv: TokenToKvPool::new(
            1024,
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            KvDtype::F32,
        ),
    }
}

/// Runs one batch and returns logits rows.
fn run(m: &CausalLM, p: &mut Pools, inputs: &[SequenceInput], mode: LogitsMode) -> Vec<Vec<f32>> {
    let b = ForwardBatch::build(inputs, &mut p.req, &mut p.kv, mode).unwrap();
    let l = m.forward(&b.input_ids, &b.positions, &b, &mut p.kv).unwrap();
    let v = m.config().vocab_size;
    l.to_f32_vec().unwrap().chunks(v).map(|r| r.to_vec()).collect()
}

fn prompt(len: usize, seed: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 31 + seed * 17 + 3) % 128).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn seq(slot: usize, prefix: usize, toks: Vec<u32>) -> SequenceInput {
    SequenceInput {
        req_slot: slot,
        prefix_len: prefix,
        new_tokens: toks,
    }
}

#[test]
fn batched_mixed_lengths_equal_one_by_one() {
    for cfg in configs() {
        let m = model(&cfg);
        let prompts = [prompt(5, 1), prompt(1, 2), prompt(9, 3)];
        let mut p = pools(&m);
        let slots = p.req.alloc(3).unwrap();
        let inputs: Vec<_> = prompts.iter().zip(&slots).map(|(t, &s)| seq(s, 0, t.clone())).collect();
        let batched = run(&m, &mut p, &inputs, LogitsMode::LastPerSequence);
        // Then one decode step for all three in one batch.
        let dec: Vec<_> = prompts
            .iter()
            .zip(&slots)
            .map(|(t, &s)| seq(s, t.len(), vec![42]))
            .collect();
        let batched_dec = run(&m, &mut p, &dec, LogitsMode::LastPerSequence);
        for (i, t) in prompts.iter().enumerate() {
            let mut q = pools(&m);
            let s = q.req.alloc(1).unwrap()[0];
            let single = run(&m, &mut q, &[seq(s, 0, t.clone())], LogitsMode::LastPerSequence);
            assert!(
                max_diff(&single[0], &batched[i]) < 1e-4,
                "{} prefill seq {i}",
                cfg.model_type
            );
            let single_dec = run(&m, &mut q, &[seq(s, t.len(), vec![42])], LogitsMode::LastPerSequence);
            assert!(
                max_diff(&single_dec[0], &batched_dec[i]) < 1e-4,
                "{} decode seq {i}",
                cfg.model_type
            );
        }
    }
}

#[test]
fn extend_with_cached_prefix_and_decode_match_full_prefill() {
    for cfg in configs() {
        let m = model(&cfg);
        let toks = prompt(12, 5);
        let mut full = pools(&m);
        let s = full.req.alloc(1).unwrap()[0];
        let all = run(&m, &mut full, &[seq(s, 0, toks.clone())], LogitsMode::All);
        assert_eq!(all.len(), 12);

        // 7 cached, then 4 extended, then 1 decoded.
        let mut p = pools(&m);
        let s = p.req.alloc(1).unwrap()[0];
        run(&m, &mut p, &[seq(s, 0, toks[..7].to_vec())], LogitsMode::All);
        let ext = run(&m, &mut p, &[seq(s, 7, toks[7..11].to_vec())], LogitsMode::All);
        for (i, row) in ext.iter().enumerate() {
            assert!(max_diff(row, &all[7 + i]) < 1e-4, "{} extend row {i}", cfg.model_type);
        }
        let dec = run(&m, &mut p, &[seq(s, 11, vec![toks[11]])], LogitsMode::LastPerSequence);
        assert!(max_diff(&dec[0], &all[11]) < 1e-4, "{} decode", cfg.model_type);
    }
}

#[test]
fn runner_steps_greedy_and_releases() {
    let cfg = configs().remove(0);
    let m = model(&cfg);
    let rc = RunnerConfig {
        kv_budget_bytes: 1 << 20,
        kv_dtype: KvDtype::F32,
        device: Device::Cpu,
        gpu_mem_fraction: None,
        cuda_graph_max_bs: 0,
        max_running_requests: 4,
        max_context_len: 64,
    };
    let mut r = ModelRunner::new(m, rc).unwrap();
    let free = r.kv_pool().available();
    let toks = prompt(6, 9);
    let slot = r.req_pool_mut().alloc(1).unwrap()[0];
    let mut st = vec![SequenceState::new(SamplingParams::greedy(), &toks).unwrap()];
    let b = r
        .prepare(&[seq(slot, 0, toks.clone())], LogitsMode::LastPerSequence)
        .unwrap();
    let out = r.step(&b, &mut st).unwrap();
    let b = r
        .prepare(&[seq(slot, 6, vec![out[0].token])], LogitsMode::LastPerSequence)
        .unwrap();
    let out2 = r.step(&b, &mut st).unwrap();
    assert_eq!(st[0].output_tokens(), &[out[0].token, out2[0].token]);
    r.release(slot, 7).unwrap();
    assert_eq!(r.kv_pool().available(), free);
    let bad = RunnerConfig {
        kv_budget_bytes: 0,
        ..rc
    };
    assert!(ModelRunner::new(model(&cfg), bad).is_err());
}

#[test]
fn loading_errors_are_clear() {
    let cfg = configs().remove(2);
    let mut w = random_weights(&cfg, 1, DType::F32).unwrap();
    let q = w.remove("model.layers.1.self_attn.q_proj.weight").unwrap();
    w.insert("model.layers.1.self_attn.q_projj.weight".into(), q.clone());
    let err = CausalLM::load(cfg.clone(), &w, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing weight `model.layers.1.self_attn.q_proj.weight`"),
        "{err}"
    );
    assert!(err.contains("similar names in the checkpoint"), "{err}");

    let mut w = random_weights(&cfg, 1, DType::F32).unwrap();
    w.insert(
        "model.layers.1.self_attn.q_proj.weight".into(),
        q.reshape(&[32, 128]).unwrap(),
    );
    let err = CausalLM::load(cfg.clone(), &w, &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, ModelError::WeightShape { .. }), "{err}");

    let mut w = random_weights(&cfg, 1, DType::F32).unwrap();
    w.insert("model.extra.weight".into(), Tensor::zeros(&[1], DType::F32));
    let err = CausalLM::load(cfg.clone(), &w, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unexpected weight(s) in checkpoint: model.extra.weight"),
        "{err}"
    );

    let mut bad = cfg.clone();
    bad.architectures = vec!["MambaForCausalLM".into()];
    let err = CausalLM::load(bad, &w, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown architecture `MambaForCausalLM`") && err.contains("LlamaForCausalLM"),
        "{err}"
    );
}

#[test]
fn qk_permutation_round_trips() {
    let rows = 4 * 16;
    let w: Vec<f32> = (0..rows * 3).map(|x| x as f32).collect();
    let p = permute_qk(&w, rows, 4);
    assert_ne!(p, w);
    assert_eq!(unpermute_qk(&p, rows, 4), w);
}

/// A minimal GGUF v3 writer (F32 tensors, one string metadata key).
fn write_gguf(arch: &str, tensors: &[(String, Tensor)]) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend(1u64.to_le_bytes());
    s(&mut out, "general.architecture");
    out.extend(8u32.to_le_bytes());
    s(&mut out, arch);
    let mut offset = 0u64;
    for (name, t) in tensors {
        s(&mut out, name);
        out.extend((t.rank() as u32).to_le_bytes());
        for &d in t.shape().iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (t.numel() as u64 * 4).div_ceil(32) * 32;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    for (_, t) in tensors {
        out.extend(t.as_bytes());
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
    }
    out
}

/// HF name → GGUF name (the inverse of the loader's mapping), permuting llama q/k like llama.cpp.
fn to_gguf(cfg: &ModelConfig, w: &HashMap<String, Tensor>, permute: bool) -> Vec<(String, Tensor)> {
    let map = [
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_output"),
        ("self_attn.q_norm", "attn_q_norm"),
        ("self_attn.k_norm", "attn_k_norm"),
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
        ("mlp.gate_proj", "ffn_gate"),
        ("mlp.up_proj", "ffn_up"),
        ("mlp.down_proj", "ffn_down"),
    ];
    let mut out: Vec<(String, Tensor)> = w
        .iter()
        .map(|(name, t)| {
            let g = match name.as_str() {
                "model.embed_tokens.weight" => "token_embd.weight".to_string(),
                "model.norm.weight" => "output_norm.weight".to_string(),
                "lm_head.weight" => "output.weight".to_string(),
                n => {
                    let rest = n.strip_prefix("model.layers.").unwrap();
                    let (layer, tail) = rest.split_once('.').unwrap();
                    let (part, param) = tail.rsplit_once('.').unwrap();
                    let g = map.iter().find(|(h, _)| *h == part).unwrap().1;
                    format!("blk.{layer}.{g}.{param}")
                }
            };
            let heads = if g.contains("attn_q.") {
                cfg.num_attention_heads
            } else {
                cfg.num_key_value_heads
            };
            let t = if permute && (g.contains("attn_q.") || g.contains("attn_k.")) {
                let v = permute_qk(&t.to_f32_vec().unwrap(), t.shape()[0], heads);
                Tensor::from_vec(v, t.shape()).unwrap()
            } else {
                t.clone()
            };
            (g, t)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn gguf_named_weights_give_same_logits() {
    for cfg in configs() {
        let w = random_weights(&cfg, 3, DType::F32).unwrap();
        let hf = CausalLM::load(cfg.clone(), &w, &LoadOptions::default()).unwrap();
        let arch = cfg.model_type.clone();
        let bytes = write_gguf(&arch, &to_gguf(&cfg, &w, arch == "llama"));
        let file = GgufFile::from_bytes(bytes).unwrap();
        let gg = CausalLM::from_gguf(&file, cfg.clone(), &LoadOptions::default()).unwrap();
        let toks = prompt(10, 4);
        let (mut p1, mut p2) = (pools(&hf), pools(&gg));
        let s1 = p1.req.alloc(1).unwrap()[0];
        let s2 = p2.req.alloc(1).unwrap()[0];
        let a = run(&hf, &mut p1, &[seq(s1, 0, toks.clone())], LogitsMode::All);
        let b = run(&gg, &mut p2, &[seq(s2, 0, toks)], LogitsMode::All);
        for (x, y) in a.iter().zip(&b) {
            assert!(max_diff(x, y) < 1e-5, "{arch}");
        }
    }
}

// ---- HF parity fixtures (generated by scripts/gen_parity_fixtures.py) ----

#[derive(serde::Deserialize)]
struct Case {
    input_ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
    greedy: Vec<u32>,
}

#[derive(serde::Deserialize)]
struct Reference {
    cases: Vec<Case>,
}

/// Greedy decoding of `n` tokens after `prompt`, one sequence, via the runner.
fn greedy(m: CausalLM, prompt: &[u32], n: usize) -> Vec<u32> {
    let rc = RunnerConfig {
        kv_budget_bytes: 64 << 20,
        kv_dtype: KvDtype::F32,
        device: Device::Cpu,
        gpu_mem_fraction: None,
        cuda_graph_max_bs: 0,
        max_running_requests: 1,
        max_context_len: prompt.len() + n + 1,
    };
    let mut r = ModelRunner::new(m, rc).unwrap();
    let slot = r.req_pool_mut().alloc(1).unwrap()[0];
    let mut st = vec![SequenceState::new(SamplingParams::greedy(), prompt).unwrap()];
    let mut next = seq(slot, 0, prompt.to_vec());
    for _ in 0..n {
        let b = r.prepare(&[next.clone()], LogitsMode::LastPerSequence).unwrap();
        let tok = r.step(&b, &mut st).unwrap()[0].token;
        next = seq(slot, next.prefix_len + next.new_tokens.len(), vec![tok]);
    }
    st[0].output_tokens().to_vec()
}

#[test]
fn hf_parity_fixtures() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let Ok(entries) = std::fs::read_dir(&root) else {
        eprintln!(
            "skipping HF parity: {} does not exist (run scripts/gen_parity_fixtures.py)",
            root.display()
        );
        return;
    };
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("reference.json")).unwrap();
        let reference: Reference = serde_json::from_str(&text).unwrap();
        let m = CausalLM::from_dir(&dir, &LoadOptions::default()).unwrap();
        for case in &reference.cases {
            let mut p = pools(&m);
            let s = p.req.alloc(1).unwrap()[0];
            let got = run(&m, &mut p, &[seq(s, 0, case.input_ids.clone())], LogitsMode::All);
            for (pos, (g, want)) in got.iter().zip(&case.logits).enumerate() {
                let lo = want.iter().copied().fold(f32::INFINITY, f32::min);
                let hi = want.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = max_diff(g, want);
                assert!(
                    d <= 1e-3 * (hi - lo),
                    "{}: position {pos}: max diff {d} (range {})",
                    dir.display(),
                    hi - lo
                );
            }
            let m2 = CausalLM::from_dir(&dir, &LoadOptions::default()).unwrap();
            let out = greedy(m2, &case.input_ids, case.greedy.len());
            assert_eq!(out, case.greedy, "{}: greedy continuation", dir.display());
        }
        eprintln!("HF parity ok: {}", dir.display());
    }
}

// ---- CPU throughput on SmolLM2-135M shapes (random weights) ----

/// `cargo test --release -p mllm-engine --test models -- --ignored --nocapture bench_smollm2_shapes`
#[test]
#[ignore]
fn bench_smollm2_shapes() {
    let json = r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "vocab_size": 49152, "rms_norm_eps": 1e-5, "rope_theta": 100000,
        "max_position_embeddings": 8192, "tie_word_embeddings": true}"#;
    let cfg = ModelConfig::from_json_str(json, "smollm2/config.json").unwrap();
    let dtype = match std::env::var("MLLM_BENCH_DTYPE").as_deref() {
        Ok("f32") => DType::F32,
        _ => DType::BF16,
    };
    let w = random_weights(&cfg, 11, dtype).unwrap();
    let m = CausalLM::load(cfg, &w, &LoadOptions::default()).unwrap();
    drop(w);
    let mut p = pools(&m);
    let s = p.req.alloc(1).unwrap()[0];
    let toks: Vec<u32> = (0..128u32).map(|i| i * 97 % 49152).collect();
    run(
        &m,
        &mut p,
        &[seq(s, 0, toks[..8].to_vec())],
        LogitsMode::LastPerSequence,
    ); // warm-up
    let mut p = pools(&m);
    let s = p.req.alloc(1).unwrap()[0];
    let t = std::time::Instant::now();
    run(&m, &mut p, &[seq(s, 0, toks.clone())], LogitsMode::LastPerSequence);
    let prefill = t.elapsed().as_secs_f64();
    let n = 32;
    let t = std::time::Instant::now();
    for i in 0..n {
        run(
            &m,
            &mut p,
            &[seq(s, 128 + i, vec![i as u32])],
            LogitsMode::LastPerSequence,
        );
    }
    let decode = t.elapsed().as_secs_f64();
    eprintln!(
        "SmolLM2-135M shapes, {dtype} weights: prefill 128 tokens {:.1} tok/s ({:.0} ms), decode {:.1} tok/s",
        128.0 / prefill,
        prefill * 1e3,
        n as f64 / decode
    );
}
