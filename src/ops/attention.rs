//! Paged attention over a page-size-1 KV pool (nvcc kernel `attention`,
//! FlashInfer's FA2 batch decode and causal batch prefill kernels, and our
//! split-KV decode kernel for small batches), split the
//! way SGLang's FlashInfer backend uses it: [`plan_attention`] once per
//! forward batch on the host, [`paged_attention_into`] once per layer.
//!
//! Layout (a KV "page" is one token slot, as in SGLang's token_to_kv pool):
//! * `k_cache`, `v_cache`: `[capacity, num_kv_heads, head_dim]` (NHD).
//! * Sequence `i` has `qo_len_i = qo_indptr[i+1] - qo_indptr[i]` new query
//!   rows and `kv_len_i = kv_indptr[i+1] - kv_indptr[i] >= qo_len_i` context
//!   tokens (its cached prefix and its new tokens, already written into the
//!   cache) in slots `kv_indices[kv_indptr[i] .. kv_indptr[i+1]]`.
//! * `q`, `out`: `[total_q, num_heads, head_dim]`. Query `j` of sequence `i`
//!   sits at position `kv_len_i - qo_len_i + j` and attends to context tokens
//!   `0 ..= that position` (bottom-right aligned causal mask).
//!
//! Head dims 64 and 128, dtypes bf16 and f16 (one JIT build each), GQA with
//! any group size, SM80 or newer. Every slot id in `kv_indices` must be below
//! `capacity`: that is the caller's duty (the KV pool hands out only valid
//! slots) and is not checked, since checking would read the indices back
//! from the device on every layer.

use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{CudaEvent, CudaSlice, DevicePtr, PinnedHostSlice};

use super::{expect_dtype, expect_shape, ffi_result, Meta};
use crate::device::Gpu;
use crate::dtype::DType;
use crate::ffi::dynamic::{
    mllm_attention_plan_args_t, mllm_attention_plan_t, mllm_attention_run_args_t, mllm_decode_kernel_t,
};
use crate::registry::{KernelBuild, KernelId};
use crate::tensor::DeviceTensor;
use crate::{Error, Result};

const OP: &str = "paged_attention";

/// Head dims with a kernel build.
pub const ATTENTION_HEAD_DIMS: [usize; 2] = [64, 128];

/// Symbols every `attention` build exports.
pub(super) fn symbols() -> Vec<String> {
    vec!["mllm_attention_plan".to_string(), "mllm_attention_run".to_string()]
}

fn invalid(arg: &'static str, reason: String) -> Error {
    Error::InvalidArgument { op: OP, arg, reason }
}

/// Heads, head dim and dtype of one model's attention layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionHeads {
    /// Query heads (a multiple of `num_kv_heads`).
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// 64 or 128.
    pub head_dim: usize,
    /// bf16 or f16: q, both caches and out.
    pub dtype: DType,
}

impl AttentionHeads {
    /// The JIT variant for this head dim and dtype (`d128_bf16`).
    pub fn variant(&self) -> String {
        format!("d{}_{}", self.head_dim, self.dtype.symbol_suffix())
    }

    fn check(&self) -> Result<()> {
        if !matches!(self.dtype, DType::BF16 | DType::F16) {
            return Err(Error::DTypeMismatch {
                op: OP,
                arg: "dtype",
                expected: "bf16 or f16 (attention kernels exist for head_dim 64/128 x bf16/f16)".into(),
                got: self.dtype,
            });
        }
        if !ATTENTION_HEAD_DIMS.contains(&self.head_dim) {
            return Err(invalid(
                "head_dim",
                format!("{} is not supported; supported: 64 or 128 (bf16 or f16)", self.head_dim),
            ));
        }
        if self.num_kv_heads == 0 || self.num_heads == 0 || !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(invalid(
                "num_heads",
                format!(
                    "{} query heads must be a positive multiple of {} kv heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if self.num_heads * self.head_dim > i32::MAX as usize {
            return Err(invalid("num_heads", format!("{} heads are too many", self.num_heads)));
        }
        Ok(())
    }
}

/// Which kernel a plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKernel {
    /// FlashInfer's batch decode: every sequence has exactly one new query.
    Decode,
    /// Our split-KV decode kernel ([`DecodeKernel::SplitKv`] or
    /// [`DecodeKernel::SplitKvCluster`]).
    SplitDecode,
    /// Batch prefill with the causal mask (prefill, extend and mixed batches;
    /// also decode when the GQA group has no decode instantiation).
    Prefill,
}

/// What runs a batch whose every sequence has one new query row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DecodeKernel {
    /// Tensor cores for GQA groups of 4 or more, else the CUDA-core kernel.
    #[default]
    Auto,
    /// FlashInfer's batch decode kernel (CUDA cores, one KV token per
    /// warp-row and stage).
    CudaCores,
    /// FlashInfer's prefill kernel with one query row per sequence: the GQA
    /// group's rows share a 16-row tensor-core tile, so each KV chunk is read
    /// once per group (FlashInfer's `use_tensor_cores`).
    TensorCores,
    /// Ours (`csrc/attention/split_decode.cuh`), for GQA groups of up to 8
    /// (larger ones take the tensor-core kernel): each (KV chunk, KV head,
    /// sequence) CTA requests its chunk's K/V before waiting on the kernel
    /// before it (all but each sequence's newest token, which that kernel
    /// stores), and the last CTA of a (sequence, KV head) merges the chunks,
    /// so batch-1 decode does not pay the index -> K/V -> merge chain after
    /// the KV store. The engine's decode must store the newest token's K/V
    /// in the kernel right before attention, as `qk_norm_rope_store` does.
    SplitKv,
    /// [`SplitKv`](Self::SplitKv) with the chunks of a (sequence, KV head)
    /// as one thread-block cluster of up to 16 CTAs (SM90+; below, plain
    /// `SplitKv`): each CTA merges a slice of the outputs from its peers'
    /// shared memory, instead of the last CTA walking every chunk's partial
    /// state through L2.
    SplitKvCluster,
}

impl DecodeKernel {
    /// Whether a decode batch with `group` query heads per KV head runs on
    /// the prefill kernel.
    ///
    /// ```
    /// use mllm_kernel::ops::DecodeKernel;
    /// assert!(DecodeKernel::Auto.uses_tensor_cores(4));
    /// assert!(!DecodeKernel::Auto.uses_tensor_cores(1));
    /// assert!(DecodeKernel::TensorCores.uses_tensor_cores(1));
    /// ```
    pub fn uses_tensor_cores(self, group: usize) -> bool {
        match self {
            // Groups of 4+ fill a quarter or more of the 16-row tile; the
            // CUDA-core kernel's per-token loop leaves DRAM idle there
            // (`mllm-kernel bench attention` measures both).
            Self::Auto => group >= 4,
            Self::CudaCores | Self::SplitKv | Self::SplitKvCluster => false,
            Self::TensorCores => true,
        }
    }

    /// The C ABI's choice for a decode batch with `group` query heads per
    /// KV head.
    fn ffi(self, group: usize) -> i32 {
        let kernel = match self {
            Self::SplitKv => mllm_decode_kernel_t::MLLM_DECODE_KERNEL_SPLIT_KV,
            Self::SplitKvCluster => mllm_decode_kernel_t::MLLM_DECODE_KERNEL_SPLIT_KV_CLUSTER,
            k if k.uses_tensor_cores(group) => mllm_decode_kernel_t::MLLM_DECODE_KERNEL_TENSOR_CORES,
            _ => mllm_decode_kernel_t::MLLM_DECODE_KERNEL_CUDA_CORES,
        };
        kernel.0 as i32
    }

    /// `Auto` as `MLLM_DECODE_KERNEL` overrides it (`auto`, `cuda-cores`,
    /// `tensor-cores`, `split-kv` or `split-kv-cluster`; to compare the kernels in a whole
    /// model); an explicit
    /// choice stays.
    fn resolved(self) -> Result<Self> {
        match (self, std::env::var("MLLM_DECODE_KERNEL")) {
            (Self::Auto, Ok(v)) if !v.is_empty() => v.parse().map_err(|_| Error::BadEnv {
                var: "MLLM_DECODE_KERNEL",
                value: v,
                reason: "expected auto, cuda-cores, tensor-cores, split-kv or split-kv-cluster".into(),
            }),
            _ => Ok(self),
        }
    }
}

impl std::str::FromStr for DecodeKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "cuda-cores" => Ok(Self::CudaCores),
            "tensor-cores" => Ok(Self::TensorCores),
            "split-kv" => Ok(Self::SplitKv),
            "split-kv-cluster" => Ok(Self::SplitKvCluster),
            _ => Err(invalid(
                "decode_kernel",
                format!(
                    "unknown decode kernel `{s}`; known: auto, cuda-cores, tensor-cores, split-kv, split-kv-cluster"
                ),
            )),
        }
    }
}

/// Totals of a validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionBatch {
    pub batch_size: usize,
    /// Query rows: `qo_indptr[B]`.
    pub total_q: usize,
    /// Context slots: `kv_indptr[B]`, the prefix of `kv_indices` read.
    pub total_kv: usize,
    /// Every `qo_len` is 1.
    pub all_decode: bool,
}

/// Checks a batch's index pointers (host side) and the head configuration.
///
/// ```
/// use mllm_kernel::ops::{validate_attention_batch, AttentionHeads};
/// use mllm_kernel::DType;
/// let heads = AttentionHeads { num_heads: 32, num_kv_heads: 8, head_dim: 128, dtype: DType::BF16 };
/// let b = validate_attention_batch(&[0, 1, 4], &[0, 10, 13], heads).unwrap();
/// assert_eq!((b.batch_size, b.total_q, b.total_kv, b.all_decode), (2, 4, 13, false));
/// let err = validate_attention_batch(&[0, 5], &[0, 3], heads).unwrap_err();
/// assert!(err.to_string().contains("qo_len 5 > kv_len 3"));
/// ```
pub fn validate_attention_batch(qo_indptr: &[i32], kv_indptr: &[i32], heads: AttentionHeads) -> Result<AttentionBatch> {
    heads.check()?;
    if qo_indptr.len() < 2 {
        return Err(invalid(
            "qo_indptr",
            format!("needs batch_size + 1 >= 2 entries, got {}", qo_indptr.len()),
        ));
    }
    if kv_indptr.len() != qo_indptr.len() {
        return Err(invalid(
            "kv_indptr",
            format!(
                "has {} entries but qo_indptr has {}: both are batch_size + 1 long",
                kv_indptr.len(),
                qo_indptr.len()
            ),
        ));
    }
    if qo_indptr[0] != 0 || kv_indptr[0] != 0 {
        return Err(invalid(
            if qo_indptr[0] != 0 { "qo_indptr" } else { "kv_indptr" },
            format!(
                "must start at 0, got qo_indptr[0] = {}, kv_indptr[0] = {}",
                qo_indptr[0], kv_indptr[0]
            ),
        ));
    }
    let batch_size = qo_indptr.len() - 1;
    if batch_size > i32::MAX as usize / 4 {
        return Err(invalid("qo_indptr", format!("batch size {batch_size} is too large")));
    }
    let mut all_decode = true;
    for i in 0..batch_size {
        let qo = i64::from(qo_indptr[i + 1]) - i64::from(qo_indptr[i]);
        let kv = i64::from(kv_indptr[i + 1]) - i64::from(kv_indptr[i]);
        if qo < 1 {
            return Err(invalid(
                "qo_indptr",
                format!(
                    "not increasing at sequence {i}: qo_indptr[{i}] = {}, qo_indptr[{}] = {} (every sequence needs >= 1 query)",
                    qo_indptr[i],
                    i + 1,
                    qo_indptr[i + 1]
                ),
            ));
        }
        if kv < qo {
            return Err(invalid(
                "kv_indptr",
                format!("sequence {i} has qo_len {qo} > kv_len {kv}: its new tokens must be in its context"),
            ));
        }
        all_decode &= qo == 1;
    }
    Ok(AttentionBatch {
        batch_size,
        total_q: qo_indptr[batch_size] as usize,
        total_kv: kv_indptr[batch_size] as usize,
        all_decode,
    })
}

/// Sizes and mode of an [`AttentionWorkspace`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceConfig {
    /// Device scratch for split-KV partial outputs (SGLang's default: 128 MiB).
    pub float_bytes: usize,
    /// Device schedule, with a pinned host mirror of the same size.
    pub int_bytes: usize,
    /// Plan for CUDA-graph replay: launch grids depend only on the batch
    /// size, not on the sequence lengths (FlashInfer's `use_cuda_graph`).
    pub cuda_graph: bool,
    /// The kernel for batches of single-row queries (`Auto` becomes what
    /// `MLLM_DECODE_KERNEL` names, if set, when the workspace is made).
    pub decode_kernel: DecodeKernel,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        Self {
            float_bytes: 128 << 20,
            int_bytes: 8 << 20,
            cuda_graph: false,
            decode_kernel: DecodeKernel::Auto,
        }
    }
}

static NEXT_WORKSPACE: AtomicU64 = AtomicU64::new(1);

/// The buffers attention plans and runs in, allocated once and reused: their
/// addresses never change, so captured CUDA graphs stay valid.
///
/// ```no_run
/// use mllm_kernel::ops::{AttentionWorkspace, WorkspaceConfig};
/// let gpu = mllm_kernel::Gpu::new(0)?;
/// let ws = AttentionWorkspace::new(&gpu, WorkspaceConfig::default())?;
/// assert!(!ws.config().cuda_graph);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub struct AttentionWorkspace {
    float_ws: CudaSlice<u8>,
    int_ws: CudaSlice<u8>,
    int_host: PinnedHostSlice<u8>,
    /// Recorded after each plan's host-to-device copy; the next plan waits
    /// for it before rewriting the pinned buffer.
    uploaded: CudaEvent,
    config: WorkspaceConfig,
    ordinal: usize,
    id: u64,
    /// Bumped by every plan; a plan only runs while it is the latest.
    generation: u64,
}

impl AttentionWorkspace {
    /// Allocates the device buffers and the pinned host mirror on `gpu`.
    pub fn new(gpu: &Gpu, config: WorkspaceConfig) -> Result<Self> {
        if config.float_bytes < 1 << 20 || config.int_bytes < 64 << 10 {
            return Err(Error::InvalidArgument {
                op: "AttentionWorkspace::new",
                arg: "config",
                reason: format!(
                    "float_bytes {} and int_bytes {} must be at least 1 MiB and 64 KiB",
                    config.float_bytes, config.int_bytes
                ),
            });
        }
        // Read once here, not on every plan.
        let config = WorkspaceConfig {
            decode_kernel: config.decode_kernel.resolved()?,
            ..config
        };
        let stream = gpu.stream();
        let alloc = |n: usize| {
            stream
                .alloc_zeros::<u8>(n)
                .map_err(Error::driver("allocate attention workspace"))
        };
        let float_ws = alloc(config.float_bytes)?;
        let int_ws = alloc(config.int_bytes)?;
        // SAFETY: plain (not write-combined) pinned bytes, only written by the
        // planner before being read by the copy engine.
        let int_host = unsafe { gpu.context().alloc_pinned_with_flags::<u8>(config.int_bytes, 0) }
            .map_err(Error::driver("allocate pinned attention workspace"))?;
        let uploaded = gpu
            .context()
            .new_event(None)
            .map_err(Error::driver("create attention event"))?;
        uploaded
            .record(stream)
            .map_err(Error::driver("record attention event"))?;
        Ok(Self {
            float_ws,
            int_ws,
            int_host,
            uploaded,
            config,
            ordinal: gpu.context().ordinal(),
            id: NEXT_WORKSPACE.fetch_add(1, Ordering::Relaxed),
            generation: 0,
        })
    }

    pub fn config(&self) -> WorkspaceConfig {
        self.config
    }
}

/// A batch's schedule, made by [`plan_attention`] and valid for every layer
/// of that batch until the workspace is planned again.
#[derive(Debug, Clone)]
pub struct AttentionPlan {
    raw: mllm_attention_plan_t,
    heads: AttentionHeads,
    batch: AttentionBatch,
    kernel: AttentionKernel,
    workspace: u64,
    generation: u64,
}

impl AttentionPlan {
    pub fn heads(&self) -> AttentionHeads {
        self.heads
    }

    pub fn batch(&self) -> AttentionBatch {
        self.batch
    }

    /// The kernel chosen: a decode kernel (the workspace's [`DecodeKernel`])
    /// when every qo_len is 1, else prefill.
    pub fn kernel(&self) -> AttentionKernel {
        self.kernel
    }
}

/// `attention is not supported on sm_75: FlashInfer's FA2 kernels need SM80`.
fn check_arch(gpu: &Gpu) -> Result<()> {
    let arch = gpu.arch();
    if arch.major >= 8 {
        return Ok(());
    }
    Err(Error::UnsupportedArch {
        op: OP,
        arch: arch.to_string(),
        reason: "FlashInfer's FA2 attention kernels need SM80 or newer".into(),
    })
}

fn kernel_build(heads: AttentionHeads) -> Result<KernelBuild> {
    let variant = heads.variant();
    KernelBuild::new(KernelId::Attention, Some(&variant))
}

/// Plans one forward batch: validates the index pointers, picks the decode
/// kernel when every `qo_len` is 1 (else the causal prefill kernel), runs
/// FlashInfer's scheduler on the host and uploads the schedule and the
/// index pointers into `workspace` on the GPU's stream. Plans made earlier
/// with the same workspace become stale.
///
/// ```no_run
/// use mllm_kernel::ops::{self, AttentionHeads, AttentionKernel, AttentionWorkspace, WorkspaceConfig};
/// use mllm_kernel::{DType, Gpu};
/// let gpu = Gpu::new(0)?;
/// let mut ws = AttentionWorkspace::new(&gpu, WorkspaceConfig::default())?;
/// let heads = AttentionHeads { num_heads: 32, num_kv_heads: 8, head_dim: 128, dtype: DType::BF16 };
/// // Two decoding sequences with 100 and 7 context tokens; groups of 4 decode
/// // on the tensor-core (prefill) kernel by default.
/// let plan = ops::plan_attention(&gpu, &mut ws, &[0, 1, 2], &[0, 100, 107], heads)?;
/// assert_eq!(plan.kernel(), AttentionKernel::Prefill);
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
pub fn plan_attention(
    gpu: &Gpu,
    workspace: &mut AttentionWorkspace,
    qo_indptr: &[i32],
    kv_indptr: &[i32],
    heads: AttentionHeads,
) -> Result<AttentionPlan> {
    let batch = validate_attention_batch(qo_indptr, kv_indptr, heads)?;
    check_arch(gpu)?;
    if workspace.ordinal != gpu.context().ordinal() {
        return Err(invalid(
            "workspace",
            format!(
                "is on cuda:{} but the op runs on cuda:{}",
                workspace.ordinal,
                gpu.context().ordinal()
            ),
        ));
    }
    let launcher = gpu.kernel(kernel_build(heads)?)?.attention_plan()?;
    // The previous plan's copy must have read the pinned buffer.
    workspace
        .uploaded
        .synchronize()
        .map_err(Error::driver("wait for the previous attention plan"))?;
    let stream = gpu.stream();
    gpu.context().bind_to_thread().map_err(Error::driver("bind context"))?;
    let config = workspace.config;
    let host = workspace
        .int_host
        .as_mut_ptr()
        .map_err(Error::driver("pinned attention workspace"))?;
    let (float_ptr, _gf) = workspace.float_ws.device_ptr(stream);
    let (int_ptr, _gi) = workspace.int_ws.device_ptr(stream);
    let args = mllm_attention_plan_args_t {
        float_workspace: float_ptr as *mut std::ffi::c_void,
        float_workspace_bytes: config.float_bytes as i64,
        int_workspace: int_ptr as *mut std::ffi::c_void,
        int_host: host as *mut std::ffi::c_void,
        int_workspace_bytes: config.int_bytes as i64,
        qo_indptr: qo_indptr.as_ptr(),
        kv_indptr: kv_indptr.as_ptr(),
        batch_size: batch.batch_size as i32,
        num_qo_heads: heads.num_heads as i32,
        num_kv_heads: heads.num_kv_heads as i32,
        head_dim: heads.head_dim as i32,
        dtype: heads.dtype.to_ffi().expect("bf16/f16 checked by validation"),
        cuda_graph: i32::from(config.cuda_graph),
        decode_kernel: config.decode_kernel.ffi(heads.num_heads / heads.num_kv_heads),
    };
    // SAFETY: all-integer C struct (its enum's zero is MLLM_DTYPE_F32).
    let mut raw: mllm_attention_plan_t = unsafe { std::mem::zeroed() };
    // Earlier plans are stale from here on, even if this one fails halfway
    // (the schedule in the int workspace may already be overwritten).
    workspace.generation += 1;
    // SAFETY: the indptr slices hold batch_size + 1 validated entries; the
    // workspace pointers address buffers of the sizes passed, and the pinned
    // buffer is no longer read by an earlier copy (waited for above).
    let result = unsafe { launcher(&args, &mut raw, stream.cu_stream() as _) };
    ffi_result(OP, result)?;
    workspace
        .uploaded
        .record(stream)
        .map_err(Error::driver("record attention plan upload"))?;
    Ok(AttentionPlan {
        raw,
        heads,
        batch,
        kernel: if raw.prefill != 0 {
            AttentionKernel::Prefill
        } else if raw.split_chunks > 0 {
            AttentionKernel::SplitDecode
        } else {
            AttentionKernel::Decode
        },
        workspace: workspace.id,
        generation: workspace.generation,
    })
}

/// Checks one layer's tensors against a batch and head configuration.
///
/// ```
/// use mllm_kernel::ops::{validate_attention_batch, validate_paged_attention, AttentionHeads, Meta};
/// use mllm_kernel::DType;
/// let heads = AttentionHeads { num_heads: 8, num_kv_heads: 2, head_dim: 64, dtype: DType::F16 };
/// let b = validate_attention_batch(&[0, 1, 2], &[0, 5, 9], heads).unwrap();
/// let q = [2, 8, 64];
/// let kv = [100, 2, 64];
/// let ok = validate_paged_attention(heads, b, Meta::new(&q, DType::F16), Meta::new(&kv, DType::F16),
///     Meta::new(&kv, DType::F16), Meta::new(&[9], DType::I32), Meta::new(&q, DType::F16));
/// assert!(ok.is_ok());
/// let bad = validate_paged_attention(heads, b, Meta::new(&q, DType::F16), Meta::new(&kv, DType::F16),
///     Meta::new(&kv, DType::F16), Meta::new(&[8], DType::I32), Meta::new(&q, DType::F16));
/// assert!(bad.unwrap_err().to_string().contains("kv_indices"));
/// ```
pub fn validate_paged_attention(
    heads: AttentionHeads,
    batch: AttentionBatch,
    q: Meta,
    k_cache: Meta,
    v_cache: Meta,
    kv_indices: Meta,
    out: Meta,
) -> Result<()> {
    heads.check()?;
    let AttentionHeads {
        num_heads: h,
        num_kv_heads: hk,
        head_dim: d,
        dtype,
    } = heads;
    for (arg, m) in [("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)] {
        expect_dtype(OP, arg, dtype, m.dtype)?;
    }
    expect_shape(OP, "q", &[batch.total_q, h, d], q.shape)?;
    expect_shape(OP, "out", &[batch.total_q, h, d], out.shape)?;
    let capacity = match *k_cache.shape {
        [c, kh, kd] if kh == hk && kd == d && c > 0 => c,
        _ => {
            return Err(Error::ShapeMismatch {
                op: OP,
                arg: "k_cache",
                expected: format!("[capacity > 0, {hk}, {d}] ([slots, kv heads, head dim])"),
                got: k_cache.shape.to_vec(),
            })
        }
    };
    expect_shape(OP, "v_cache", k_cache.shape, v_cache.shape)?;
    if capacity > i32::MAX as usize + 1 {
        return Err(invalid(
            "k_cache",
            format!("capacity {capacity} exceeds the i32 slot ids of kv_indices"),
        ));
    }
    expect_dtype(OP, "kv_indices", DType::I32, kv_indices.dtype)?;
    match *kv_indices.shape {
        [n] if n >= batch.total_kv => Ok(()),
        _ => Err(Error::ShapeMismatch {
            op: OP,
            arg: "kv_indices",
            expected: format!("[n] with n >= kv_indptr[B] = {} (slot ids, i32)", batch.total_kv),
            got: kv_indices.shape.to_vec(),
        }),
    }
}

fn check_device(gpu: &Gpu, arg: &'static str, t: &DeviceTensor) -> Result<()> {
    let (want, got) = (gpu.context().ordinal(), t.buffer().ordinal());
    if want == got {
        return Ok(());
    }
    Err(invalid(arg, format!("is on cuda:{got} but the op runs on cuda:{want}")))
}

/// One layer of paged attention into `out` (`[total_q, num_heads, head_dim]`),
/// with the schedule of `plan` (made with this `workspace`). `scale` defaults
/// to `1 / sqrt(head_dim)`. Nothing is allocated: decode steps can be captured
/// in a CUDA graph when the workspace was made with `cuda_graph`.
///
/// ```no_run
/// use mllm_kernel::ops::{self, AttentionHeads, AttentionWorkspace, WorkspaceConfig};
/// use mllm_kernel::{DType, DeviceTensor, Gpu};
/// let gpu = Gpu::new(0)?;
/// let heads = AttentionHeads { num_heads: 4, num_kv_heads: 1, head_dim: 64, dtype: DType::BF16 };
/// let mut ws = AttentionWorkspace::new(&gpu, WorkspaceConfig::default())?;
/// // One sequence: 3 cached tokens in slots 5, 2, 9 plus 2 new ones in 0, 1.
/// let plan = ops::plan_attention(&gpu, &mut ws, &[0, 2], &[0, 5], heads)?;
/// let k = DeviceTensor::zeros(&gpu, &[16, 1, 64], DType::BF16)?;
/// let v = DeviceTensor::zeros(&gpu, &[16, 1, 64], DType::BF16)?;
/// let slots = DeviceTensor::from_host(&gpu, &[5i32, 2, 9, 0, 1], &[5])?;
/// let q = DeviceTensor::zeros(&gpu, &[2, 4, 64], DType::BF16)?;
/// let mut out = DeviceTensor::zeros(&gpu, &[2, 4, 64], DType::BF16)?;
/// ops::paged_attention_into(&gpu, &plan, &ws, &q, &k, &v, &slots, None, &mut out)?;
/// # Ok::<(), mllm_kernel::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_into(
    gpu: &Gpu,
    plan: &AttentionPlan,
    workspace: &AttentionWorkspace,
    q: &DeviceTensor,
    k_cache: &DeviceTensor,
    v_cache: &DeviceTensor,
    kv_indices: &DeviceTensor,
    scale: Option<f32>,
    out: &mut DeviceTensor,
) -> Result<()> {
    validate_paged_attention(
        plan.heads,
        plan.batch,
        q.into(),
        k_cache.into(),
        v_cache.into(),
        kv_indices.into(),
        Meta::from(&*out),
    )?;
    let scale = scale.unwrap_or(1.0 / (plan.heads.head_dim as f32).sqrt());
    if !scale.is_finite() {
        return Err(invalid("scale", format!("must be finite, got {scale}")));
    }
    if plan.workspace != workspace.id {
        return Err(invalid(
            "workspace",
            "is not the workspace this plan was made with".into(),
        ));
    }
    if plan.generation != workspace.generation {
        return Err(invalid(
            "plan",
            "is stale: its workspace was planned again since (plan once per batch, then run every layer)".into(),
        ));
    }
    check_arch(gpu)?;
    for (arg, t) in [
        ("q", q),
        ("k_cache", k_cache),
        ("v_cache", v_cache),
        ("kv_indices", kv_indices),
    ] {
        check_device(gpu, arg, t)?;
    }
    check_device(gpu, "out", out)?;
    if workspace.ordinal != gpu.context().ordinal() {
        return Err(invalid("workspace", "is on another device than the op".into()));
    }
    let launcher = gpu.kernel(kernel_build(plan.heads)?)?.attention_run()?;
    let stream = gpu.stream();
    let (qp, _gq) = q.raw_ptr(stream);
    let (kp, _gk) = k_cache.raw_ptr(stream);
    let (vp, _gv) = v_cache.raw_ptr(stream);
    let (ip, _gi) = kv_indices.raw_ptr(stream);
    let (op, _go) = out.raw_ptr_mut(stream);
    let (fp, _gf) = workspace.float_ws.device_ptr(stream);
    let (wp, _gw) = workspace.int_ws.device_ptr(stream);
    let args = mllm_attention_run_args_t {
        q: qp as *const std::ffi::c_void,
        k_cache: kp as *const std::ffi::c_void,
        v_cache: vp as *const std::ffi::c_void,
        kv_indices: ip as *const i32,
        out: op as *mut std::ffi::c_void,
        float_workspace: fp as *mut std::ffi::c_void,
        int_workspace: wp as *mut std::ffi::c_void,
        sm_scale: scale,
    };
    // SAFETY: every tensor was validated against the plan's batch and heads
    // and lives on this device; the plan is the workspace's latest, so its
    // schedule is what the int workspace holds. Slot ids < capacity are the
    // caller's documented duty.
    let result = unsafe { launcher(&args, &plan.raw, stream.cu_stream() as _) };
    ffi_result(OP, result)
}

/// [`paged_attention_into`] with a newly allocated output.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention(
    gpu: &Gpu,
    plan: &AttentionPlan,
    workspace: &AttentionWorkspace,
    q: &DeviceTensor,
    k_cache: &DeviceTensor,
    v_cache: &DeviceTensor,
    kv_indices: &DeviceTensor,
    scale: Option<f32>,
) -> Result<DeviceTensor> {
    let h = plan.heads;
    let mut out = DeviceTensor::zeros(gpu, &[plan.batch.total_q, h.num_heads, h.head_dim], h.dtype)?;
    paged_attention_into(gpu, plan, workspace, q, k_cache, v_cache, kv_indices, scale, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADS: AttentionHeads = AttentionHeads {
        num_heads: 8,
        num_kv_heads: 2,
        head_dim: 128,
        dtype: DType::BF16,
    };

    fn batch_err(qo: &[i32], kv: &[i32], heads: AttentionHeads) -> String {
        validate_attention_batch(qo, kv, heads).unwrap_err().to_string()
    }

    #[test]
    fn batch_totals_and_kernel_choice() {
        let b = validate_attention_batch(&[0, 1, 2, 3], &[0, 4, 5, 1005], HEADS).unwrap();
        assert_eq!((b.batch_size, b.total_q, b.total_kv, b.all_decode), (3, 3, 1005, true));
        let b = validate_attention_batch(&[0, 1, 9], &[0, 4, 12], HEADS).unwrap();
        assert!(!b.all_decode);
    }

    #[test]
    fn bad_batches_name_the_argument() {
        assert!(batch_err(&[0], &[0], HEADS).contains("qo_indptr"));
        assert!(batch_err(&[0, 1], &[0, 1, 2], HEADS).contains("kv_indptr"));
        assert!(batch_err(&[1, 2], &[0, 3], HEADS).contains("must start at 0"));
        assert!(batch_err(&[0, 2, 1], &[0, 3, 6], HEADS).contains("not increasing at sequence 1"));
        assert!(batch_err(&[0, 0], &[0, 3], HEADS).contains(">= 1 query"));
        assert!(batch_err(&[0, 4], &[0, 3], HEADS).contains("qo_len 4 > kv_len 3"));
        assert!(batch_err(&[0, 1, 2], &[0, 3, 2], HEADS).contains("qo_len 1 > kv_len -1"));
    }

    #[test]
    fn unsupported_heads_say_what_is_supported() {
        let h = AttentionHeads { head_dim: 96, ..HEADS };
        assert!(batch_err(&[0, 1], &[0, 1], h).contains("supported: 64 or 128"));
        let h = AttentionHeads {
            dtype: DType::F32,
            ..HEADS
        };
        assert!(batch_err(&[0, 1], &[0, 1], h).contains("bf16 or f16"));
        let h = AttentionHeads {
            num_heads: 6,
            num_kv_heads: 4,
            ..HEADS
        };
        assert!(batch_err(&[0, 1], &[0, 1], h).contains("multiple of 4 kv heads"));
        let h = AttentionHeads {
            num_kv_heads: 0,
            ..HEADS
        };
        assert!(batch_err(&[0, 1], &[0, 1], h).contains("num_heads"));
        assert_eq!(HEADS.variant(), "d128_bf16");
    }

    #[test]
    fn decode_kernels_parse_and_map_to_the_abi() {
        let split: DecodeKernel = "split-kv".parse().unwrap();
        assert_eq!(split, DecodeKernel::SplitKv);
        assert_eq!(split.ffi(4), mllm_decode_kernel_t::MLLM_DECODE_KERNEL_SPLIT_KV.0 as i32);
        let cluster: DecodeKernel = "split-kv-cluster".parse().unwrap();
        assert_eq!(cluster, DecodeKernel::SplitKvCluster);
        let abi = mllm_decode_kernel_t::MLLM_DECODE_KERNEL_SPLIT_KV_CLUSTER.0 as i32;
        assert_eq!(cluster.ffi(4), abi);
        assert!(!cluster.uses_tensor_cores(4));
        let tc = mllm_decode_kernel_t::MLLM_DECODE_KERNEL_TENSOR_CORES.0 as i32;
        let cc = mllm_decode_kernel_t::MLLM_DECODE_KERNEL_CUDA_CORES.0 as i32;
        assert_eq!((DecodeKernel::Auto.ffi(4), DecodeKernel::Auto.ffi(2)), (tc, cc));
        assert_eq!(DecodeKernel::CudaCores.ffi(8), cc);
        let err = "flash".parse::<DecodeKernel>().unwrap_err().to_string();
        assert!(err.contains("split-kv"), "{err}");
    }

    #[test]
    fn tensors_are_checked_against_the_batch() {
        let b = validate_attention_batch(&[0, 2, 3], &[0, 5, 9], HEADS).unwrap();
        let q = [3, 8, 128];
        let kv = [64, 2, 128];
        let m = |s: &'static [usize], d| Meta::new(s, d);
        let v = |q: Meta, k: Meta, vv: Meta, i: Meta, o: Meta| {
            validate_paged_attention(HEADS, b, q, k, vv, i, o).map_err(|e| e.to_string())
        };
        let (bf, i32t) = (DType::BF16, DType::I32);
        let ok = v(
            m(&[3, 8, 128], bf),
            m(&[64, 2, 128], bf),
            m(&[64, 2, 128], bf),
            m(&[9], i32t),
            m(&[3, 8, 128], bf),
        );
        assert!(ok.is_ok());
        // A larger, preallocated kv_indices buffer is fine.
        assert!(v(
            Meta::new(&q, bf),
            Meta::new(&kv, bf),
            Meta::new(&kv, bf),
            m(&[100], i32t),
            Meta::new(&q, bf)
        )
        .is_ok());
        let e = v(
            m(&[3, 8, 128], DType::F16),
            Meta::new(&kv, bf),
            Meta::new(&kv, bf),
            m(&[9], i32t),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("`q` has dtype f16"));
        let e = v(
            m(&[2, 8, 128], bf),
            Meta::new(&kv, bf),
            Meta::new(&kv, bf),
            m(&[9], i32t),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("`q` has shape [2, 8, 128]"));
        let e = v(
            Meta::new(&q, bf),
            m(&[64, 4, 128], bf),
            Meta::new(&kv, bf),
            m(&[9], i32t),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("k_cache"));
        let e = v(
            Meta::new(&q, bf),
            m(&[0, 2, 128], bf),
            m(&[0, 2, 128], bf),
            m(&[9], i32t),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("capacity > 0"));
        let e = v(
            Meta::new(&q, bf),
            Meta::new(&kv, bf),
            m(&[65, 2, 128], bf),
            m(&[9], i32t),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("v_cache"));
        let e = v(
            Meta::new(&q, bf),
            Meta::new(&kv, bf),
            Meta::new(&kv, bf),
            m(&[9], DType::F32),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("`kv_indices` has dtype f32"));
        let e = v(
            Meta::new(&q, bf),
            Meta::new(&kv, bf),
            Meta::new(&kv, bf),
            m(&[8], i32t),
            Meta::new(&q, bf),
        );
        assert!(e.unwrap_err().contains("kv_indptr[B] = 9"));
        let e = v(
            Meta::new(&q, bf),
            Meta::new(&kv, bf),
            Meta::new(&kv, bf),
            m(&[9], i32t),
            m(&[3, 8, 64], bf),
        );
        assert!(e.unwrap_err().contains("`out` has shape"));
    }

    #[test]
    fn every_variant_is_registered() {
        for d in ATTENTION_HEAD_DIMS {
            for dtype in [DType::BF16, DType::F16] {
                let h = AttentionHeads {
                    head_dim: d,
                    dtype,
                    ..HEADS
                };
                assert!(kernel_build(h).is_ok(), "{}", h.variant());
            }
        }
    }
}
