//! The CUPTI kernel timeline on a GPU: eager launches and CUDA-graph replays are both
//! recorded, with their names, graph ids and sane timestamps. Skipped (with the reason
//! printed) without a GPU or without CUPTI.

mod common;

use common::{gpu_or_skip, random_f32};
use mllm_kernel::graph::Graph;
use mllm_kernel::kernel_timeline::KernelTimeline;
use mllm_kernel::{ops, DeviceTensor};

#[test]
fn records_eager_and_graph_replayed_kernels() {
    let Some(gpu) = gpu_or_skip("records_eager_and_graph_replayed_kernels") else {
        return;
    };
    if !KernelTimeline::available() {
        println!("skipped records_eager_and_graph_replayed_kernels: CUPTI (libcupti.so) not found");
        return;
    }
    let (rows, cols) = (4, 256);
    let x = DeviceTensor::from_host(&gpu, &random_f32(rows * cols, 1, 2.0), &[rows, cols]).unwrap();
    let w = DeviceTensor::from_host(&gpu, &random_f32(cols, 2, 1.0), &[cols]).unwrap();
    let mut out = DeviceTensor::zeros(&gpu, &[rows, cols], x.dtype()).unwrap();
    ops::rms_norm_into(&gpu, &x, &w, 1e-6, &mut out).unwrap(); // loads the kernel

    let timeline = KernelTimeline::start().unwrap();
    assert!(KernelTimeline::start().is_err(), "a second recording must be refused");
    for _ in 0..3 {
        ops::rms_norm_into(&gpu, &x, &w, 1e-6, &mut out).unwrap();
    }
    let graph = Graph::capture(&gpu, || ops::rms_norm_into(&gpu, &x, &w, 1e-6, &mut out)).unwrap();
    for _ in 0..2 {
        graph.launch().unwrap();
    }
    gpu.synchronize().unwrap();
    let kernels = timeline.finish().unwrap();

    let norms: Vec<_> = kernels.iter().filter(|k| k.name.contains("rms_norm")).collect();
    assert_eq!(norms.len(), 5, "3 eager + 2 replayed: {kernels:?}");
    assert_eq!(norms.iter().filter(|k| k.graph_id == 0).count(), 3, "{norms:?}");
    assert_eq!(norms.iter().filter(|k| k.graph_id != 0).count(), 2, "{norms:?}");
    for k in &norms {
        assert!(k.end_ns > k.start_ns, "{k:?}");
    }
    assert!(
        kernels.windows(2).all(|p| p[0].start_ns <= p[1].start_ns),
        "sorted by start"
    );
    // The recording is over: another one may start.
    KernelTimeline::start().unwrap().finish().unwrap();
}
