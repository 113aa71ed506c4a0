//! Which kernel configuration runs a W8A8 GEMM: by arch, then by M bucket
//! and N·K. The table is measured (`mllm-kernel bench int8-mm --sweep`);
//! the figures behind each choice are in `docs/int8_mm_dispatch.md`.

use crate::jit::Arch;
use crate::{Error, Result};

/// One compiled kernel configuration (`mllm_int8_mm_config_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Int8MmConfig {
    /// Hand-written mma.sync kernel for M ≤ 16 (weight streaming).
    SkinnyM16,
    /// Hand-written mma.sync kernel for M ≤ 32.
    SkinnyM32,
    /// Hand-written mma.sync kernel for M ≤ 64.
    SkinnyM64,
    /// M ≤ 16 with the weight streamed into shared memory by TMA bulk
    /// copies (SM90+), 8 output columns per block.
    StreamM16,
    /// CUTLASS 2.x tile 32x64x128.
    Sm80T32x64x128,
    /// CUTLASS 2.x tile 64x128x128.
    Sm80T64x128x128,
    /// CUTLASS 2.x tile 128x128x64.
    Sm80T128x128x64,
    /// CUTLASS 2.x tile 256x128x64.
    Sm80T256x128x64,
    /// CUTLASS 3.x Pingpong 64x128x128, cluster 1x1.
    Sm90P64x128x128,
    /// CUTLASS 3.x Pingpong 128x128x128, cluster 1x2.
    Sm90P128x128x128,
    /// CUTLASS 3.x Cooperative 128x256x128, cluster 2x1.
    Sm90C128x256x128,
    /// CUTLASS 3.x Cooperative 256x128x128, cluster 1x2.
    Sm90C256x128x128,
    /// CUTLASS 3.x Cooperative 256x128x128, cluster 2x1 (B multicast).
    Sm90C256x128x128Cl2x1,
    /// CUTLASS 3.x Pingpong on the swapped problem (weight rows on wgmma's
    /// 64-row side), 16 tokens a tile: M ≤ 16.
    Sm90SwapP64x16x256,
    /// As [`Int8MmConfig::Sm90SwapP64x16x256`] with 32 tokens a tile: M ≤ 32.
    Sm90SwapP64x32x256,
    /// As [`Int8MmConfig::Sm90SwapP64x16x256`] with 64 tokens a tile: M ≤ 64.
    Sm90SwapP64x64x256,
    /// As [`Int8MmConfig::Sm90SwapP64x16x256`] with 128 tokens a tile: M ≤ 128.
    /// Explicit only: on an H100 it beat the Pingpong 64x128 tile on gate_up at 128
    /// rows alone (docs/int8_mm_dispatch.md, session 30).
    Sm90SwapP64x128x256,
    /// The swap-AB tiles with K folded into the weight rows
    /// (`csrc/int8_scaled_mm/sm90_fold.cuh`): a fold of F reads the weight as
    /// `[F·N, K/F]` and the tokens as `[F·M, K/F]`, so F times the CTAs each
    /// stream 1/F of a slab, and the epilogue adds the split-K partial sums.
    /// The fold (1, 2 or 4, with F·M ≤ 32) is picked per problem to fill the
    /// SMs; unfolded it is the plain 16- or 32-token swap tile. M ≤ 32.
    Sm90SwapKFold,
}

/// Which family of kernels may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8MmPath {
    /// The fastest for the GPU: SM90 kernels on sm_90.
    Auto,
    /// Skinny + CUTLASS 2.x only, also on Hopper (to test both paths on one GPU).
    Sm80,
}

impl Int8MmConfig {
    pub const ALL: [Int8MmConfig; 18] = [
        Self::SkinnyM16,
        Self::SkinnyM32,
        Self::SkinnyM64,
        Self::StreamM16,
        Self::Sm80T32x64x128,
        Self::Sm80T64x128x128,
        Self::Sm80T128x128x64,
        Self::Sm80T256x128x64,
        Self::Sm90P64x128x128,
        Self::Sm90P128x128x128,
        Self::Sm90C128x256x128,
        Self::Sm90C256x128x128,
        Self::Sm90C256x128x128Cl2x1,
        Self::Sm90SwapP64x16x256,
        Self::Sm90SwapP64x32x256,
        Self::Sm90SwapP64x64x256,
        Self::Sm90SwapP64x128x256,
        Self::Sm90SwapKFold,
    ];

    /// The `mllm_int8_mm_config_t` value (from the C header, via bindgen).
    pub fn id(self) -> i32 {
        use crate::ffi::dynamic::mllm_int8_mm_config_t as C;
        let c = match self {
            Self::SkinnyM16 => C::MLLM_INT8_MM_SKINNY_M16,
            Self::SkinnyM32 => C::MLLM_INT8_MM_SKINNY_M32,
            Self::SkinnyM64 => C::MLLM_INT8_MM_SKINNY_M64,
            Self::StreamM16 => C::MLLM_INT8_MM_STREAM_M16,
            Self::Sm80T32x64x128 => C::MLLM_INT8_MM_SM80_32x64x128,
            Self::Sm80T64x128x128 => C::MLLM_INT8_MM_SM80_64x128x128,
            Self::Sm80T128x128x64 => C::MLLM_INT8_MM_SM80_128x128x64,
            Self::Sm80T256x128x64 => C::MLLM_INT8_MM_SM80_256x128x64,
            Self::Sm90P64x128x128 => C::MLLM_INT8_MM_SM90_P64x128x128,
            Self::Sm90P128x128x128 => C::MLLM_INT8_MM_SM90_P128x128x128,
            Self::Sm90C128x256x128 => C::MLLM_INT8_MM_SM90_C128x256x128,
            Self::Sm90C256x128x128 => C::MLLM_INT8_MM_SM90_C256x128x128,
            Self::Sm90C256x128x128Cl2x1 => C::MLLM_INT8_MM_SM90_C256x128x128_CL2x1,
            Self::Sm90SwapP64x16x256 => C::MLLM_INT8_MM_SM90_SWAP_P64x16x256,
            Self::Sm90SwapP64x32x256 => C::MLLM_INT8_MM_SM90_SWAP_P64x32x256,
            Self::Sm90SwapP64x64x256 => C::MLLM_INT8_MM_SM90_SWAP_P64x64x256,
            Self::Sm90SwapP64x128x256 => C::MLLM_INT8_MM_SM90_SWAP_P64x128x256,
            Self::Sm90SwapKFold => C::MLLM_INT8_MM_SM90_SWAPK,
        };
        c.0 as i32
    }

    /// Short name, as `MLLM_INT8_MM_CONFIG` and the benchmark spell it.
    ///
    /// ```
    /// use mllm_kernel::ops::Int8MmConfig;
    /// for c in Int8MmConfig::ALL {
    ///     assert_eq!(c.name().parse::<Int8MmConfig>().unwrap(), c);
    /// }
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Self::SkinnyM16 => "skinny_m16",
            Self::SkinnyM32 => "skinny_m32",
            Self::SkinnyM64 => "skinny_m64",
            Self::StreamM16 => "stream_m16",
            Self::Sm80T32x64x128 => "sm80_32x64x128",
            Self::Sm80T64x128x128 => "sm80_64x128x128",
            Self::Sm80T128x128x64 => "sm80_128x128x64",
            Self::Sm80T256x128x64 => "sm80_256x128x64",
            Self::Sm90P64x128x128 => "sm90_pingpong_64x128x128",
            Self::Sm90P128x128x128 => "sm90_pingpong_128x128x128",
            Self::Sm90C128x256x128 => "sm90_coop_128x256x128",
            Self::Sm90C256x128x128 => "sm90_coop_256x128x128",
            Self::Sm90C256x128x128Cl2x1 => "sm90_coop_256x128x128_cl2x1",
            Self::Sm90SwapP64x16x256 => "sm90_swapab_64x16x256",
            Self::Sm90SwapP64x32x256 => "sm90_swapab_64x32x256",
            Self::Sm90SwapP64x64x256 => "sm90_swapab_64x64x256",
            Self::Sm90SwapP64x128x256 => "sm90_swapab_64x128x256",
            Self::Sm90SwapKFold => "sm90_swapab_kfold",
        }
    }

    /// The kernel build variant holding it.
    pub fn variant(self) -> &'static str {
        if self.is_sm90() {
            "sm90"
        } else {
            "sm80"
        }
    }

    pub fn is_sm90(self) -> bool {
        matches!(
            self,
            Self::Sm90P64x128x128
                | Self::Sm90P128x128x128
                | Self::Sm90C128x256x128
                | Self::Sm90C256x128x128
                | Self::Sm90C256x128x128Cl2x1
                | Self::Sm90SwapP64x16x256
                | Self::Sm90SwapP64x32x256
                | Self::Sm90SwapP64x64x256
                | Self::Sm90SwapP64x128x256
                | Self::Sm90SwapKFold
        )
    }

    /// Most rows of A it handles (skinny kernels are bounded).
    pub fn max_m(self) -> usize {
        match self {
            Self::SkinnyM16 | Self::StreamM16 | Self::Sm90SwapP64x16x256 => 16,
            Self::SkinnyM32 | Self::Sm90SwapP64x32x256 | Self::Sm90SwapKFold => 32,
            Self::SkinnyM64 | Self::Sm90SwapP64x64x256 => 64,
            Self::Sm90SwapP64x128x256 => 128,
            _ => usize::MAX,
        }
    }

    /// Whether it can run on `arch` (SM90 configs exist only for sm_90a;
    /// the bulk-copy kernel needs SM90 or newer).
    pub fn runs_on(self, arch: Arch) -> bool {
        match self {
            Self::StreamM16 => arch.major >= 9,
            _ => arch.major >= 8 && (!self.is_sm90() || (arch.major == 9 && arch.minor == 0)),
        }
    }
}

impl std::fmt::Display for Int8MmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Int8MmConfig {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| Error::InvalidArgument {
                op: "int8_scaled_mm",
                arg: "config",
                reason: format!(
                    "unknown config `{s}`; known: {}",
                    Self::ALL.map(|c| c.name()).join(", ")
                ),
            })
    }
}

/// The configuration for an `m x n x k` problem on `arch`.
///
/// ```
/// use mllm_kernel::ops::{select_int8_mm_config, Int8MmConfig, Int8MmPath};
/// let h100 = "sm_90a".parse().unwrap();
/// assert_eq!(select_int8_mm_config(h100, Int8MmPath::Auto, 1, 4096, 4096), Int8MmConfig::Sm90SwapKFold);
/// assert_eq!(select_int8_mm_config(h100, Int8MmPath::Auto, 32, 4096, 12288), Int8MmConfig::Sm90SwapKFold);
/// assert_eq!(select_int8_mm_config(h100, Int8MmPath::Auto, 64, 4096, 12288), Int8MmConfig::Sm90SwapP64x64x256);
/// assert_eq!(select_int8_mm_config(h100, Int8MmPath::Auto, 128, 6144, 4096), Int8MmConfig::Sm90P64x128x128);
/// assert!(select_int8_mm_config(h100, Int8MmPath::Auto, 8192, 8192, 8192).is_sm90());
/// assert!(!select_int8_mm_config(h100, Int8MmPath::Sm80, 8192, 8192, 8192).is_sm90());
/// ```
pub fn select_int8_mm_config(arch: Arch, path: Int8MmPath, m: usize, n: usize, k: usize) -> Int8MmConfig {
    use Int8MmConfig::*;
    let hopper = path == Int8MmPath::Auto && arch.major == 9 && arch.minor == 0;
    // Small M streams the weight. On Hopper the swap-AB Pingpong streams
    // 64-row weight slabs with the tokens on wgmma's narrow side: on an H100
    // (graph replays) 1.05-1.37x cuBLASLt int8 on every Qwen3-8B layer at
    // M = 1 to 32; at M = 33-64 the 64-token tile takes 0.89-1.01x the time
    // of the Pingpong 64x128 tile and beats cuBLASLt int8 on all but down at
    // 33 rows (22.7 against 21.7 us). In a decode step it pulls its first
    // weight tiles into L2 before waiting on the kernel that quantized A
    // (programmatic dependent launch), so at one row it also beats
    // stream_m16, which requests its first stage early too
    // (docs/int8_mm_dispatch.md). Up to 32 rows the K-folded form, which
    // gives layers of 64-96 slabs (o, down, qkv) two or four times the CTAs
    // and falls back to the 16- or 32-token tile where folding cannot fill
    // more SMs: on an H100 at 1-8 rows qkv 9.7-10.1 us against 11.4-11.5,
    // o 7.0-7.2 against 7.9-8.0, down 17.5-17.7 against 19.9 (session 31).
    // Before Hopper: skinny for narrow outputs, the 32x64 tile for wide ones.
    if m <= 64 && hopper {
        return if m <= 32 { Sm90SwapKFold } else { Sm90SwapP64x64x256 };
    }
    if m <= 16 {
        return if n >= 6144 { Sm80T32x64x128 } else { SkinnyM16 };
    }
    let wide = n >= 16384 || k >= 8192;
    if hopper {
        return match m {
            // gate_up-wide outputs at 65-96 rows on an H100 (one graph sweep, session 30):
            // 43.5 / 42.1 us on Pingpong 128x128 against 50.2 / 44.3 on 64x128 and
            // cuBLASLt int8's 46.6 / 47.2. At 128 rows 64x128 is level on the H100
            // (41.1 against 41.8) and ahead on the H200 (32.4 against 35.5).
            65..=96 if n >= 16384 => Sm90P128x128x128,
            ..=128 => Sm90P64x128x128,
            129..=256 if n <= 4096 => Sm90P64x128x128,
            129..=256 => Sm90P128x128x128,
            257..=1024 if n <= 4096 => Sm90C128x256x128,
            257..=1024 => Sm90P128x128x128,
            // 8192^3 on an H100: 795-808 us against 821-845 for the cluster-2x1
            // 256x128 tile (three runs); within 1% of it on the H200.
            _ if m >= 8192 => Sm90C128x256x128,
            // At M = 4096 on an H100 (six sweeps): o 91-103 us against 97-109
            // for Pingpong 128x128, down 284-293 against 291-307 for the
            // cluster-1 256x128 tile. At M = 2048 Pingpong 128x128 was still
            // ahead on o (docs/int8_mm_dispatch.md, session 29).
            4096.. if n <= 4096 && !wide => Sm90C128x256x128,
            4096.. if n <= 4096 && wide => Sm90C256x128x128Cl2x1,
            _ if wide => Sm90C256x128x128,
            _ => Sm90P128x128x128,
        };
    }
    match m {
        ..=128 => Sm80T32x64x128,
        129..=512 if n <= 4096 => Sm80T64x128x128,
        129..=2048 => Sm80T128x128x64,
        _ => Sm80T256x128x64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_picks_a_config_that_runs_and_covers_m() {
        for arch in ["sm_80", "sm_86", "sm_89", "sm_90a", "sm_100a"] {
            let arch: Arch = arch.parse().unwrap();
            for path in [Int8MmPath::Auto, Int8MmPath::Sm80] {
                for m in [1, 3, 16, 17, 32, 33, 64, 65, 128, 129, 255, 256, 257, 1000, 4096, 8192] {
                    for (n, k) in [(4096, 4096), (6144, 4096), (24576, 4096), (4096, 12288), (64, 16)] {
                        let c = select_int8_mm_config(arch, path, m, n, k);
                        assert!(c.runs_on(arch), "{c} on {arch}");
                        assert!(m <= c.max_m(), "{c} for m={m}");
                        if path == Int8MmPath::Sm80 {
                            assert!(!c.is_sm90(), "forced sm80 path picked {c}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn hopper_takes_a_swap_tile_that_holds_m() {
        let h100: Arch = "sm_90a".parse().unwrap();
        let pick = |m| select_int8_mm_config(h100, Int8MmPath::Auto, m, 4096, 12288);
        assert_eq!(pick(1), Int8MmConfig::Sm90SwapKFold);
        assert_eq!(pick(32), Int8MmConfig::Sm90SwapKFold);
        assert_eq!(pick(33), Int8MmConfig::Sm90SwapP64x64x256);
        assert_eq!(pick(64), Int8MmConfig::Sm90SwapP64x64x256);
        assert_eq!(pick(65), Int8MmConfig::Sm90P64x128x128);
        // Wide outputs (gate_up) take the 128-row tile at 65-96 rows.
        let wide = |m| select_int8_mm_config(h100, Int8MmPath::Auto, m, 24576, 4096);
        assert_eq!(wide(65), Int8MmConfig::Sm90P128x128x128);
        assert_eq!(wide(96), Int8MmConfig::Sm90P128x128x128);
        assert_eq!(wide(97), Int8MmConfig::Sm90P64x128x128);
    }

    #[test]
    fn hopper_prefill_tiles_follow_the_h100_sweeps() {
        let h100: Arch = "sm_90a".parse().unwrap();
        let pick = |m, n, k| select_int8_mm_config(h100, Int8MmPath::Auto, m, n, k);
        // o and down at 4096 rows, where the sweeps moved them; 2048 rows keep Pingpong
        // 128x128 for o and the cluster-1 256x128 tile for down.
        assert_eq!(pick(4096, 4096, 4096), Int8MmConfig::Sm90C128x256x128);
        assert_eq!(pick(4096, 4096, 12288), Int8MmConfig::Sm90C256x128x128Cl2x1);
        assert_eq!(pick(2048, 4096, 4096), Int8MmConfig::Sm90P128x128x128);
        assert_eq!(pick(2048, 4096, 12288), Int8MmConfig::Sm90C256x128x128);
        assert_eq!(pick(4096, 24576, 4096), Int8MmConfig::Sm90C256x128x128);
        assert_eq!(pick(4096, 6144, 4096), Int8MmConfig::Sm90P128x128x128);
    }

    #[test]
    fn ids_are_distinct_and_names_parse() {
        let mut ids: Vec<i32> = Int8MmConfig::ALL.iter().map(|c| c.id()).collect();
        ids.dedup();
        assert_eq!(ids.len(), Int8MmConfig::ALL.len());
        assert!("nope".parse::<Int8MmConfig>().is_err());
    }
}
