//! Which weights a decode step prefetches into L2 while attention runs (`MLLM_L2_PREFETCH`).
//!
//! At batch 1 the GEMMs stream their weights at close to HBM bandwidth, but attention and
//! the short kernels around it (~30% of a W8A8 step on an H100) leave HBM mostly idle. A
//! prefetch issued after the qkv projection pulls the named weights into L2 during that time,
//! so the GEMMs after attention read part of their weight from L2. The H100's L2 is 50 MiB,
//! and attention's own K/V passes through it, so the list has to stay short. Measured, it has
//! not paid (Qwen3-8B at batch 1 on an H100, `o` alone: +0.26 ms a step in bf16 and W8A8;
//! attention's chain of memory round trips slows more than o_proj gains, see
//! docs/int8_mm_dispatch.md), so the default is off.
//!
//! Grammar: `off` (the default), or comma-separated `TARGET[:MIB]`, each target once, where TARGET
//! is `o`, `gate_up` or `down` (this layer's projections; the next layer's would be evicted by
//! the ~200 MiB this layer's MLP streams first), and MIB caps the bytes taken from the start
//! of that weight (whole weight when absent).

use mllm_kernel::ops::{self, MAX_PREFETCH_RANGES};
use mllm_kernel::{DeviceTensor, Gpu};

use super::weights::GpuLayer;
use crate::models::{ModelError, Result};

/// The weights one prefetch names, relative to the layer running attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    O,
    GateUp,
    Down,
}

impl Target {
    const ALL: [Self; 3] = [Self::O, Self::GateUp, Self::Down];

    fn name(self) -> &'static str {
        match self {
            Self::O => "o",
            Self::GateUp => "gate_up",
            Self::Down => "down",
        }
    }
}

// One prefetch launch covers every target.
const _: () = assert!(MAX_PREFETCH_RANGES >= Target::ALL.len());

/// A parsed `MLLM_L2_PREFETCH`: the ranges, in the order they are prefetched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct L2Prefetch {
    targets: Vec<(Target, Option<usize>)>,
}

/// Decode steps up to this many tokens prefetch: beyond it the GEMMs are no longer bound by
/// their weight stream.
const MAX_TOKENS: usize = 64;

impl L2Prefetch {
    /// Reads `MLLM_L2_PREFETCH`.
    pub(super) fn from_env() -> Result<Self> {
        std::env::var("MLLM_L2_PREFETCH").map_or(Ok(Self::default()), |v| v.parse())
    }

    /// Whether nothing is prefetched.
    pub(super) fn is_off(&self) -> bool {
        self.targets.is_empty()
    }

    /// Enqueues the prefetch of `layer`'s weights in a step of `tokens` tokens.
    pub(super) fn issue(&self, gpu: &Gpu, tokens: usize, layer: &GpuLayer) -> Result<()> {
        if self.is_off() || tokens > MAX_TOKENS {
            return Ok(());
        }
        let ranges: Vec<(&DeviceTensor, usize)> = self
            .targets
            .iter()
            .map(|&(target, cap)| {
                let w = match target {
                    Target::O => &layer.o.weight,
                    Target::GateUp => &layer.gate_up.weight,
                    Target::Down => &layer.down.weight,
                };
                (w, cap.map_or(w.nbytes(), |c| c.min(w.nbytes())))
            })
            .collect();
        Ok(ops::prefetch_l2(gpu, &ranges)?)
    }
}

impl std::str::FromStr for L2Prefetch {
    type Err = ModelError;

    fn from_str(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        if spec.is_empty() || spec == "off" {
            return Ok(Self::default());
        }
        let bad = |why: String| ModelError::Invalid(format!("MLLM_L2_PREFETCH={spec}: {why}"));
        let targets = spec
            .split(',')
            .map(|item| {
                let (name, mib) = match item.trim().split_once(':') {
                    Some((n, m)) => (n, Some(m)),
                    None => (item.trim(), None),
                };
                let Some(target) = Target::ALL.into_iter().find(|t| t.name() == name) else {
                    return Err(bad(format!("unknown weight `{name}` (o, gate_up, down)")));
                };
                let cap = mib
                    .map(|m| match m.parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n << 20),
                        _ => Err(bad(format!("`{m}` is not a positive number of MiB"))),
                    })
                    .transpose()?;
                Ok((target, cap))
            })
            .collect::<Result<Vec<_>>>()?;
        if let Some(i) = (1..targets.len()).find(|&i| targets[..i].iter().any(|t| t.0 == targets[i].0)) {
            return Err(bad(format!("`{}` named twice", targets[i].0.name())));
        }
        Ok(Self { targets })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<L2Prefetch> {
        s.parse()
    }

    #[test]
    fn off_by_default_and_by_name() {
        assert!(parse("").unwrap().is_off());
        assert!(parse(" off ").unwrap().is_off());
    }

    #[test]
    fn targets_keep_their_order_and_caps() {
        let p = parse("gate_up:16, o").unwrap();
        assert_eq!(p.targets, [(Target::GateUp, Some(16 << 20)), (Target::O, None)]);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        let e = |s: &str| parse(s).unwrap_err().to_string();
        assert!(e("qkv").contains("unknown weight `qkv`"));
        assert!(e("o:0").contains("`0` is not a positive number"));
        assert!(e("o:lots").contains("`lots`"));
        assert!(e("o,gate_up:4,o").contains("`o` named twice"));
    }
}
