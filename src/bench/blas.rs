//! The vendor peers of the int8 GEMM benchmark: cuBLASLt int8 (IMMA, int32
//! out, as `torch._int_mm`) and cuBLAS bf16 GEMM, both through cudarc's raw
//! bindings (its safe cuBLASLt wrapper has no int8 matmul). Same layout as
//! ours: `out[M, N] = A[M, K] · W[N, K]ᵀ`, which column-major BLAS sees as
//! `outᵀ = op_T(W) · A` ("TN", the layout IMMA kernels need).

use std::ffi::c_void;

use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::cublaslt::{result as lt, sys as lt_sys};
use cudarc::driver::CudaSlice;

use crate::device::Gpu;
use crate::{Error, Result};

fn blas_err(what: &'static str) -> impl FnOnce(cudarc::cublas::result::CublasError) -> Error {
    move |e| Error::KernelLaunch {
        kernel: "cublas".into(),
        reason: format!("{what}: {e:?}"),
    }
}

fn lt_err(what: &'static str) -> impl FnOnce(cudarc::cublaslt::result::CublasError) -> Error {
    move |e| Error::KernelLaunch {
        kernel: "cublasLt".into(),
        reason: format!("{what}: {e:?}"),
    }
}

/// A cuBLASLt int8 × int8 → int32 matmul planned for one shape.
pub struct LtInt8Gemm {
    handle: lt_sys::cublasLtHandle_t,
    desc: lt_sys::cublasLtMatmulDesc_t,
    layouts: [lt_sys::cublasLtMatrixLayout_t; 3],
    algo: lt_sys::cublasLtMatmulAlgo_t,
    workspace: CudaSlice<u8>,
}

const WORKSPACE: usize = 32 << 20;

impl LtInt8Gemm {
    pub fn new(gpu: &Gpu, m: usize, n: usize, k: usize) -> Result<Self> {
        use lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA;
        use lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES;
        use lt_sys::cudaDataType::{CUDA_R_32I, CUDA_R_8I};
        let handle = lt::create_handle().map_err(lt_err("create handle"))?;
        let desc = lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32I, CUDA_R_32I)
            .map_err(lt_err("matmul desc"))?;
        let trans = blas_sys::cublasOperation_t::CUBLAS_OP_T;
        // SAFETY: desc is live; the attribute is an i32-sized enum.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                CUBLASLT_MATMUL_DESC_TRANSA,
                &trans as *const _ as *const c_void,
                std::mem::size_of_val(&trans),
            )
        }
        .map_err(lt_err("transa"))?;
        let (m, n, k) = (m as u64, n as u64, k as u64);
        let layouts = [
            lt::create_matrix_layout(CUDA_R_8I, k, n, k as i64).map_err(lt_err("layout W"))?,
            lt::create_matrix_layout(CUDA_R_8I, k, m, k as i64).map_err(lt_err("layout A"))?,
            lt::create_matrix_layout(CUDA_R_32I, n, m, n as i64).map_err(lt_err("layout out"))?,
        ];
        let pref = lt::create_matmul_pref().map_err(lt_err("pref"))?;
        let ws = WORKSPACE as u64;
        // SAFETY: live handles; the heuristic writes one result.
        let heuristic = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )
            .map_err(lt_err("pref workspace"))?;
            let h = lt::get_matmul_algo_heuristic(handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], pref);
            lt::destroy_matmul_pref(pref).map_err(lt_err("destroy pref"))?;
            h.map_err(lt_err("no int8 algorithm for this shape"))?
        };
        let workspace = gpu
            .stream()
            .alloc_zeros::<u8>(WORKSPACE)
            .map_err(Error::driver("cublasLt workspace"))?;
        Ok(Self {
            handle,
            desc,
            layouts,
            algo: heuristic.algo,
            workspace,
        })
    }

    /// `out (int32 [M, N]) = a [M, K] · w [N, K]ᵀ` on the GPU's stream.
    pub fn run(&mut self, gpu: &Gpu, a: u64, w: u64, out: u64) -> Result<()> {
        use cudarc::driver::DevicePtrMut;
        let (alpha, beta) = (1i32, 0i32);
        let stream = gpu.stream();
        let (ws, _g) = self.workspace.device_ptr_mut(stream);
        // SAFETY: pointers address tensors of the planned shapes on this
        // stream's device; the workspace guard lives across the call.
        unsafe {
            lt::matmul(
                self.handle,
                self.desc,
                &alpha as *const i32 as *const c_void,
                &beta as *const i32 as *const c_void,
                w as *const c_void,
                self.layouts[0],
                a as *const c_void,
                self.layouts[1],
                out as *const c_void,
                self.layouts[2],
                out as *mut c_void,
                self.layouts[2],
                &self.algo,
                ws as *mut c_void,
                WORKSPACE,
                stream.cu_stream() as _,
            )
        }
        .map_err(lt_err("matmul"))
    }
}

impl Drop for LtInt8Gemm {
    fn drop(&mut self) {
        // SAFETY: created in new() and destroyed once here.
        unsafe {
            for l in self.layouts {
                let _ = lt::destroy_matrix_layout(l);
            }
            let _ = lt::destroy_matmul_desc(self.desc);
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

/// cuBLAS bf16 GEMM with f32 accumulation, bf16 out.
pub struct CublasBf16Gemm {
    handle: blas_sys::cublasHandle_t,
}

impl CublasBf16Gemm {
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let handle = blas::create_handle().map_err(blas_err("create handle"))?;
        // SAFETY: fresh handle; the stream outlives it (owned by gpu).
        unsafe { blas::set_stream(handle, gpu.stream().cu_stream() as _) }.map_err(blas_err("set stream"))?;
        Ok(Self { handle })
    }

    /// `out (bf16 [M, N]) = a [M, K] · w [N, K]ᵀ`.
    pub fn run(&mut self, m: usize, n: usize, k: usize, a: u64, w: u64, out: u64) -> Result<()> {
        use blas_sys::cudaDataType::CUDA_R_16BF;
        let (alpha, beta) = (1f32, 0f32);
        // SAFETY: as for LtInt8Gemm::run.
        unsafe {
            blas::gemm_ex(
                self.handle,
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                &alpha as *const f32 as *const c_void,
                w as *const c_void,
                CUDA_R_16BF,
                k as i32,
                a as *const c_void,
                CUDA_R_16BF,
                k as i32,
                &beta as *const f32 as *const c_void,
                out as *mut c_void,
                CUDA_R_16BF,
                n as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("gemm_ex bf16"))
    }
}

impl Drop for CublasBf16Gemm {
    fn drop(&mut self) {
        // SAFETY: created in new() and destroyed once here.
        unsafe {
            let _ = blas::destroy_handle(self.handle);
        }
    }
}
