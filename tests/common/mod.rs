//! Shared helpers for integration tests.
#![allow(dead_code)]

use mllm_kernel::dtype::FloatElem;
use mllm_kernel::{Error, Gpu};

/// The GPU, or `None` after printing why the test is skipped. Only a missing
/// device skips; any other failure to open it fails the test.
pub fn gpu_or_skip(test: &str) -> Option<Gpu> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e @ Error::NoCudaDevice { .. }) => {
            eprintln!("SKIPPED {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: GPU present but unusable: {e}"),
    }
}

/// An SM90+ GPU, or `None` after printing why the test is skipped (no GPU, or `kernel`
/// needs SM90 and this one is older).
pub fn sm90_or_skip(test: &str, kernel: &str) -> Option<Gpu> {
    let gpu = gpu_or_skip(test)?;
    if gpu.arch().major < 9 {
        eprintln!("SKIPPED {test}: {kernel} needs SM90, this GPU is {}", gpu.arch());
        return None;
    }
    Some(gpu)
}

/// Deterministic values in [-scale, scale] (xorshift64).
pub fn random_f32(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// `v` rounded to the element type `T`.
pub fn cast<T: FloatElem>(v: &[f32]) -> Vec<T> {
    v.iter().map(|x| T::from_f32(*x)).collect()
}

/// Runs `launch` `runs` times on one stream into fresh `[rows, cols]` buffers
/// of `T`, back to back (no host wait between launches, so they overlap
/// under programmatic dependent launch as in a decode step), and asserts
/// every output holds the first's exact bits: a kernel with a fixed
/// reduction order that differs between runs has a race. Returns the first
/// output, for the caller to check against its reference.
pub fn assert_bitwise_repeatable<T: FloatElem>(
    gpu: &Gpu,
    what: &str,
    (rows, cols): (usize, usize),
    runs: usize,
    mut launch: impl FnMut(&mut mllm_kernel::DeviceTensor),
) -> Vec<T> {
    // Outputs held per wave, so waves of launches stay queued on the GPU.
    const WAVE: usize = 32;
    let bits = |v: &[T]| v.iter().map(|x| x.to_f32().to_bits()).collect::<Vec<_>>();
    let mut first: Option<Vec<T>> = None;
    let mut done = 0;
    while done < runs {
        let wave = WAVE.min(runs - done);
        let mut outs: Vec<_> = (0..wave)
            .map(|_| mllm_kernel::DeviceTensor::zeros(gpu, &[rows, cols], T::DTYPE).unwrap())
            .collect();
        outs.iter_mut().for_each(&mut launch);
        for (i, out) in outs.iter().enumerate() {
            let got: Vec<T> = out.to_host(gpu).unwrap();
            let Some(want) = &first else {
                first = Some(got);
                continue;
            };
            let (g, w) = (bits(&got), bits(want));
            if let Some(at) = g.iter().zip(&w).position(|(a, b)| a != b) {
                panic!(
                    "{what}: run {} differs from run 0 at [{}, {}]: {} vs {} \
                     ({} of {} elements differ)",
                    done + i,
                    at / cols,
                    at % cols,
                    got[at].to_f32(),
                    want[at].to_f32(),
                    g.iter().zip(&w).filter(|(a, b)| a != b).count(),
                    g.len()
                );
            }
        }
        done += wave;
    }
    first.expect("runs > 0")
}
