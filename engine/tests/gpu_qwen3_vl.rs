//! Qwen3-VL on CUDA (`ModelRunner` on `Device::Cuda`: the vision tower on the GPU, image rows
//! spliced on the GPU, per-token M-RoPE rows, deepstack adds, decode on CUDA graphs) against transformers in bf16 and against the CPU engine, on a tiny random model
//! with text heads of dim 64 that `scripts/fixtures/qwen3_vl_model.py --gpu` writes on the GPU
//! machine (scripts/gpu-test.sh sets MLLM_GPU_VL_DIR). Prompts: (a) text only, (b) one 32x48
//! image, (c) a 64x32 and a 32x48 image. Skipped, with the reason printed, without a GPU or the
//! fixture.
//!
//! Tolerances are gpu_engine's (3% max, 1% mean of the logit range; see there): both sides run
//! the decoder and the vision tower in bf16 with different accumulation orders (the CPU engine
//! runs in f32). Greedy continuations must equal HF's
//! except at a bf16 near-tie (HF's top-2 gap below the max bound), and decode on CUDA graphs
//! must equal eager decode token for token.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mllm_engine::executor::cuda::CudaVisionTower;
use mllm_engine::executor::device::Device;
use mllm_engine::executor::forward_batch::{LogitsMode, SequenceInput};
use mllm_engine::executor::model_runner::{ModelRunner, RunnerConfig};
use mllm_engine::executor::sampler::{SamplingParams, SequenceState};
use mllm_engine::loader::safetensors::SafetensorsModel;
use mllm_engine::mem_cache::KvDtype;
use mllm_engine::models::qwen3_vl::Qwen3VlModel;
use mllm_engine::multimodal::{ImagePatches, MultimodalInputs, VisionTokenIds};
use mllm_engine::tensor::DType;

mod common;

use common::logits::{self, range, Worst};
use common::vl::{hf_images, ints, multimodal_inputs};

const MAX_FRAC: f32 = 0.03;
const MEAN_FRAC: f32 = 0.01;
const TOKENS: VisionTokenIds = VisionTokenIds {
    image_pad: 250,
    vision_start: 248,
    vision_end: 249,
};

/// The fixture directory, or why the test is skipped.
fn fixture() -> Result<PathBuf, String> {
    if let Err(e) = mllm_kernel::device::cuda_device_count() {
        return Err(format!("no CUDA device ({e})"));
    }
    let dir = std::env::var_os("MLLM_GPU_VL_DIR")
        .map(PathBuf::from)
        .ok_or("MLLM_GPU_VL_DIR is not set (scripts/gpu-test.sh run generates the fixture)")?;
    if !dir.join("reference.safetensors").is_file() {
        return Err(format!("no reference.safetensors in {}", dir.display()));
    }
    Ok(dir)
}

struct Prompt {
    name: &'static str,
    ids: Vec<u32>,
    mm: Option<Arc<MultimodalInputs>>,
    hf_logits: Vec<Vec<f32>>,
    hf_greedy: Vec<u32>,
    hf_gaps: Vec<f32>,
}

fn prompts(dir: &Path) -> Vec<Prompt> {
    let r = SafetensorsModel::open(dir.join("reference.safetensors")).unwrap();
    ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let ids: Vec<u32> = ints(&r, &format!("{name}.input_ids"))
                .iter()
                .map(|&x| x as u32)
                .collect();
            let mm = (name != "a").then(|| Arc::new(multimodal_inputs(&ids, hf_images(&r, name), TOKENS)));
            let logits = r.get(&format!("{name}.logits")).unwrap();
            let vocab = logits.shape()[1];
            let hf_logits = logits
                .to_f32_vec()
                .unwrap()
                .chunks(vocab)
                .map(<[f32]>::to_vec)
                .collect();
            Prompt {
                name,
                hf_greedy: ints(&r, &format!("{name}.generated"))
                    .iter()
                    .map(|&x| x as u32)
                    .collect(),
                hf_gaps: r.get(&format!("{name}.gaps")).unwrap().to_f32_vec().unwrap(),
                ids,
                mm,
                hf_logits,
            }
        })
        .collect()
}

fn runner(dir: &Path, device: Device, graphs: usize) -> ModelRunner {
    let model = Qwen3VlModel::from_dir(dir, &Default::default()).unwrap();
    let cfg = RunnerConfig {
        kv_budget_bytes: 64 << 20,
        kv_dtype: KvDtype::F32,
        device,
        gpu_mem_fraction: None,
        cuda_graph_max_bs: graphs,
        max_running_requests: 8,
        max_context_len: 512,
    };
    ModelRunner::new(model, cfg).unwrap()
}

/// Admits every prompt (attaching its images); returns the request slots.
fn admit(r: &mut ModelRunner, prompts: &[Prompt]) -> Vec<usize> {
    let slots = r.req_pool_mut().alloc(prompts.len()).unwrap();
    for (&slot, p) in slots.iter().zip(prompts) {
        r.check_images(&p.ids, p.mm.as_deref()).unwrap();
        if let Some(mm) = &p.mm {
            r.attach_images(slot, &p.ids, mm.clone()).unwrap();
        }
    }
    slots
}

/// One step over `range` of each `(slot, prompt, range)`; the batch's logit rows.
fn extend(r: &mut ModelRunner, seqs: &[(usize, &Prompt, Range<usize>)]) -> Vec<Vec<f32>> {
    let mut inputs = Vec::new();
    for (slot, p, range) in seqs {
        r.encode_images(*slot, range.clone()).unwrap();
        inputs.push(SequenceInput {
            req_slot: *slot,
            prefix_len: range.start,
            new_tokens: p.ids[range.clone()].to_vec(),
        });
    }
    let b = r.prepare(&inputs, LogitsMode::All).unwrap();
    let vocab = r.config().vocab_size;
    let flat = r.forward(&b).unwrap().to_f32_vec().unwrap();
    flat.chunks(vocab).map(<[f32]>::to_vec).collect()
}

/// Logits of every position of every prompt, all prompts in one batch; with `split`, each
/// prompt is prefilled in two steps (its first `split` tokens, then the rest on the cached
/// prefix), cutting through its images.
fn all_logits(r: &mut ModelRunner, prompts: &[Prompt], split: Option<usize>) -> Vec<Vec<Vec<f32>>> {
    let slots = admit(r, prompts);
    let cuts: Vec<usize> = prompts
        .iter()
        .map(|p| split.map_or(p.ids.len(), |s| s.min(p.ids.len())))
        .collect();
    let first: Vec<_> = (0..prompts.len())
        .map(|i| (slots[i], &prompts[i], 0..cuts[i]))
        .collect();
    let mut rows = extend(r, &first).into_iter();
    let mut out: Vec<Vec<Vec<f32>>> = cuts.iter().map(|&c| rows.by_ref().take(c).collect()).collect();
    let rest: Vec<_> = (0..prompts.len())
        .filter(|&i| cuts[i] < prompts[i].ids.len())
        .map(|i| (slots[i], &prompts[i], cuts[i]..prompts[i].ids.len()))
        .collect();
    if !rest.is_empty() {
        let mut rows = extend(r, &rest).into_iter();
        for (slot, p, range) in &rest {
            let i = slots.iter().position(|s| s == slot).unwrap();
            out[i].extend(rows.by_ref().take(range.len()));
            assert_eq!(out[i].len(), p.ids.len());
        }
    }
    for (&slot, p) in slots.iter().zip(prompts) {
        r.release(slot, p.ids.len()).unwrap();
    }
    out
}

/// Greedy continuations of all prompts: prefill in one batch, then `n - 1` decode batches.
fn greedy(r: &mut ModelRunner, prompts: &[Prompt], n: usize) -> Vec<Vec<u32>> {
    let slots = admit(r, prompts);
    let mut states: Vec<SequenceState> = prompts
        .iter()
        .map(|p| SequenceState::new(SamplingParams::greedy(), &p.ids).unwrap())
        .collect();
    let mut next: Vec<SequenceInput> = slots
        .iter()
        .zip(prompts)
        .map(|(&req_slot, p)| SequenceInput {
            req_slot,
            prefix_len: 0,
            new_tokens: p.ids.clone(),
        })
        .collect();
    for (s, p) in next.iter().zip(prompts) {
        r.encode_images(s.req_slot, 0..p.ids.len()).unwrap();
    }
    for _ in 0..n {
        let b = r.prepare(&next, LogitsMode::LastPerSequence).unwrap();
        let out = r.step(&b, &mut states).unwrap();
        for (s, o) in next.iter_mut().zip(out) {
            s.prefix_len += s.new_tokens.len();
            s.new_tokens = vec![o.token];
        }
    }
    for (&slot, s) in slots.iter().zip(&next) {
        r.release(slot, s.prefix_len).unwrap();
    }
    states.iter().map(|s| s.output_tokens().to_vec()).collect()
}

/// [`common::logits::check_greedy`] against this prompt's HF tokens and gaps.
fn check_greedy(got: &[u32], p: &Prompt) -> Result<(), String> {
    let r = range(p.hf_logits.last().unwrap());
    logits::check_greedy(
        &format!("prompt {}", p.name),
        got,
        &p.hf_greedy,
        &p.hf_gaps,
        r,
        MAX_FRAC,
    )
}

fn compare(what: &str, got: &[Vec<Vec<f32>>], want: &[Vec<Vec<f32>>], failures: &mut Vec<String>) {
    let mut worst = Worst::default();
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: prompt {c} rows");
        for (p, (gr, wr)) in g.iter().zip(w).enumerate() {
            worst.add(|| format!("prompt {c} position {p}"), gr, wr);
        }
    }
    worst.report(what);
    if !worst.within(MAX_FRAC, MEAN_FRAC) {
        failures.push(format!("{what}: out of bounds"));
    }
}

/// The GPU vision tower (bf16) against the CPU one (f32) on the three images of prompts (b)
/// and (c) in one batch: merged embeddings and every deepstack level, as fractions of each
/// output's range (bf16 rounding through two blocks and the mergers; same bounds as logits).
#[test]
fn vision_tower_on_cuda_matches_cpu() {
    let dir = match fixture() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipping vision_tower_on_cuda_matches_cpu: {why}");
            return;
        }
    };
    let model = Qwen3VlModel::from_dir(&dir, &Default::default()).unwrap();
    let gpu = Arc::new(mllm_kernel::Gpu::new(0).unwrap());
    let tower = CudaVisionTower::upload(gpu, model.shared_vision(), DType::BF16).unwrap();
    let prompts = prompts(&dir);
    let images: Vec<&ImagePatches> = prompts
        .iter()
        .filter_map(|p| p.mm.as_ref())
        .flat_map(|mm| mm.images.iter().map(|i| &i.patches))
        .collect();
    assert_eq!(images.len(), 3);
    let want = model.vision().forward_each(&images).unwrap();
    let got = tower.forward_each(&images).unwrap();
    let mut worst = Worst::default();
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        let pairs = std::iter::once((&g.embeddings, &w.embeddings)).chain(g.deepstack.iter().zip(&w.deepstack));
        for (level, (gt, wt)) in pairs.enumerate() {
            assert_eq!(gt.shape(), wt.shape(), "image {k} level {level}");
            let (gv, wv) = (gt.to_f32_vec().unwrap(), wt.to_f32_vec().unwrap());
            worst.add(|| format!("image {k} output {level}"), &gv, &wv);
        }
    }
    worst.report("GPU vision tower (bf16) vs CPU (f32)");
    assert!(worst.within(MAX_FRAC, MEAN_FRAC));
}

#[test]
fn qwen3_vl_on_cuda_matches_hf_and_cpu() {
    let dir = match fixture() {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipping gpu_qwen3_vl: {why}");
            return;
        }
    };
    let prompts = prompts(&dir);
    let hf: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| p.hf_logits.clone()).collect();
    let mut failures = Vec::new();
    let mut gpu = runner(&dir, Device::Cuda(0), 0);
    let mut graphed = runner(&dir, Device::Cuda(0), 8);
    let mut cpu = runner(&dir, Device::Cpu, 0);

    // Every position of the three prompts in one batch: the step carries three images of two
    // sizes and a text-only sequence.
    let batched = all_logits(&mut gpu, &prompts, None);
    compare("GPU vs HF bf16 (one batch)", &batched, &hf, &mut failures);
    let on_cpu = all_logits(&mut cpu, &prompts, None);
    compare("GPU vs CPU engine", &batched, &on_cpu, &mut failures);
    // Each prompt alone, and chunked through its images (prefix on the GPU's paged KV).
    for (i, p) in prompts.iter().enumerate() {
        let alone = all_logits(&mut gpu, std::slice::from_ref(p), None);
        compare(
            &format!("prompt {} alone vs in the batch", p.name),
            &alone,
            &batched[i..=i],
            &mut failures,
        );
    }
    for split in [4, 9] {
        let chunked = all_logits(&mut gpu, &prompts, Some(split));
        compare(&format!("GPU chunked at {split} vs HF"), &chunked, &hf, &mut failures);
    }

    // Greedy: eager and on CUDA graphs, all prompts decoding together.
    let n = prompts[0].hf_greedy.len();
    let eager = greedy(&mut gpu, &prompts, n);
    let graph = greedy(&mut graphed, &prompts, n);
    if graph != eager {
        failures.push(format!("CUDA-graph decode differs from eager: {graph:?} vs {eager:?}"));
    }
    for (got, p) in eager.iter().zip(&prompts) {
        eprintln!("prompt {}: GPU greedy {got:?}, HF {:?}", p.name, p.hf_greedy);
        if let Err(e) = check_greedy(got, p) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
