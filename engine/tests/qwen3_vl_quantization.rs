//! W8A8 int8 for Qwen3-VL on the CPU: only the text decoder's linear layers are quantized (at
//! load or by `mllm quantize`), compressed-tensors checkpoints match layers by the names the
//! checkpoint uses (`model.language_model.layers.N.*`), and the quantized model stays close to
//! the float one on text+image prompts. Fixture: `engine/tests/fixtures/qwen3_vl_model` (from
//! `scripts/fixtures/qwen3_vl_model.py`, see `qwen3_vl_model.rs`).

use std::path::{Path, PathBuf};

use mllm_engine::layers::linear::Linear;
use mllm_engine::loader::safetensors::SafetensorsModel;
use mllm_engine::models::qwen3_vl::Qwen3VlModel;
use mllm_engine::models::LoadOptions;
use mllm_engine::multimodal::ImagePatches;
use mllm_engine::quantization::writer::write_w8a8;
use mllm_engine::quantization::QuantMethod;
use mllm_engine::tensor::DType;
use serde_json::{json, Value};

mod common;

use common::logits::{argmax, kl};
use common::vl::{hf_images, ints};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl_model")
}

fn load(dir: &Path, quantization: Option<QuantMethod>) -> Qwen3VlModel {
    let opts = LoadOptions {
        weight_dtype: None,
        quantization,
        ..Default::default()
    };
    Qwen3VlModel::from_dir(dir, &opts).unwrap()
}

/// Prompt `p` of the fixture followed by HF's greedy continuation (more text positions after
/// the images), and the prompt's images.
fn prompt(p: &str) -> (Vec<u32>, Vec<ImagePatches>) {
    let r = SafetensorsModel::open(fixture_dir().join("reference.safetensors")).unwrap();
    let ids = [format!("{p}.input_ids"), format!("{p}.generated")]
        .iter()
        .flat_map(|n| ints(&r, n))
        .map(|x| x as u32)
        .collect();
    let images = hf_images(&r, p);
    (ids, images)
}

fn logits(m: &Qwen3VlModel, p: &str) -> Vec<Vec<f32>> {
    let (ids, images) = prompt(p);
    let l = m.forward(&ids, &images).unwrap().to_f32_vec().unwrap();
    l.chunks(m.vocab_size()).map(<[f32]>::to_vec).collect()
}

fn linears(m: &Qwen3VlModel) -> Vec<(String, &Linear)> {
    m.text_layers()
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            let p = l.params();
            [
                ("qkv_proj", p.qkv_proj),
                ("o_proj", p.o_proj),
                ("gate_up_proj", p.gate_up_proj),
                ("down_proj", p.down_proj),
            ]
            .map(|(n, lin)| (format!("layer {i} {n}"), lin))
        })
        .collect()
}

fn weight_dtype(l: &Linear) -> DType {
    l.weights()["weight"].dtype()
}

fn config(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

/// Named `qwen3_vl` so `cargo nextest run -p mllm-engine qwen3_vl` selects these tests.
mod qwen3_vl {
    use super::*;

    #[test]
    fn at_load_w8a8_quantizes_only_text_linears() {
        let float = load(&fixture_dir(), None);
        let quant = load(&fixture_dir(), Some(QuantMethod::W8A8));
        let all = linears(&quant);
        assert_eq!(all.len(), 3 * 4, "3 decoder layers x 4 (fused) linear layers");
        for (name, l) in &all {
            assert_eq!(weight_dtype(l), DType::I8, "{name}");
            assert_eq!(l.weights()["weight_scale"].dtype(), DType::F32, "{name}");
        }
        for (name, l) in linears(&float) {
            assert_eq!(weight_dtype(l), DType::F32, "float {name}");
        }
        // Embedding, LM head and norms stay float.
        assert_eq!(quant.embed_tokens().weight().dtype(), DType::F32);
        assert_eq!(quant.lm_head().weight().dtype(), DType::F32);
        // The vision tower is untouched: the same rows, bit for bit.
        let (_, images) = prompt("c");
        let (a, b) = (
            float.vision().forward_images(&images).unwrap(),
            quant.vision().forward_images(&images).unwrap(),
        );
        assert_eq!(a.embeddings.to_f32_vec().unwrap(), b.embeddings.to_f32_vec().unwrap());
        for (x, y) in a.deepstack.iter().zip(&b.deepstack) {
            assert_eq!(x.to_f32_vec().unwrap(), y.to_f32_vec().unwrap());
        }
    }

    #[test]
    fn written_checkpoint_keeps_vision_float_and_matches_at_load() {
        let out = tempfile::tempdir().unwrap();
        let summary = write_w8a8(&fixture_dir(), out.path(), &[], false).unwrap();
        assert_eq!(summary.quantized, 3 * 7, "7 text linear layers x 3 decoder layers");
        assert!(
            summary.files.contains(&"tokenizer.json".to_string()),
            "{:?}",
            summary.files
        );
        assert!(summary.files.contains(&"preprocessor_config.json".to_string()));

        let cfg = config(out.path());
        let q = &cfg["quantization_config"];
        assert_eq!(
            (&q["quant_method"], &q["format"]),
            (&json!("compressed-tensors"), &json!("int-quantized"))
        );
        // Float layers in `ignore`: the LM head by name, the whole tower as one pattern.
        assert_eq!(
            q["ignore"],
            json!(["lm_head", "re:.*(vision|visual|image_encoder|mm_projector)"])
        );
        assert_eq!(cfg["text_config"], config(&fixture_dir())["text_config"]);

        let (src, st) = (
            SafetensorsModel::open(fixture_dir()).unwrap(),
            SafetensorsModel::open(out.path()).unwrap(),
        );
        let mut names: Vec<&str> = st
            .names()
            .into_iter()
            .filter(|n| !n.ends_with("weight_scale"))
            .collect();
        let mut want: Vec<&str> = src.names();
        names.sort_unstable();
        want.sort_unstable();
        assert_eq!(names, want, "every tensor kept under its name");
        for name in src.names() {
            let quantized = name.starts_with("model.language_model.layers.") && name.ends_with("_proj.weight");
            if quantized {
                assert_eq!(st.dtype(name).unwrap(), DType::I8, "{name}");
                let rows = st.shape(name).unwrap()[0];
                let scale = name.replace(".weight", ".weight_scale");
                assert_eq!(st.shape(&scale).unwrap(), &[rows, 1], "{scale}");
            } else {
                // Vision tower, mergers, deepstack mergers, embeddings, norms, LM head.
                assert_eq!(st.dtype(name).unwrap(), src.dtype(name).unwrap(), "{name}");
                assert_eq!(
                    st.get(name).unwrap().as_bytes(),
                    src.get(name).unwrap().as_bytes(),
                    "{name}"
                );
            }
        }

        // Loads as compressed-tensors (the config's quantization_config is at the top level)
        // and computes exactly what quantizing the float checkpoint at load does.
        let from_ckpt = load(out.path(), None);
        assert!(linears(&from_ckpt).iter().all(|(_, l)| weight_dtype(l) == DType::I8));
        let at_load = load(&fixture_dir(), Some(QuantMethod::W8A8));
        for p in ["b", "c"] {
            assert_eq!(logits(&from_ckpt, p), logits(&at_load, p), "prompt {p}");
        }
    }

    #[test]
    fn ignore_entries_match_the_checkpoint_names() {
        let out = tempfile::tempdir().unwrap();
        let ignore = [
            "model.language_model.layers.0.mlp.down_proj",
            "re:model\\.language_model\\.layers\\.1\\.self_attn\\.",
        ]
        .map(String::from);
        let summary = write_w8a8(&fixture_dir(), out.path(), &ignore, false).unwrap();
        assert_eq!(summary.quantized, 3 * 7 - 1 - 4);
        // The loader reads these entries against `model.language_model.*`: the listed layers
        // load float (their checkpoint weights are float), the rest int8.
        let m = load(out.path(), None);
        for (name, l) in linears(&m) {
            let float = name == "layer 0 down_proj" || name == "layer 1 qkv_proj" || name == "layer 1 o_proj";
            let want = if float { DType::F32 } else { DType::I8 };
            assert_eq!(weight_dtype(l), want, "{name}");
        }
        // Vision patterns as llm-compressor recipes write them leave the decoder alone.
        let path = out.path().join("config.json");
        let mut cfg = config(out.path());
        let entries = cfg["quantization_config"]["ignore"].as_array_mut().unwrap();
        entries.extend([json!("re:model.visual.*"), json!("re:.*visual.*")]);
        std::fs::write(&path, cfg.to_string()).unwrap();
        let again = load(out.path(), None);
        for p in ["b", "c"] {
            assert_eq!(logits(&again, p), logits(&m, p), "prompt {p}");
        }
        // A fused layer split by `ignore` is an error naming the checkpoint's layers.
        let entries = cfg["quantization_config"]["ignore"].as_array_mut().unwrap();
        entries.push(json!("model.language_model.layers.2.self_attn.k_proj"));
        std::fs::write(&path, cfg.to_string()).unwrap();
        let err = Qwen3VlModel::from_dir(out.path(), &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.language_model.layers.2.self_attn.{q_proj,k_proj,v_proj}"),
            "{err}"
        );
        assert!(
            err.contains("model.language_model.layers.2.self_attn.k_proj: not quantized"),
            "{err}"
        );
    }

    /// W8A8 vs the float (f32) model on the two image prompts followed by HF's greedy
    /// continuations: 35 + 46 positions (text, image and generated tokens).
    ///
    /// Bounds, reasoned as for the text fixtures (`quantization.rs`): int8 rounding of each
    /// operand is at most 0.5/127 of its row's absmax, so logits move by ~1% of their range and
    /// KL ≈ ½·Var(Δlogit). This fixture's logits span ±5.8 (3x the text fixtures' ±1.5 range),
    /// so Δlogit is 3x larger (measured sd 0.02-0.10 per position, 0.045 typical) and KL ~9x:
    /// measured mean 1.0e-3, max 3.8e-3. The 4e-3 bound on the mean leaves 4x room (summation
    /// order, other CPUs) and stays an order below what a wrong scale gives (KL > 0.05 on the
    /// text fixtures). A top-1 flip needs the best two float logits within ~2 sd(Δlogit) ≈ 0.09:
    /// 17 of the 81 positions are that close here (256 classes, random init) and 4 of them flip
    /// (95.1% agreement), hence ≥ 90%.
    #[test]
    fn w8a8_logits_close_to_float_with_images() {
        let base = load(&fixture_dir(), None);
        let quant = load(&fixture_dir(), Some(QuantMethod::W8A8));
        let (mut kl_sum, mut kl_max, mut agree, mut n) = (0.0, 0f64, 0, 0);
        for p in ["b", "c"] {
            for (a, b) in logits(&base, p).iter().zip(&logits(&quant, p)) {
                let d = kl(a, b);
                kl_sum += d;
                kl_max = kl_max.max(d);
                agree += usize::from(argmax(a) == argmax(b));
                n += 1;
            }
        }
        let (mean, top1) = (kl_sum / n as f64, agree as f64 / n as f64);
        eprintln!(
            "Qwen3-VL W8A8 vs f32 over {n} positions: mean KL {mean:.2e}, max KL {kl_max:.2e}, top-1 agreement {:.1}%",
            top1 * 100.0
        );
        assert_eq!(n, 35 + 46);
        assert!(mean < 4e-3, "mean KL {mean}");
        assert!(top1 >= 0.9, "top-1 agreement {top1}");
    }
}
