//! CPU reference throughput (criterion). The GPU timings live in
//! `mllm-kernel bench`, which reports them against device copy bandwidth;
//! these numbers are the CPU side of that comparison.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use mllm_kernel::reference;

fn inputs(tokens: usize, hidden: usize) -> (Vec<bf16>, Vec<bf16>) {
    let x = (0..tokens * hidden)
        .map(|i| bf16::from_f32(((i * 7919) % 2001) as f32 / 1000.0 - 1.0))
        .collect();
    let w = (0..hidden)
        .map(|i| bf16::from_f32(1.0 + (i % 13) as f32 / 100.0))
        .collect();
    (x, w)
}

fn bench(c: &mut Criterion) {
    let hidden = 4096;
    let mut g = c.benchmark_group("reference");
    for tokens in [1usize, 64] {
        let (x, w) = inputs(tokens, hidden);
        g.throughput(Throughput::Bytes((x.len() * 2 * 2) as u64));
        g.bench_with_input(BenchmarkId::new("rms_norm_bf16", tokens), &tokens, |b, _| {
            b.iter(|| reference::rms_norm(&x, &w, hidden, 1e-6))
        });
        g.bench_with_input(
            BenchmarkId::new("per_token_quant_int8_bf16", tokens),
            &tokens,
            |b, _| b.iter(|| reference::per_token_quant_int8(&x, hidden)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
