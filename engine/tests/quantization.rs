//! W8A8 int8 quantization end to end: parameter shapes and layouts of the scheme, forward
//! correctness against the dequantized reference, accuracy against the float model on the tiny
//! HF parity fixtures (`tests/fixtures/parity`, from scripts/gen_parity_fixtures.py),
//! compressed-tensors checkpoints written by `mllm quantize` and read back, a service smoke test
//! through the in-process `mllm serve`, and SmolLM2 perplexity (skipped when not cached).

mod common;

use common::logits::{argmax, kl, log_softmax};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mllm_engine::executor::forward_batch::{ForwardBatch, LogitsMode, SequenceInput};
use mllm_engine::generation::{LoadedModel, ModelSource};
use mllm_engine::layers::linear::{Linear, LinearMethod, Shard};
use mllm_engine::loader::config::ModelConfig;
use mllm_engine::loader::safetensors::SafetensorsModel;
use mllm_engine::mem_cache::{KvDtype, ReqToTokenPool, TokenToKvPool};
use mllm_engine::models::weights::WeightSource;
use mllm_engine::models::{CausalLM, LoadOptions};
use mllm_engine::quantization::observe::CALIBRATION_TEXT;
use mllm_engine::quantization::quantize::{dequantize_per_channel, quantize_per_channel};
use mllm_engine::quantization::scheme::SchemeLinearMethod;
use mllm_engine::quantization::smooth::{smooth, DEFAULT_ALPHA};
use mllm_engine::quantization::w8a8::{ActivationScale, W8A8Int8, WeightScale};
use mllm_engine::quantization::writer::{write_w8a8, write_w8a8_with, Smoothing};
use mllm_engine::quantization::QuantMethod;
use mllm_engine::tensor::{DType, Tensor};
use serde_json::{json, Value};

const ARCHS: [&str; 3] = ["llama", "qwen2", "qwen3"];

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(arch)
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn tensor(v: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape).unwrap()
}

fn checkpoint_scheme(weight: WeightScale, activations: ActivationScale) -> Arc<dyn LinearMethod> {
    Arc::new(SchemeLinearMethod::new(Arc::new(W8A8Int8 {
        weight,
        activations,
        from_float: false,
    })))
}

// ---------------------------------------------------------------- scheme: shapes and layouts

#[test]
fn create_weights_registers_checkpoint_params() {
    let m = checkpoint_scheme(WeightScale::PerChannel, ActivationScale::DynamicPerToken);
    let specs = m.create_weights(8, 12, true);
    let got: Vec<(&str, Vec<usize>, Option<DType>)> =
        specs.iter().map(|s| (s.name, s.shape.clone(), s.dtype)).collect();
    assert_eq!(
        got,
        vec![
            ("weight", vec![12, 8], Some(DType::I8)),
            ("weight_scale", vec![12, 1], None),
            ("bias", vec![12], None),
        ]
    );
    let m = checkpoint_scheme(WeightScale::PerTensor, ActivationScale::StaticPerTensor);
    let names: Vec<_> = m
        .create_weights(8, 12, false)
        .iter()
        .map(|s| (s.name, s.shape.clone()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("weight", vec![12, 8]),
            ("weight_scale", vec![1]),
            ("input_scale", vec![1])
        ]
    );
    // At-load quantization registers the float weight the checkpoint has.
    let m: Arc<dyn LinearMethod> = Arc::new(SchemeLinearMethod::new(Arc::new(W8A8Int8::at_load())));
    let specs = m.create_weights(8, 12, false);
    assert_eq!((specs.len(), specs[0].dtype), (1, None));

    // Loading checks dtypes and shapes.
    let mut l = Linear::new(
        4,
        vec![2, 1],
        false,
        checkpoint_scheme(WeightScale::PerChannel, ActivationScale::DynamicPerToken),
    );
    let err = l
        .weight_loader("weight", Shard::Index(0), tensor(vec![0.0; 8], &[2, 4]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dtype f32, expected i8"), "{err}");
    let err = l
        .weight_loader("weight_scale", Shard::Index(0), tensor(vec![0.0; 3], &[3, 1]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected [2, 1]"), "{err}");
    let i8w = |rows: usize| Tensor::from_vec(vec![1i8; rows * 4], &[rows, 4]).unwrap();
    let err = l
        .weight_loader("weight_scale", Shard::Index(0), i8w(2).reshape(&[2, 4]).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("expected [2, 1]"), "{err}");
}

#[test]
fn process_weights_converts_layout_once() {
    // Channel scales as bf16 [n, 1] for one shard and f32 [n] for the other.
    let mut l = Linear::new(
        4,
        vec![2, 3],
        true,
        checkpoint_scheme(WeightScale::PerChannel, ActivationScale::DynamicPerToken),
    );
    let q = |rows: usize| Tensor::from_vec((0..rows * 4).map(|i| i as i8 - 5).collect::<Vec<_>>(), &[rows, 4]).unwrap();
    l.weight_loader("weight", Shard::Index(0), q(2)).unwrap();
    l.weight_loader("weight", Shard::Index(1), q(3)).unwrap();
    let s0 = Tensor::from_f32(&[0.5, 0.25], &[2, 1], DType::BF16).unwrap();
    l.weight_loader("weight_scale", Shard::Index(0), s0).unwrap();
    l.weight_loader("weight_scale", Shard::Index(1), tensor(vec![1.0, 2.0, 4.0], &[3]))
        .unwrap();
    l.weight_loader("bias", Shard::Index(0), tensor(vec![0.0; 2], &[2]))
        .unwrap();
    l.weight_loader("bias", Shard::Index(1), tensor(vec![1.0; 3], &[3]))
        .unwrap();
    l.finish("qkv").unwrap();
    let w = l.weights();
    assert_eq!((w["weight"].dtype(), w["weight"].shape()), (DType::I8, &[5, 4][..]));
    assert_eq!(
        (w["weight_scale"].dtype(), w["weight_scale"].shape()),
        (DType::F32, &[5][..])
    );
    assert_eq!(w["weight_scale"].to_f32_vec().unwrap(), vec![0.5, 0.25, 1.0, 2.0, 4.0]);
    assert_eq!(w["bias"].dtype(), DType::F32);

    // Per-tensor scales expand over their shard's rows; static input scales reduce to the max.
    let mut l = Linear::new(
        4,
        vec![2, 1],
        false,
        checkpoint_scheme(WeightScale::PerTensor, ActivationScale::StaticPerTensor),
    );
    for (i, (rows, ws, is)) in [(2, 0.5f32, 0.1f32), (1, 3.0, 0.3)].into_iter().enumerate() {
        l.weight_loader("weight", Shard::Index(i), q(rows)).unwrap();
        l.weight_loader("weight_scale", Shard::Index(i), tensor(vec![ws], &[1]))
            .unwrap();
        l.weight_loader("input_scale", Shard::Index(i), tensor(vec![is], &[1]))
            .unwrap();
    }
    l.finish("qkv").unwrap();
    let w = l.weights();
    assert_eq!(w["weight_scale"].to_f32_vec().unwrap(), vec![0.5, 0.5, 3.0]);
    assert_eq!(w["input_scale"].to_f32_vec().unwrap(), vec![0.3]);

    // At load: a float weight becomes int8 + f32 per-channel scales.
    let mut l = Linear::new(
        4,
        vec![3],
        false,
        Arc::new(SchemeLinearMethod::new(Arc::new(W8A8Int8::at_load()))),
    );
    let wf = Tensor::from_f32(&values(12, 3), &[3, 4], DType::BF16).unwrap();
    l.weight_loader("weight", Shard::Whole, wf).unwrap();
    l.finish("down_proj").unwrap();
    let w = l.weights();
    assert_eq!((w["weight"].dtype(), w["weight"].shape()), (DType::I8, &[3, 4][..]));
    assert_eq!(
        (w["weight_scale"].dtype(), w["weight_scale"].shape()),
        (DType::F32, &[3][..])
    );
    let absmax_row = w["weight"]
        .as_slice::<i8>()
        .unwrap()
        .chunks(4)
        .all(|r| r.iter().any(|v| v.abs() == 127));
    assert!(absmax_row, "every channel's absmax maps to ±127");
}

// ---------------------------------------------------------------- forward correctness

#[test]
fn forward_matches_dequantized_reference() {
    let (m, k, n) = (9, 70, 33);
    let wf = tensor(values(n * k, 1), &[n, k]);
    let x = tensor(values(m * k, 2).iter().map(|v| v * 3.0).collect(), &[m, k]);
    let bias = values(n, 4);
    let mut l = Linear::new(
        k,
        vec![n],
        true,
        Arc::new(SchemeLinearMethod::new(Arc::new(W8A8Int8::at_load()))),
    );
    l.weight_loader("weight", Shard::Whole, wf.clone()).unwrap();
    l.weight_loader("bias", Shard::Whole, tensor(bias.clone(), &[n]))
        .unwrap();
    l.finish("proj").unwrap();
    let y = l.forward(&x).unwrap().to_f32_vec().unwrap();

    // Bit-exact against the kernel crate's CPU oracle.
    let (qw, sw) = quantize_per_channel(&wf).unwrap();
    let (qa, sa) = mllm_kernel::reference::per_token_quant_int8::<f32>(&x.to_f32_vec().unwrap(), k);
    let want = mllm_kernel::reference::int8_scaled_mm::<f32>(
        &qa,
        qw.as_slice::<i8>().unwrap(),
        m,
        n,
        k,
        &sa,
        &sw.to_f32_vec().unwrap(),
        Some(&bias),
    );
    assert_eq!(y, want);

    // Against f32 math on the dequantized weight and activations: only summation order differs
    // (|y| ≲ 30 here, k = 70 terms → a few f32 ulps).
    let wd = dequantize_per_channel(&qw, &sw).unwrap().to_f32_vec().unwrap();
    for i in 0..m {
        for j in 0..n {
            let r: f32 = (0..k)
                .map(|c| qa[i * k + c] as f32 * sa[i] * wd[j * k + c])
                .sum::<f32>()
                + bias[j];
            assert!(
                (y[i * n + j] - r).abs() <= 1e-4 * (1.0 + r.abs()),
                "[{i},{j}] {} vs {r}",
                y[i * n + j]
            );
        }
    }
    // And close to the float layer: per-element error ≤ half a step of each operand.
    let xf = x.to_f32_vec().unwrap();
    let wv = wf.to_f32_vec().unwrap();
    for i in 0..m {
        for j in 0..n {
            let exact: f32 = (0..k).map(|c| xf[i * k + c] * wv[j * k + c]).sum::<f32>() + bias[j];
            let bound: f32 = (0..k)
                .map(|c| 0.5 * sa[i] * wv[j * k + c].abs() + 0.5 * sw.to_f32_vec().unwrap()[j] * xf[i * k + c].abs())
                .sum::<f32>()
                + 1e-4;
            assert!((y[i * n + j] - exact).abs() <= bound, "[{i},{j}]");
        }
    }

    // Static per-tensor activation scale: x / s rounded, one scale for every row.
    let mut l = Linear::new(
        k,
        vec![n],
        false,
        checkpoint_scheme(WeightScale::PerChannel, ActivationScale::StaticPerTensor),
    );
    l.weight_loader("weight", Shard::Whole, qw.clone()).unwrap();
    l.weight_loader("weight_scale", Shard::Whole, sw.reshape(&[n, 1]).unwrap())
        .unwrap();
    l.weight_loader("input_scale", Shard::Whole, tensor(vec![3.0 / 127.0], &[1]))
        .unwrap();
    l.finish("proj").unwrap();
    let y = l.forward(&x).unwrap().to_f32_vec().unwrap();
    let qs: Vec<i8> = xf
        .iter()
        .map(|v| (v / (3.0 / 127.0)).round().clamp(-127.0, 127.0) as i8)
        .collect();
    let want = mllm_kernel::reference::int8_scaled_mm::<f32>(
        &qs,
        qw.as_slice::<i8>().unwrap(),
        m,
        n,
        k,
        &[3.0 / 127.0],
        &sw.to_f32_vec().unwrap(),
        None,
    );
    assert_eq!(y, want);
}

// ---------------------------------------------------------------- model-level helpers

fn logits_all(m: &CausalLM, ids: &[u32]) -> Vec<Vec<f32>> {
    m.forward_prompt(ids, LogitsMode::All)
        .unwrap()
        .to_f32_vec()
        .unwrap()
        .chunks(m.config().vocab_size)
        .map(|r| r.to_vec())
        .collect()
}

fn prompt(len: usize, seed: u32, vocab: u32) -> Vec<u32> {
    (0..len as u32).map(|i| (i * 37 + seed * 101 + 5) % vocab).collect()
}

fn load(dir: &Path, weight_dtype: Option<DType>, quantization: Option<QuantMethod>) -> CausalLM {
    CausalLM::from_dir(
        dir,
        &LoadOptions {
            weight_dtype,
            quantization,
            ..Default::default()
        },
    )
    .unwrap()
}

// ---------------------------------------------------------------- accuracy on tiny fixtures

/// W8A8 vs bf16 on the three parity fixtures, 3 prompts x 48 positions each.
///
/// Bounds: each int8 operand carries up to 0.5/127 of its row's absmax as rounding error, i.e.
/// ~0.2-1% relative error per product depending on how peaked the row is, so logit errors are
/// ~1% of the logits' spread (~0.5 on these HF random-init fixtures) and the softmaxes differ
/// by KL ≈ ½·Var(Δlogit) ≈ 1e-4 — measured 1.1e-4..2.0e-4 mean, 6.4e-4 max. The 1e-3 bound
/// leaves 5x room (summation order, other CPUs) while a wrong scale (per row instead of per
/// column, a missing activation scale) gives KL > 0.05. A top-1 flip needs the two best logits
/// within ~0.01 of each other: with 256 classes in a ±1.5 range that happens at a few percent
/// of positions (measured 95.8-96.5% agreement), hence ≥ 90%.
#[test]
fn w8a8_logits_close_to_bf16_on_fixtures() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let base = load(&dir, Some(DType::BF16), None);
        let quant = load(&dir, Some(DType::BF16), Some(QuantMethod::W8A8));
        let vocab = base.config().vocab_size as u32;
        let (mut kl_sum, mut agree, mut n, mut kl_max) = (0.0, 0, 0, 0f64);
        for seed in 0..3 {
            let ids = prompt(48, seed, vocab);
            let (a, b) = (logits_all(&base, &ids), logits_all(&quant, &ids));
            for (p, q) in a.iter().zip(&b) {
                let d = kl(p, q);
                kl_sum += d;
                kl_max = kl_max.max(d);
                agree += usize::from(argmax(p) == argmax(q));
                n += 1;
            }
        }
        let (mean, top1) = (kl_sum / n as f64, agree as f64 / n as f64);
        eprintln!(
            "{arch}: W8A8 vs bf16 over {n} positions: mean KL {mean:.2e}, max KL {kl_max:.2e}, top-1 agreement {:.1}%",
            top1 * 100.0
        );
        assert!(mean < 1e-3, "{arch}: mean KL {mean}");
        assert!(top1 >= 0.9, "{arch}: top-1 agreement {top1}");
    }
}

// ---------------------------------------------------------------- compressed-tensors checkpoints

/// A copy of fixture `arch` with a tiny word-level tokenizer (ids t0..t255), so the writer has
/// non-weight files to copy and the server has a tokenizer.
fn fixture_copy(arch: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture(arch).join(f), dir.path().join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, Value> = (0..256).map(|i| (format!("t{i}"), json!(i))).collect();
    let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}});
    std::fs::write(dir.path().join("tokenizer.json"), tok.to_string()).unwrap();
    dir
}

#[test]
fn written_checkpoint_has_compressed_tensors_layout_and_matches_at_load() {
    for arch in ARCHS {
        let input = fixture_copy(arch);
        let out = tempfile::tempdir().unwrap();
        let summary = write_w8a8(input.path(), out.path(), &[], false).unwrap();
        assert_eq!(summary.quantized, 2 * 7, "{arch}: 7 linear layers x 2 decoder layers");
        assert_eq!(summary.files, vec!["generation_config.json", "tokenizer.json"]);

        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
        let q = &cfg["quantization_config"];
        assert_eq!(q["quant_method"], "compressed-tensors");
        assert_eq!(q["format"], "int-quantized");
        let g = &q["config_groups"]["group_0"];
        assert_eq!(g["targets"], json!(["Linear"]));
        assert_eq!(
            (
                &g["weights"]["strategy"],
                &g["weights"]["dynamic"],
                &g["weights"]["num_bits"]
            ),
            (&json!("channel"), &json!(false), &json!(8))
        );
        assert_eq!(
            (&g["input_activations"]["strategy"], &g["input_activations"]["dynamic"]),
            (&json!("token"), &json!(true))
        );
        let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
        assert_eq!(q["ignore"], if tied { json!([]) } else { json!(["lm_head"]) }, "{arch}");

        let src = SafetensorsModel::open(input.path()).unwrap();
        let st = SafetensorsModel::open(out.path()).unwrap();
        let w = "model.layers.1.mlp.down_proj";
        assert_eq!(st.dtype(&format!("{w}.weight")).unwrap(), DType::I8);
        let n = st.shape(&format!("{w}.weight")).unwrap()[0];
        assert_eq!(st.shape(&format!("{w}.weight_scale")).unwrap(), &[n, 1]);
        assert_eq!(st.dtype(&format!("{w}.weight_scale")).unwrap(), DType::F32);
        for kept in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "model.layers.0.input_layernorm.weight",
        ] {
            assert_eq!(st.dtype(kept).unwrap(), src.dtype(kept).unwrap(), "{kept}");
            assert_eq!(
                st.get(kept).unwrap().as_bytes(),
                src.get(kept).unwrap().as_bytes(),
                "{kept}"
            );
        }

        // The written checkpoint loads as compressed-tensors and computes exactly what
        // quantizing at load does (same int8 values, same f32 scales).
        let from_ckpt = load(out.path(), None, None);
        let at_load = load(input.path(), None, Some(QuantMethod::W8A8));
        let ids = prompt(20, 1, from_ckpt.config().vocab_size as u32);
        assert_eq!(logits_all(&from_ckpt, &ids), logits_all(&at_load, &ids), "{arch}");
    }
}

#[test]
fn ignore_patterns_keep_layers_float_and_mixed_fused_layers_fail() {
    let input = fixture_copy("qwen2");
    let out = tempfile::tempdir().unwrap();
    let ignore = vec![
        "re:model\\.layers\\.0\\.mlp\\.".to_string(),
        "model.layers.1.self_attn.o_proj".to_string(),
    ];
    let summary = write_w8a8(input.path(), out.path(), &ignore, false).unwrap();
    assert_eq!(summary.quantized, 14 - 3 - 1);
    let st = SafetensorsModel::open(out.path()).unwrap();
    for float in [
        "model.layers.0.mlp.gate_proj.weight",
        "model.layers.1.self_attn.o_proj.weight",
    ] {
        assert_eq!(st.dtype(float).unwrap(), DType::F32, "{float}");
        assert!(!st.contains(&float.replace(".weight", ".weight_scale")));
    }
    assert_eq!(st.dtype("model.layers.1.mlp.gate_proj.weight").unwrap(), DType::I8);
    assert!(
        summary.ignore.contains(&"re:model\\.layers\\.0\\.mlp\\.".to_string()),
        "{:?}",
        summary.ignore
    );
    // Loads with those layers float; close to the float model.
    let m = load(out.path(), None, None);
    let base = load(input.path(), None, None);
    let ids = prompt(16, 2, 256);
    let (a, b) = (logits_all(&base, &ids), logits_all(&m, &ids));
    let mean_kl: f64 = a.iter().zip(&b).map(|(p, q)| kl(p, q)).sum::<f64>() / a.len() as f64;
    assert!(mean_kl < 1e-3, "{mean_kl}");

    // Ignoring only k_proj would split the fused qkv layer: the writer refuses...
    let split = tempfile::tempdir().unwrap();
    let err = write_w8a8(
        input.path(),
        split.path(),
        &["model.layers.0.self_attn.k_proj".to_string()],
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("model.layers.0.self_attn.{q_proj,k_proj,v_proj}"), "{err}");
    assert!(err.contains("model.layers.0.self_attn.k_proj: ignored"), "{err}");
    // ...and a checkpoint whose config splits it fails to load with the same kind of error.
    let cfg_path = out.path().join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let ignore = cfg["quantization_config"]["ignore"].as_array_mut().unwrap();
    ignore.push(json!("re:.*\\.layers\\.1\\.self_attn\\.v_proj$"));
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let err = CausalLM::from_dir(out.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.layers.1.self_attn.{q_proj,k_proj,v_proj}"), "{err}");
    assert!(err.contains("model.layers.1.self_attn.v_proj: not quantized"), "{err}");

    // An already quantized checkpoint is not quantized again; a GGUF file is not a directory.
    let again = tempfile::tempdir().unwrap();
    let err = write_w8a8(out.path(), again.path(), &[], false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already quantized"), "{err}");
    let gguf = input.path().join("model.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    let err = write_w8a8(&gguf, again.path(), &[], false).unwrap_err().to_string();
    assert!(err.contains("HF model directory"), "{err}");
}

/// A static W8A8 checkpoint (per-tensor weight scales, static per-tensor input scales) as
/// llm-compressor's `W8A8` static preset writes it loads and runs close to the float model.
#[test]
fn static_per_tensor_checkpoint_loads() {
    let input = fixture_copy("llama");
    let src = SafetensorsModel::open(input.path()).unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let base = load(input.path(), None, None);
    for name in src.names() {
        let t = src.get(name).unwrap();
        let linear = name.starts_with("model.layers.") && name.ends_with("_proj.weight");
        if !linear {
            tensors.insert(name.to_string(), t);
            continue;
        }
        let v = t.to_f32_vec().unwrap();
        let s = v.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        let q: Vec<i8> = v.iter().map(|x| (x / s).round().clamp(-127.0, 127.0) as i8).collect();
        let module = name.strip_suffix(".weight").unwrap();
        tensors.insert(name.to_string(), Tensor::from_vec(q, t.shape()).unwrap());
        tensors.insert(format!("{module}.weight_scale"), tensor(vec![s], &[1]));
        // Inputs to these layers stay within ±8 on this fixture (RMS-normed activations).
        tensors.insert(format!("{module}.input_scale"), tensor(vec![8.0 / 127.0], &[1]));
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(input.path().join("config.json")).unwrap()).unwrap();
    let args = |s: &str| json!({"num_bits": 8, "type": "int", "symmetric": true, "strategy": s, "dynamic": false});
    cfg["quantization_config"] = json!({"quant_method": "compressed-tensors", "format": "int-quantized",
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": args("tensor"), "input_activations": args("tensor")}},
        "ignore": ["lm_head"]});
    let config = mllm_engine::loader::config::ModelConfig::from_value(cfg, Path::new("config.json")).unwrap();
    let m = CausalLM::load(config, &tensors, &LoadOptions::default()).unwrap();
    let ids = prompt(16, 3, 256);
    let (a, b) = (logits_all(&base, &ids), logits_all(&m, &ids));
    let mean_kl: f64 = a.iter().zip(&b).map(|(p, q)| kl(p, q)).sum::<f64>() / a.len() as f64;
    eprintln!("static per-tensor W8A8 vs f32: mean KL {mean_kl:.2e}");
    // Coarser than per-channel / per-token (one scale per tensor), still far below a broken
    // layer's KL (> 0.05).
    assert!(mean_kl < 5e-3, "{mean_kl}");
}

#[test]
fn mllm_quantize_cli_writes_a_loadable_checkpoint() {
    let input = fixture_copy("qwen3");
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
        .args([
            "quantize",
            "--quiet",
            "--scheme",
            "w8a8",
            "--ignore",
            "re:.*\\.layers\\.1\\.mlp\\.down_proj",
        ])
        .arg("--model")
        .arg(input.path())
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let m = load(out.path(), None, None);
    assert_eq!(m.config().quantization_config().unwrap()["format"], "int-quantized");
    let st = SafetensorsModel::open(out.path()).unwrap();
    assert_eq!(st.dtype("model.layers.1.mlp.down_proj.weight").unwrap(), DType::F32);
    assert_eq!(st.dtype("model.layers.0.mlp.down_proj.weight").unwrap(), DType::I8);
    let smoothed = out.path().join("smoothed");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
        .args(["quantize", "--quiet", "--smoothquant-alpha", "0.5"])
        .arg("--model")
        .arg(input.path())
        .arg("--out")
        .arg(&smoothed)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("tensors smoothed"), "{stderr}");
    load(&smoothed, None, None);
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
        .args(["quantize", "--quiet", "--ignore", "re:("])
        .arg("--model")
        .arg(input.path())
        .arg("--out")
        .arg(out.path().join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("invalid layer pattern `re:(`"),
        "{err}"
    );
    // SmoothQuant calibrates text decoders only: a VL checkpoint is refused with what to do.
    let vl = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl_model");
    let vl_run = std::process::Command::new(env!("CARGO_BIN_EXE_mllm"))
        .args(["quantize", "--quiet", "--smoothquant-alpha", "0.5"])
        .arg("--model")
        .arg(&vl)
        .arg("--out")
        .arg(out.path().join("vl"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&vl_run.stderr);
    assert!(
        !vl_run.status.success() && err.contains("without --smoothquant-alpha"),
        "{err}"
    );
}

// ---------------------------------------------------------------- service smoke test

/// Greedy continuation computed directly with the model: prefill, then one token at a time.
fn greedy_direct(m: &CausalLM, prompt: &[u32], n: usize) -> Vec<u32> {
    let c = m.config();
    let mut req = ReqToTokenPool::new(2, prompt.len() + n + 1);
    let mut kv = TokenToKvPool::new(
        prompt.len() + n + 8,
        c.num_hidden_layers,
        c.num_key_value_heads,
        c.head_dim,
        KvDtype::F32,
    );
    let slot = req.alloc(1).unwrap()[0];
    let (mut out, mut next, mut done) = (vec![], prompt.to_vec(), 0);
    for _ in 0..n {
        let seq = SequenceInput {
            req_slot: slot,
            prefix_len: done,
            new_tokens: next.clone(),
        };
        let b = ForwardBatch::build(&[seq], &mut req, &mut kv, LogitsMode::LastPerSequence).unwrap();
        let l = m
            .forward(&b.input_ids, &b.positions, &b, &mut kv)
            .unwrap()
            .to_f32_vec()
            .unwrap();
        done += next.len();
        let t = argmax(&l) as u32;
        out.push(t);
        next = vec![t];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_w8a8_model_greedy_matches_engine() {
    use mllm_engine::orchestrator::{Engine, EngineConfig};
    use mllm_engine::server::{router, serve, AppState};

    let input = fixture_copy("qwen3");
    let out = tempfile::tempdir().unwrap();
    write_w8a8(input.path(), out.path(), &[], false).unwrap();
    let prompt_ids = prompt(11, 4, 256);
    let want = greedy_direct(&load(out.path(), None, None), &prompt_ids, 12);

    let loaded = LoadedModel::load(&ModelSource::Dir(out.path().into()), &LoadOptions::default()).unwrap();
    let cfg = EngineConfig {
        max_running_requests: 4,
        max_total_tokens: 1024,
        max_prefill_tokens: 256,
        context_length: None,
        max_queued_requests: 8,
        disable_radix_cache: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(loaded, cfg).unwrap();
    let state = AppState::new(engine.clone(), Some("w8a8".into()), "w8a8".into(), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router(state, 64 << 10), engine.clone(), async {
        let _ = rx.await;
    }));
    let body = json!({"input_ids": prompt_ids, "sampling_params": {"max_new_tokens": 12, "temperature": 0, "ignore_eos": true}})
        .to_string();
    let raw = tokio::task::spawn_blocking(move || common::raw_request(addr, "POST", "/generate", &body, &[]))
        .await
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let json_start = raw.find('{').unwrap();
    let json_end = raw.rfind('}').unwrap();
    let v: Value = serde_json::from_str(&raw[json_start..=json_end]).unwrap();
    let got: Vec<u32> = v["output_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------- SmolLM2 perplexity

fn perplexity(m: &CausalLM, ids: &[u32]) -> f64 {
    let logits = logits_all(m, ids);
    let nll: f64 = logits
        .iter()
        .zip(&ids[1..])
        .map(|(row, &next)| -log_softmax(row)[next as usize])
        .sum();
    (nll / (ids.len() - 1) as f64).exp()
}

/// SmolLM2-135M's GGUF (Q4_1) dequantized once to f32 tensors under HF names, with its config
/// and the token ids of the committed paragraph and of the built-in calibration text.
struct SmolLm2 {
    config: ModelConfig,
    weights: HashMap<String, Tensor>,
    eval_ids: Vec<u32>,
    calibration_ids: Vec<u32>,
}

fn smollm2(test: &str) -> Option<SmolLm2> {
    use mllm_engine::loader::gguf::GgufFile;
    use mllm_engine::models::gguf::GgufWeights;
    use mllm_engine::tokenizer::Tokenizer;
    let path = common::default_model_gguf(test)?;
    let file = GgufFile::open(&path).unwrap();
    let config = ModelConfig::from_gguf(&file).unwrap();
    let arch = mllm_engine::models::arch::lookup(file.architecture().unwrap()).unwrap();
    let src = GgufWeights::new(&file, &arch, config.num_attention_heads, config.num_key_value_heads);
    let weights = src
        .names()
        .into_iter()
        .filter_map(|n| src.get(&n).unwrap().map(|t| (n, t)))
        .collect();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/prose.txt")).unwrap();
    Some(SmolLm2 {
        eval_ids: tok.encode(&text, false).unwrap(),
        calibration_ids: tok.encode(CALIBRATION_TEXT, false).unwrap(),
        config,
        weights,
    })
}

impl SmolLm2 {
    fn perplexity(&self, src: &dyn WeightSource, quantization: Option<QuantMethod>) -> f64 {
        let opts = LoadOptions {
            weight_dtype: Some(DType::F32),
            quantization,
            ..Default::default()
        };
        perplexity(
            &CausalLM::load(self.config.clone(), src, &opts).unwrap(),
            &self.eval_ids,
        )
    }

    /// W8A8 perplexity after SmoothQuant with strength `alpha`.
    fn smoothed_perplexity(&self, alpha: f32) -> f64 {
        let smoothed = smooth(&self.config, &self.weights, &self.calibration_ids, alpha).unwrap();
        self.perplexity(&smoothed, Some(QuantMethod::W8A8))
    }
}

/// SmolLM2-135M (GGUF Q4_1 dequantized to f32, then W8A8-quantized on the CPU): perplexity on
/// the committed paragraph (387 tokens) close to the unquantized model's.
///
/// Measured (x86-64): 14.116 unquantized; plain W8A8 14.708 (+4.2%; 14.821 in earlier builds):
/// int8 weights alone cost about +1%, per-token int8 activations the rest, spread over all
/// layers. The bound for the plain path is 6%, which a broken scale or layout (perplexity in the
/// hundreds) cannot meet; it moves by a point with f32 summation order (16 partial sums in the
/// RMSNorm gave +6.3%), so kernels here keep each row's serial order.
/// With SmoothQuant at the default α = 0.5 (calibrated on the built-in text, not this
/// paragraph) W8A8 measures 14.262 (+1.0%), within the 3%: smoothing folds the per-channel
/// activation outliers into the weights (exactly, in float), so per-token scales waste fewer
/// int8 steps on them.
/// `smollm2_smoothquant_alpha_sweep` (ignored) prints the α sweep.
#[test]
fn smollm2_w8a8_perplexity_close_to_unquantized() {
    let Some(m) = smollm2("smollm2_w8a8_perplexity_close_to_unquantized") else {
        return;
    };
    let t = std::time::Instant::now();
    let base = m.perplexity(&m.weights, None);
    let plain = m.perplexity(&m.weights, Some(QuantMethod::W8A8));
    let smoothed = m.smoothed_perplexity(DEFAULT_ALPHA);
    let rel = |p: f64| (p - base) / base;
    eprintln!(
        "SmolLM2-135M perplexity on {} tokens: {base:.3} unquantized, {plain:.3} W8A8 ({:+.2}%), {smoothed:.3} W8A8 + SmoothQuant α={DEFAULT_ALPHA} ({:+.2}%) ({:.1} s)",
        m.eval_ids.len(),
        100.0 * rel(plain),
        100.0 * rel(smoothed),
        t.elapsed().as_secs_f64()
    );
    assert!(rel(plain).abs() < 0.06, "W8A8 perplexity {plain} vs {base}");
    assert!(
        rel(smoothed).abs() < 0.03,
        "W8A8 + SmoothQuant perplexity {smoothed} vs {base}"
    );
}

/// The α sweep behind [`DEFAULT_ALPHA`]: `cargo nextest run -p mllm-engine --test quantization
/// --run-ignored only smollm2_smoothquant_alpha_sweep --no-capture`.
#[test]
#[ignore = "slow: six calibrations and quantized passes of SmolLM2"]
fn smollm2_smoothquant_alpha_sweep() {
    let Some(m) = smollm2("smollm2_smoothquant_alpha_sweep") else {
        return;
    };
    let base = m.perplexity(&m.weights, None);
    for alpha in [0.3, 0.4, 0.5, 0.6, 0.7, 0.8] {
        let p = m.smoothed_perplexity(alpha);
        eprintln!(
            "alpha {alpha}: W8A8 + SmoothQuant perplexity {p:.3} vs {base:.3} ({:+.2}%)",
            100.0 * (p - base) / base
        );
    }
}

// ---------------------------------------------------------------- SmoothQuant on fixtures

/// Smoothing only moves scale between a producer and its consumers: the float model computes
/// the same logits (within f32 rounding) on all three fixtures (GQA, q/k/v bias, q/k norm).
#[test]
fn smoothing_is_exact_in_float() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let st = SafetensorsModel::open(&dir).unwrap();
        let config = ModelConfig::from_dir(&dir).unwrap();
        let calib = prompt(40, 7, config.vocab_size as u32);
        let smoothed = smooth(&config, &st, &calib, DEFAULT_ALPHA).unwrap();
        for name in [
            "model.layers.0.input_layernorm.weight",
            "model.layers.1.post_attention_layernorm.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.1.mlp.down_proj.weight",
        ] {
            let (a, b) = (
                st.get(name).unwrap().to_f32_vec().unwrap(),
                smoothed.get(name).unwrap().unwrap(),
            );
            assert_ne!(a, b.to_f32_vec().unwrap(), "{arch}: {name} was not smoothed");
        }
        let opts = LoadOptions::default();
        let base = CausalLM::load(config.clone(), &st, &opts).unwrap();
        let sm = CausalLM::load(config.clone(), &smoothed, &opts).unwrap();
        let ids = prompt(24, 2, config.vocab_size as u32);
        let (a, b) = (logits_all(&base, &ids), logits_all(&sm, &ids));
        let max = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        eprintln!("{arch}: smoothed vs original float logits: max |diff| {max:.2e}");
        assert!(max <= 1e-5, "{arch}: {max}");
    }
}

/// A smoothed checkpoint is a standard compressed-tensors W8A8 one: it loads with no knowledge
/// of SmoothQuant and computes exactly what smoothing then quantizing at load does.
#[test]
fn smoothed_checkpoint_round_trips() {
    for arch in ARCHS {
        let input = fixture_copy(arch);
        let config = ModelConfig::from_dir(input.path()).unwrap();
        let smoothing = Smoothing {
            alpha: 0.6,
            calibration_ids: prompt(40, 9, config.vocab_size as u32),
        };
        let out = tempfile::tempdir().unwrap();
        let summary = write_w8a8_with(input.path(), out.path(), &[], false, Some(&smoothing)).unwrap();
        assert_eq!(summary.quantized, 2 * 7, "{arch}");
        // Per layer: 2 norms, q/k/v/gate/up/o/down weights, v bias if any.
        assert!(summary.smoothed >= 2 * 9, "{arch}: {}", summary.smoothed);
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["quantization_config"]["format"], "int-quantized");
        let (src, st) = (
            SafetensorsModel::open(input.path()).unwrap(),
            SafetensorsModel::open(out.path()).unwrap(),
        );
        let norm = "model.layers.0.input_layernorm.weight";
        assert_eq!(st.dtype(norm).unwrap(), src.dtype(norm).unwrap());
        assert_ne!(st.get(norm).unwrap().as_bytes(), src.get(norm).unwrap().as_bytes());

        let from_ckpt = load(out.path(), None, None);
        let smoothed = smooth(&config, &src, &smoothing.calibration_ids, smoothing.alpha).unwrap();
        let opts = LoadOptions {
            weight_dtype: None,
            quantization: Some(QuantMethod::W8A8),
            ..Default::default()
        };
        let at_load = CausalLM::load(config, &smoothed, &opts).unwrap();
        let ids = prompt(20, 1, from_ckpt.config().vocab_size as u32);
        assert_eq!(logits_all(&from_ckpt, &ids), logits_all(&at_load, &ids), "{arch}");
        // `--quantization w8a8 --smoothquant-alpha` at load time: the same model again.
        let opts = LoadOptions {
            smoothing: Some(smoothing.clone()),
            ..opts
        };
        let via_options = CausalLM::from_dir(input.path(), &opts).unwrap();
        assert_eq!(logits_all(&from_ckpt, &ids), logits_all(&via_options, &ids), "{arch}");
    }
    let input = fixture_copy("llama");
    let config = ModelConfig::from_dir(input.path()).unwrap();
    let st = SafetensorsModel::open(input.path()).unwrap();
    let err = smooth(&config, &st, &[1, 2], 1.5).unwrap_err().to_string();
    assert!(err.contains("alpha must be in [0, 1]"), "{err}");
}

/// Load-time SmoothQuant is refused, with the fix in the message, where it cannot apply:
/// without `--quantization w8a8`, on an already quantized checkpoint, and without calibration
/// tokens (dummy weights have no tokenizer).
#[test]
fn load_time_smoothing_errors_say_what_to_change() {
    let input = fixture_copy("qwen3");
    let smoothing = Some(Smoothing {
        alpha: 0.5,
        calibration_ids: vec![1, 2, 3],
    });
    let err = |r: Result<CausalLM, mllm_engine::models::ModelError>| r.unwrap_err().to_string();
    let no_quant = LoadOptions {
        smoothing: smoothing.clone(),
        ..Default::default()
    };
    let e = err(CausalLM::from_dir(input.path(), &no_quant));
    assert!(e.contains("add --quantization w8a8"), "{e}");

    let out = tempfile::tempdir().unwrap();
    write_w8a8_with(input.path(), out.path(), &[], false, None).unwrap();
    let w8a8 = LoadOptions {
        quantization: Some(QuantMethod::W8A8),
        ..no_quant
    };
    let e = err(CausalLM::from_dir(out.path(), &w8a8));
    assert!(e.contains("already quantized"), "{e}");

    let dummy = ModelSource::Dummy {
        config: fixture("qwen3").join("config.json"),
        dtype: DType::BF16,
        seed: 3,
    };
    let no_ids = LoadOptions {
        smoothing: Some(Smoothing {
            alpha: 0.5,
            calibration_ids: vec![],
        }),
        ..w8a8
    };
    let e = LoadedModel::load(&dummy, &no_ids).unwrap_err().to_string();
    assert!(e.contains("no tokenizer"), "{e}");
}

// ---------------------------------------------------------------- dummy weights

/// `--load-format dummy --quantization w8a8` (how the GPU benchmarks measure W8A8) quantizes
/// the random weights: every linear layer holds int8 weights afterwards, the embedding stays
/// float, and the model info says so.
#[test]
fn dummy_weights_honour_quantization() {
    let source = ModelSource::Dummy {
        config: fixture("qwen3").join("config.json"),
        dtype: DType::BF16,
        seed: 3,
    };
    let opts = LoadOptions {
        weight_dtype: None,
        quantization: Some(QuantMethod::W8A8),
        ..Default::default()
    };
    let loaded = LoadedModel::load(&source, &opts).unwrap();
    assert_eq!(loaded.info().quant, "w8a8");
    let model = loaded.model().unwrap();
    for (i, layer) in model.layers().iter().enumerate() {
        let p = layer.params();
        for (name, linear) in [
            ("qkv", p.qkv_proj),
            ("o", p.o_proj),
            ("gate_up", p.gate_up_proj),
            ("down", p.down_proj),
        ] {
            let w = linear.weights().get("weight").unwrap();
            assert_eq!(w.dtype(), DType::I8, "layer {i} {name}");
        }
    }
    assert!(model.embed_tokens().weight().dtype().is_float());
    let plain = LoadedModel::load(&source, &LoadOptions::default()).unwrap();
    assert_eq!(plain.info().quant, "bf16");
}
