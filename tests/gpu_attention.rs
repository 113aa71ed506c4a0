//! Paged attention (FlashInfer decode + causal prefill over a page-size-1
//! KV pool, and our split-KV decode kernel in both its merge forms: global
//! memory, and a cluster's shared memory) against the f64-accumulating CPU
//! reference. GPU tests are
//! skipped (with the reason printed) where no CUDA device exists; the
//! validation tests at the end run everywhere.
//!
//! Every case runs for head dims 64 and 128, bf16 and f16, and GQA groups 1
//! and 4 (decode also 8, and 5, which has no decode instantiation and runs
//! on the prefill kernel, or on the split-KV kernel, which takes groups up
//! to 8). Slots are a shuffled, non-contiguous subset of a larger
//! pool, so a kernel that ignores kv_indices reads the wrong rows.
//!
//! Tolerance (p = mantissa bits: bf16 7, f16 10): each output is a convex
//! combination of values |v| <= 1. The kernels round the probabilities to
//! the input dtype before the P·V product (relative error 2^-(p+1) each, so
//! at most 2^-(p+1) of max |v| in the sum) and round the output once more
//! (2^-(p+1)); logits are f32 dot products of exact inputs, and split-KV
//! partial results merge in f32. So |gpu - ref| <= 2^-p; we allow 2^-(p-1)
//! absolute: 1/64 bf16, 1/512 f16. q is drawn from [-3, 3] so the softmax
//! is peaked enough that a wrong mask, slot or head mapping moves outputs
//! by far more than that on the short sequences.

mod common;

use common::{cast, gpu_or_skip, random_f32};
use half::{bf16, f16};
use mllm_kernel::dtype::FloatElem;
use mllm_kernel::ops::{
    self, AttentionHeads, AttentionKernel, AttentionWorkspace, DecodeKernel, Meta, WorkspaceConfig,
};
use mllm_kernel::reference::{self, PagedKv};
use mllm_kernel::{DType, DeviceTensor, Gpu};

fn tol(dtype: DType) -> f32 {
    match dtype {
        DType::BF16 => 1.0 / 64.0,
        _ => 1.0 / 512.0,
    }
}

fn indptr(lens: &[usize]) -> Vec<i32> {
    let mut p = vec![0i32];
    for l in lens {
        p.push(p.last().unwrap() + *l as i32);
    }
    p
}

/// `n` distinct slots out of `0..capacity`, shuffled (Fisher-Yates driven
/// by the deterministic test generator).
fn shuffled_slots(n: usize, capacity: usize, seed: u64) -> Vec<i32> {
    let mut all: Vec<i32> = (0..capacity as i32).collect();
    let draws = random_f32(capacity, seed, 1.0);
    for i in (1..capacity).rev() {
        let j = (((draws[i] + 1.0) / 2.0 * (i + 1) as f32) as usize).min(i);
        all.swap(i, j);
    }
    all.truncate(n);
    all
}

/// One batch: new query rows and context lengths per sequence.
struct Case {
    name: &'static str,
    qo: Vec<usize>,
    kv: Vec<usize>,
}

/// (query heads, kv heads): GQA groups 1 and 4.
const HEAD_CONFIGS: [(usize, usize); 2] = [(8, 8), (16, 4)];

fn run_case<T: FloatElem>(gpu: &Gpu, ws: &mut AttentionWorkspace, case: &Case, heads: AttentionHeads, seed: u64) {
    let (h, hk, d) = (heads.num_heads, heads.num_kv_heads, heads.head_dim);
    let qo_indptr = indptr(&case.qo);
    let kv_indptr = indptr(&case.kv);
    let total_q = *qo_indptr.last().unwrap() as usize;
    let total_kv = *kv_indptr.last().unwrap() as usize;
    // Unused slots around the used ones: reading them would show.
    let capacity = total_kv + total_kv / 2 + 19;
    let slots = shuffled_slots(total_kv, capacity, seed);
    let k: Vec<T> = cast(&random_f32(capacity * hk * d, seed + 1, 1.0));
    let v: Vec<T> = cast(&random_f32(capacity * hk * d, seed + 2, 1.0));
    let q: Vec<T> = cast(&random_f32(total_q * h * d, seed + 3, 3.0));
    let scale = 1.0 / (d as f32).sqrt();
    let kv = PagedKv {
        k_cache: &k,
        v_cache: &v,
        kv_indices: &slots,
        kv_indptr: &kv_indptr,
        num_kv_heads: hk,
        head_dim: d,
    };
    let want = reference::paged_attention(&q, &qo_indptr, h, &kv, scale);

    let plan = ops::plan_attention(gpu, ws, &qo_indptr, &kv_indptr, heads).unwrap();
    let group = h / hk;
    let decode = case.qo.iter().all(|&l| l == 1);
    let expect_kernel = match ws.config().decode_kernel {
        DecodeKernel::SplitKv | DecodeKernel::SplitKvCluster if decode && group <= 8 => AttentionKernel::SplitDecode,
        k if decode && [1, 2, 4, 8].contains(&group) && !k.uses_tensor_cores(group) => AttentionKernel::Decode,
        _ => AttentionKernel::Prefill,
    };
    assert_eq!(plan.kernel(), expect_kernel, "{}", case.name);
    let kd = DeviceTensor::from_host(gpu, &k, &[capacity, hk, d]).unwrap();
    let vd = DeviceTensor::from_host(gpu, &v, &[capacity, hk, d]).unwrap();
    let qd = DeviceTensor::from_host(gpu, &q, &[total_q, h, d]).unwrap();
    let sd = DeviceTensor::from_host(gpu, &slots, &[total_kv]).unwrap();
    // Twice on one plan: the split-KV kernel must leave its arrival counters
    // as the plan set them (a graph replays without re-planning).
    let first = ops::paged_attention(gpu, &plan, ws, &qd, &kd, &vd, &sd, None).unwrap();
    let out = ops::paged_attention(gpu, &plan, ws, &qd, &kd, &vd, &sd, None).unwrap();
    assert_eq!(out.shape(), &[total_q, h, d]);
    let got = out.to_host::<T>(gpu).unwrap();
    let first: Vec<f32> = first.to_host::<T>(gpu).unwrap().iter().map(|x| x.to_f32()).collect();
    assert!(
        first.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_f32().to_bits()),
        "{} {heads:?}: a second run on the same plan differs",
        case.name
    );
    let t = tol(heads.dtype);
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let err = (g.to_f32() - w).abs();
        assert!(!err.is_nan(), "{}: NaN at {i}", case.name);
        if err > worst.0 {
            worst = (err, i);
        }
    }
    let (err, i) = worst;
    let (row, head) = (i / (h * d), i / d % h);
    assert!(
        err <= t,
        "{} {heads:?}: |gpu - ref| = {err} > {t} at query row {row}, head {head} (gpu {}, ref {})",
        case.name,
        got[i].to_f32(),
        want[i]
    );
}

/// Runs `cases` for every head dim, dtype and head config (plus `extra`),
/// on every decode kernel; the split-KV kernels also with CUDA-graph plans
/// (chunk count fixed by the batch size, so short sequences leave chunks
/// empty).
fn sweep(test: &str, cases: &[Case], extra_heads: &[(usize, usize)]) {
    let Some(gpu) = gpu_or_skip(test) else { return };
    for (decode_kernel, cuda_graph) in [
        (DecodeKernel::CudaCores, false),
        (DecodeKernel::TensorCores, false),
        (DecodeKernel::SplitKv, false),
        (DecodeKernel::SplitKv, true),
        (DecodeKernel::SplitKvCluster, false),
        (DecodeKernel::SplitKvCluster, true),
    ] {
        let config = WorkspaceConfig {
            decode_kernel,
            cuda_graph,
            ..WorkspaceConfig::default()
        };
        let mut ws = AttentionWorkspace::new(&gpu, config).unwrap();
        sweep_heads(&gpu, &mut ws, cases, extra_heads);
    }
}

fn sweep_heads(gpu: &Gpu, ws: &mut AttentionWorkspace, cases: &[Case], extra_heads: &[(usize, usize)]) {
    let mut seed = 1000;
    for d in ops::ATTENTION_HEAD_DIMS {
        for dtype in [DType::BF16, DType::F16] {
            for &(h, hk) in HEAD_CONFIGS.iter().chain(extra_heads) {
                let heads = AttentionHeads {
                    num_heads: h,
                    num_kv_heads: hk,
                    head_dim: d,
                    dtype,
                };
                for case in cases {
                    seed += 10;
                    match dtype {
                        DType::BF16 => run_case::<bf16>(gpu, ws, case, heads, seed),
                        _ => run_case::<f16>(gpu, ws, case, heads, seed),
                    }
                }
            }
        }
    }
}

fn lens(n: usize, seed: u64, max: usize) -> Vec<usize> {
    random_f32(n, seed, 1.0)
        .iter()
        .map(|x| 1 + (((x + 1.0) / 2.0 * max as f32) as usize).min(max - 1))
        .collect()
}

#[test]
fn decode_batches_match_reference() {
    let cases = [
        Case {
            name: "decode B=1, one token",
            qo: vec![1],
            kv: vec![1],
        },
        Case {
            name: "decode B=1, 1100 tokens",
            qo: vec![1],
            kv: vec![1100],
        },
        Case {
            // Several 64-token tiles per chunk on the split-KV kernel, more
            // than it requests before it starts computing.
            name: "decode B=1, 20000 tokens",
            qo: vec![1],
            kv: vec![20000],
        },
        Case {
            name: "decode B=7 ragged",
            qo: vec![1; 7],
            kv: vec![1, 2, 17, 64, 129, 300, 1031],
        },
        Case {
            name: "decode B=64",
            qo: vec![1; 64],
            kv: lens(64, 77, 260),
        },
    ];
    // Group 8 has its own decode kernel; group 5 has none and decodes on
    // the prefill kernel (or the split-KV one).
    sweep("decode_batches_match_reference", &cases, &[(16, 2), (20, 4)]);
}

#[test]
fn prefill_batches_match_reference() {
    let cases = [
        Case {
            name: "prefill, no cached prefix",
            qo: vec![1, 13, 100, 257],
            kv: vec![1, 13, 100, 257],
        },
        Case {
            name: "prefill with cached prefix (extend)",
            qo: vec![5, 64, 2, 33],
            kv: vec![40, 1100, 3, 97],
        },
    ];
    sweep("prefill_batches_match_reference", &cases, &[]);
}

#[test]
fn mixed_batches_match_reference() {
    let cases = [Case {
        name: "mixed decode + extend + prefill",
        qo: vec![1, 1, 30, 1, 200, 7],
        kv: vec![10, 1500, 30, 3, 420, 7],
    }];
    sweep("mixed_batches_match_reference", &cases, &[]);
}

/// One plan is reused for several "layers" (other caches, same schedule),
/// with an explicit scale, at Qwen3-8B's heads.
#[test]
fn one_plan_serves_every_layer() {
    let Some(gpu) = gpu_or_skip("one_plan_serves_every_layer") else {
        return;
    };
    for decode_kernel in [DecodeKernel::Auto, DecodeKernel::SplitKv, DecodeKernel::SplitKvCluster] {
        let config = WorkspaceConfig {
            decode_kernel,
            ..WorkspaceConfig::default()
        };
        layers_share_a_plan(&gpu, &mut AttentionWorkspace::new(&gpu, config).unwrap());
    }
}

fn layers_share_a_plan(gpu: &Gpu, ws: &mut AttentionWorkspace) {
    let heads = AttentionHeads {
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        dtype: DType::BF16,
    };
    let (qo, kv) = (indptr(&[1, 1, 1]), indptr(&[5, 700, 64]));
    let total_kv = 769;
    let plan = ops::plan_attention(gpu, ws, &qo, &kv, heads).unwrap();
    let slots = shuffled_slots(total_kv, 1000, 5);
    let sd = DeviceTensor::from_host(gpu, &slots, &[total_kv]).unwrap();
    let q: Vec<bf16> = cast(&random_f32(3 * 32 * 128, 6, 3.0));
    let qd = DeviceTensor::from_host(gpu, &q, &[3, 32, 128]).unwrap();
    for layer in 0..3u64 {
        let k: Vec<bf16> = cast(&random_f32(1000 * 8 * 128, 10 + layer, 1.0));
        let v: Vec<bf16> = cast(&random_f32(1000 * 8 * 128, 20 + layer, 1.0));
        let kd = DeviceTensor::from_host(gpu, &k, &[1000, 8, 128]).unwrap();
        let vd = DeviceTensor::from_host(gpu, &v, &[1000, 8, 128]).unwrap();
        let paged = PagedKv {
            k_cache: &k,
            v_cache: &v,
            kv_indices: &slots,
            kv_indptr: &kv,
            num_kv_heads: 8,
            head_dim: 128,
        };
        let want = reference::paged_attention(&q, &qo, 32, &paged, 0.1);
        let got = ops::paged_attention(gpu, &plan, ws, &qd, &kd, &vd, &sd, Some(0.1))
            .unwrap()
            .to_host::<bf16>(gpu)
            .unwrap();
        let err = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g.to_f32() - w).abs())
            .fold(0.0, f32::max);
        assert!(
            err <= tol(DType::BF16),
            "{:?} layer {layer}: max error {err}",
            ws.config().decode_kernel
        );
    }
}

#[test]
fn stale_plans_and_bad_tensors_are_refused() {
    let Some(gpu) = gpu_or_skip("stale_plans_and_bad_tensors_are_refused") else {
        return;
    };
    let mut ws = AttentionWorkspace::new(&gpu, WorkspaceConfig::default()).unwrap();
    let heads = AttentionHeads {
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        dtype: DType::F16,
    };
    let old = ops::plan_attention(&gpu, &mut ws, &[0, 1], &[0, 4], heads).unwrap();
    let new = ops::plan_attention(&gpu, &mut ws, &[0, 2], &[0, 4], heads).unwrap();
    let k = DeviceTensor::zeros(&gpu, &[8, 2, 64], DType::F16).unwrap();
    let slots = DeviceTensor::from_host(&gpu, &[0i32, 1, 2, 3], &[4]).unwrap();
    let q1 = DeviceTensor::zeros(&gpu, &[1, 4, 64], DType::F16).unwrap();
    let err = ops::paged_attention(&gpu, &old, &ws, &q1, &k, &k, &slots, None).unwrap_err();
    assert!(err.to_string().contains("stale"), "{err}");
    let err = ops::paged_attention(&gpu, &new, &ws, &q1, &k, &k, &slots, None).unwrap_err();
    assert!(err.to_string().contains("`q` has shape [1, 4, 64]"), "{err}");
    let other = AttentionWorkspace::new(&gpu, WorkspaceConfig::default()).unwrap();
    let q2 = DeviceTensor::zeros(&gpu, &[2, 4, 64], DType::F16).unwrap();
    let err = ops::paged_attention(&gpu, &new, &other, &q2, &k, &k, &slots, None).unwrap_err();
    assert!(err.to_string().contains("workspace"), "{err}");
    assert!(ops::paged_attention(&gpu, &new, &ws, &q2, &k, &k, &slots, None).is_ok());
    let bad = AttentionHeads { head_dim: 96, ..heads };
    let err = ops::plan_attention(&gpu, &mut ws, &[0, 1], &[0, 4], bad).unwrap_err();
    assert!(err.to_string().contains("supported: 64 or 128"), "{err}");
}

// ------------------------------------------------------- validation (no GPU)

#[test]
fn validation_names_the_argument() {
    let heads = AttentionHeads {
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 128,
        dtype: DType::BF16,
    };
    let e = |qo: &[i32], kv: &[i32]| ops::validate_attention_batch(qo, kv, heads).unwrap_err().to_string();
    assert!(e(&[0, 3, 2], &[0, 3, 6]).contains("qo_indptr"));
    assert!(e(&[0, 3], &[0, 2]).contains("qo_len 3 > kv_len 2"));
    assert!(e(&[0, 1], &[0, 1, 2]).contains("kv_indptr"));
    let f32_heads = AttentionHeads {
        dtype: DType::F32,
        ..heads
    };
    let err = ops::validate_attention_batch(&[0, 1], &[0, 1], f32_heads).unwrap_err();
    assert!(err.to_string().contains("bf16 or f16"), "{err}");
    let b = ops::validate_attention_batch(&[0, 1, 2], &[0, 7, 9], heads).unwrap();
    let q = [2, 32, 128];
    let kv = [16, 8, 128];
    let err = ops::validate_paged_attention(
        heads,
        b,
        Meta::new(&q, DType::BF16),
        Meta::new(&kv, DType::BF16),
        Meta::new(&kv, DType::F16),
        Meta::new(&[9], DType::I32),
        Meta::new(&q, DType::BF16),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`v_cache` has dtype f16"), "{err}");
}
