//! Qwen3-VL through the serving engine on the CPU (`Engine` → scheduler → `ModelRunner` on the
//! shared KV pool), on the tiny fixture `engine/tests/fixtures/qwen3_vl_model` (see
//! `qwen3_vl_model.rs`): greedy continuations equal transformers' for the text, one-image and
//! two-image prompts, batched or alone, chunked or not, with and without prefix-cache hits;
//! different images never share KV; a bad request fails alone; a step's images of several
//! requests are encoded in one vision-tower forward.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mllm_engine::executor::device::Device;
use mllm_engine::executor::sampler::SamplingParams;
use mllm_engine::generation::{LoadedModel, ModelSource};
use mllm_engine::io_struct::{SeqId, TokenizedRequest};
use mllm_engine::loader::safetensors::SafetensorsModel;
use mllm_engine::models::qwen3_vl::{Qwen3VlModel, VisualRows, VlRequests};
use mllm_engine::multimodal::{image_hash, GridThw, MultimodalInputs, VisionTokenIds};
use mllm_engine::orchestrator::{Engine, EngineConfig, TextOptions};

mod common;

use common::vl::{hf_images, ints, multimodal_inputs};

const IMAGE_PAD: u32 = 250;
const TOKENS: VisionTokenIds = VisionTokenIds {
    image_pad: IMAGE_PAD,
    vision_start: 248,
    vision_end: 249,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl_model")
}

fn reference() -> SafetensorsModel {
    SafetensorsModel::open(fixture_dir().join("reference.safetensors")).unwrap()
}

/// Prompt `p`'s ids, images (token ranges: the runs of placeholders) and HF greedy tokens.
fn prompt(r: &SafetensorsModel, p: &str) -> (Vec<u32>, Option<MultimodalInputs>, Vec<u32>) {
    let ids: Vec<u32> = ints(r, &format!("{p}.input_ids")).iter().map(|&x| x as u32).collect();
    let want = ints(r, &format!("{p}.generated")).iter().map(|&x| x as u32).collect();
    if p == "a" {
        return (ids, None, want);
    }
    let mm = multimodal_inputs(&ids, hf_images(r, p), TOKENS);
    (ids, Some(mm), want)
}

fn engine(cfg: EngineConfig) -> Arc<Engine> {
    let loaded = LoadedModel::load(&ModelSource::Dir(fixture_dir()), &Default::default()).unwrap();
    assert!(loaded.is_vision_language());
    let engine = Engine::start(loaded, cfg).unwrap();
    assert!(engine.accepts_images());
    assert_eq!(engine.architectures(), ["Qwen3VLForConditionalGeneration"]);
    assert_eq!((engine.vocab_size(), engine.context_len()), (256, 512));
    engine
}

fn request(rid: &str, ids: &[u32], mm: Option<MultimodalInputs>, max_new_tokens: usize) -> TokenizedRequest {
    TokenizedRequest {
        id: SeqId {
            rid: rid.into(),
            index: 0,
        },
        input_ids: ids.to_vec(),
        params: SamplingParams::greedy(),
        max_new_tokens,
        stop_token_ids: vec![],
        mm: mm.map(Arc::new),
    }
}

/// Submits the requests together and collects each one's tokens (or its error).
async fn run(engine: &Engine, reqs: Vec<TokenizedRequest>) -> Vec<Result<Vec<u32>, String>> {
    let mut streams: Vec<_> = reqs
        .into_iter()
        .map(|r| engine.submit(r, &TextOptions::default()).unwrap())
        .collect();
    let mut out = Vec::new();
    for s in &mut streams {
        let mut tokens = Vec::new();
        let mut result = Ok(());
        while let Some(chunk) = s.next().await {
            match chunk {
                Ok(c) => tokens.extend(c.sample.map(|x| x.token)),
                Err(e) => result = Err(e),
            }
        }
        out.push(result.map(|_| tokens));
    }
    out
}

async fn run_one(engine: &Engine, rid: &str, p: &(Vec<u32>, Option<MultimodalInputs>, Vec<u32>)) -> Vec<u32> {
    let req = request(rid, &p.0, p.1.clone(), p.2.len());
    run(engine, vec![req]).await.remove(0).unwrap()
}

fn no_cache() -> EngineConfig {
    EngineConfig {
        disable_radix_cache: true,
        ..EngineConfig::default()
    }
}

/// Named `qwen3_vl` so `cargo nextest run -p mllm-engine qwen3_vl` selects these tests.
mod qwen3_vl {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn engine_greedy_matches_transformers_alone_and_batched() {
        let r = reference();
        let prompts: Vec<_> = ["a", "b", "c"].iter().map(|p| prompt(&r, p)).collect();
        let e = engine(no_cache());
        for (p, name) in prompts.iter().zip(["a", "b", "c"]) {
            assert_eq!(run_one(&e, name, p).await, p.2, "prompt {name} alone");
        }
        // All three in one mixed batch.
        let reqs = prompts
            .iter()
            .zip(["a", "b", "c"])
            .map(|(p, n)| request(n, &p.0, p.1.clone(), p.2.len()))
            .collect();
        for (got, p) in run(&e, reqs).await.into_iter().zip(&prompts) {
            assert_eq!(got.unwrap(), p.2);
        }
        e.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chunked_prefill_through_images_matches_one_pass() {
        let r = reference();
        // 5-token chunks cut both images of (c) and the image of (b) mid-way.
        for budget in [5, 7] {
            let e = engine(EngineConfig {
                max_prefill_tokens: budget,
                ..no_cache()
            });
            for name in ["b", "c"] {
                let p = prompt(&r, name);
                assert_eq!(run_one(&e, name, &p).await, p.2, "prompt {name}, {budget}-token chunks");
            }
            e.shutdown();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefix_cache_hits_repeat_and_different_images_do_not_share() {
        let r = reference();
        let b = prompt(&r, "b");
        // The same text with another image (pixels negated, so another hash).
        let mut other = b.clone();
        let mm = other.1.as_mut().unwrap();
        let px = &mut mm.images[0].patches.pixel_values;
        px.iter_mut().for_each(|x| *x = -*x);
        let bytes: Vec<u8> = px.iter().flat_map(|x| x.to_le_bytes()).collect();
        mm.images[0].hash = image_hash(&bytes);
        let fresh = engine(no_cache());
        let other_want = run_one(&fresh, "other", &other).await;
        fresh.shutdown();
        assert_ne!(other_want, b.2, "the two images should lead to different continuations");

        let e = engine(EngineConfig::default());
        let cached = || e.metrics().cached_tokens_total.load(Ordering::SeqCst);
        assert_eq!(run_one(&e, "b1", &b).await, b.2);
        assert_eq!(cached(), 0);
        assert_eq!(run_one(&e, "b2", &b).await, b.2, "repeat with a prefix-cache hit");
        let hit = cached();
        assert!(
            hit >= b.0.len() as u64 - 1,
            "the repeat reuses the whole prompt but one: {hit}"
        );
        // Only the text before the image is shared with the other image's request.
        let image_start = b.1.as_ref().unwrap().images[0].token_range.start as u64;
        assert_eq!(run_one(&e, "other", &other).await, other_want);
        assert!(cached() - hit <= image_start, "{} tokens reused", cached() - hit);
        e.shutdown();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_image_requests_fail_alone() {
        let r = reference();
        let (b, c) = (prompt(&r, "b"), prompt(&r, "c"));
        let e = engine(no_cache());
        // Image tokens whose range does not match the grid; placeholders without images.
        let mut bad = b.1.clone().unwrap();
        bad.images[0].patches.grid = GridThw { t: 1, h: 4, w: 8 };
        let no_image = request("no-image", &b.0, None, 4);
        let reqs = vec![
            request("bad", &b.0, Some(bad), 4),
            request("c", &c.0, c.1.clone(), c.2.len()),
            no_image,
        ];
        let out = run(&e, reqs).await;
        let err = out[0].clone().unwrap_err();
        assert!(err.contains("image features and image tokens do not match"), "{err}");
        assert_eq!(out[1].clone().unwrap(), c.2);
        // Placeholders without images are rejected, not run as text.
        let err = out[2].clone().unwrap_err();
        assert!(err.contains("placeholder"), "{err}");
        // The engine still serves.
        assert_eq!(run_one(&e, "b", &b).await, b.2);
        e.shutdown();
    }

    fn assert_rows_eq(got: &VisualRows, want: &VisualRows, what: &str) {
        assert_eq!(got.rows, want.rows, "{what}");
        let pairs =
            std::iter::once((&got.embeddings, &want.embeddings)).chain(got.deepstack.iter().zip(&want.deepstack));
        for (a, b) in pairs {
            let (a, b) = (a.to_f32_vec().unwrap(), b.to_f32_vec().unwrap());
            assert_eq!(a.len(), b.len(), "{what}");
            let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(d <= 1e-6, "{what}: batched rows differ from one request's by {d}");
        }
    }

    #[test]
    fn a_step_encodes_every_queued_image_in_one_tower_forward() {
        let r = reference();
        let m = Qwen3VlModel::from_dir(fixture_dir(), &Default::default()).unwrap();
        let (b, c) = (prompt(&r, "b"), prompt(&r, "c"));
        let mm = |p: &(Vec<u32>, Option<MultimodalInputs>, Vec<u32>)| Arc::new(p.1.clone().unwrap());
        // Requests in slots 3 and 1: (b)'s one image, (c)'s two, three grids of two sizes.
        let mut reqs = VlRequests::default();
        reqs.attach(m.front(), 3, &b.0, mm(&b)).unwrap();
        reqs.attach(m.front(), 1, &c.0, mm(&c)).unwrap();
        reqs.encode(m.front(), 3, 0..b.0.len()).unwrap();
        reqs.encode(m.front(), 1, 0..c.0.len()).unwrap();
        assert_eq!(reqs.tower_forwards(), 0, "encode only queues");
        let got_b = reqs.visual_rows(3, 0..b.0.len()).unwrap().unwrap();
        let got_c = reqs.visual_rows(1, 0..c.0.len()).unwrap().unwrap();
        assert_eq!(reqs.tower_forwards(), 1, "one forward for the step's three images");
        // Each request encoded on its own gets the same rows.
        for (p, got, what) in [(&b, &got_b, "b"), (&c, &got_c, "c")] {
            let mut alone = VlRequests::default();
            alone.attach(m.front(), 0, &p.0, mm(p)).unwrap();
            alone.encode(m.front(), 0, 0..p.0.len()).unwrap();
            let want = alone.visual_rows(0, 0..p.0.len()).unwrap().unwrap();
            assert_rows_eq(got, &want, what);
        }
        // Encoded rows are kept until prefilled; nothing is encoded twice.
        reqs.encode(m.front(), 1, 0..c.0.len()).unwrap();
        reqs.visual_rows(1, 0..c.0.len()).unwrap();
        assert_eq!(reqs.tower_forwards(), 1);

        // An image that does not fit the tower fails its request at `encode` and queues none of
        // its images; the other request's image still runs.
        let mut bad = (*mm(&c)).clone();
        bad.images[1].patches.pixel_values.truncate(100);
        let mut reqs = VlRequests::default();
        reqs.attach(m.front(), 0, &c.0, Arc::new(bad)).unwrap();
        reqs.attach(m.front(), 1, &b.0, mm(&b)).unwrap();
        let err = reqs.encode(m.front(), 0, 0..c.0.len()).unwrap_err().to_string();
        assert!(err.contains("image 1") && err.contains("vision tower"), "{err}");
        reqs.encode(m.front(), 1, 0..b.0.len()).unwrap();
        reqs.detach(0);
        let got = reqs.visual_rows(1, 0..b.0.len()).unwrap().unwrap();
        assert_rows_eq(&got, &got_b, "b next to a failed request");
        assert_eq!(reqs.tower_forwards(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_image_requests_in_one_step_match_transformers() {
        let r = reference();
        let (b, c) = (prompt(&r, "b"), prompt(&r, "c"));
        let e = engine(no_cache());
        // Both prefill in the first step: their three images go through one tower forward.
        let reqs = vec![
            request("c", &c.0, c.1.clone(), c.2.len()),
            request("b", &b.0, b.1.clone(), b.2.len()),
        ];
        let out = run(&e, reqs).await;
        assert_eq!(out[0].clone().unwrap(), c.2, "prompt c");
        assert_eq!(out[1].clone().unwrap(), b.2, "prompt b");
        e.shutdown();
    }

    /// Without a GPU, asking for one is a clear error naming CUDA (the GPU path itself is
    /// tested by `gpu_engine`).
    #[test]
    fn vl_model_on_cuda_without_a_gpu_is_a_clear_error() {
        if mllm_kernel::device::cuda_device_count().is_ok_and(|n| n > 0) {
            eprintln!("skipped: a GPU is present (gpu_engine runs Qwen3-VL on it)");
            return;
        }
        let loaded = LoadedModel::load(&ModelSource::Dir(fixture_dir()), &Default::default()).unwrap();
        let cfg = EngineConfig {
            device: Device::Cuda(0),
            ..EngineConfig::default()
        };
        let err = Engine::start(loaded, cfg).unwrap_err().to_string();
        assert!(err.to_lowercase().contains("cuda"), "{err}");
    }
}
