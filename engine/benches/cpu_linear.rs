//! CPU linear layers at decode batch sizes, around the packed-panel crossover (32, 64 rows) and
//! one prefill size: `gemv_t` (the f32 decode path, bf16 weights read in place) and `matmul_t`
//! (register-tiled f32 gemm, the f32 prefill path) against `matmul_bf16_t` (AVX512-BF16: dot
//! tiles below 48 rows, packed weight panels from 48; used when the CPU has them) on the same
//! inputs, for SmolLM2-135M's layer shapes. Four copies of each weight rotate so that every call streams
//! its weights from memory, as decode does, rather than from the last-level cache.
//!
//! `cargo bench -p mllm-engine --bench cpu_linear`; the time ratios between kernels are the
//! figures to compare (all run in the same process).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mllm_engine::tensor::{bf16_dot_available, gemv_t, matmul_bf16_t, matmul_t, DType, Tensor};

/// `(name, N, K)`: fused q/k/v, fused gate/up, down, lm_head of SmolLM2-135M.
const SHAPES: [(&str, usize, usize); 4] = [
    ("qkv", 960, 576),
    ("gate_up", 3072, 576),
    ("down", 576, 1536),
    ("lm_head", 49152, 576),
];
const COPIES: usize = 4;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu_linear");
    group.sample_size(20);
    for (name, n, k) in SHAPES {
        let weights: Vec<Tensor> = (0..COPIES)
            .map(|s| Tensor::from_f32(&values(n * k, s as u32), &[n, k], DType::BF16).unwrap())
            .collect();
        for m in [1usize, 4, 8, 32, 64, 160] {
            let x = Tensor::from_vec(values(m * k, 99), &[m, k]).unwrap();
            group.throughput(Throughput::Bytes((n * k * 2) as u64));
            let id = format!("{name}_m{m}");
            let mut turn = 0;
            if m <= 8 {
                group.bench_function(BenchmarkId::new("gemv_t", &id), |b| {
                    b.iter(|| {
                        turn = (turn + 1) % COPIES;
                        gemv_t(&x, &weights[turn]).unwrap()
                    })
                });
            }
            group.bench_function(BenchmarkId::new("matmul_t", &id), |b| {
                b.iter(|| {
                    turn = (turn + 1) % COPIES;
                    matmul_t(&x, &weights[turn]).unwrap()
                })
            });
            if bf16_dot_available() {
                group.bench_function(BenchmarkId::new("matmul_bf16_t", &id), |b| {
                    b.iter(|| {
                        turn = (turn + 1) % COPIES;
                        matmul_bf16_t(&x, &weights[turn]).unwrap()
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
