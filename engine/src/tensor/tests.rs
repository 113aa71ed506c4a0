use super::*;

/// Small deterministic PRNG (xorshift64*) producing floats in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f32()).collect()
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "index {i}: got {g}, want {w}");
    }
}

#[test]
fn dtype_size_and_name() {
    let all = [DType::F32, DType::BF16, DType::F16, DType::I8, DType::I32, DType::I64];
    let sizes: Vec<usize> = all.iter().map(|d| d.size()).collect();
    assert_eq!(sizes, [4, 2, 2, 1, 4, 8]);
    assert_eq!(DType::BF16.name(), "bf16");
    assert_eq!(DType::I64.to_string(), "i64");
    assert!(DType::F16.is_float() && !DType::I8.is_float());
}

#[test]
fn constructors_and_as_slice() {
    let z = Tensor::zeros(&[2, 3], DType::BF16);
    assert_eq!(z.shape(), [2, 3]);
    assert_eq!(z.numel(), 6);
    assert_eq!(z.as_bytes().len(), 12);
    assert!(z.as_slice::<bf16>().unwrap().iter().all(|v| v.to_f32() == 0.0));

    let t = Tensor::from_vec(vec![1i32, 2, 3, 4], &[2, 2]).unwrap();
    assert_eq!(t.dtype(), DType::I32);
    assert_eq!(t.as_slice::<i32>().unwrap(), [1, 2, 3, 4]);
    let err = t.as_slice::<f32>().unwrap_err();
    assert!(
        matches!(
            err,
            TensorError::DType {
                op: "as_slice",
                got: DType::F32,
                ..
            }
        ),
        "{err}"
    );
    assert!(Tensor::from_vec(vec![1f32; 5], &[2, 2]).is_err());

    let v = [0.5f32, -1.25, 3.0];
    for dt in [DType::F32, DType::BF16, DType::F16] {
        let t = Tensor::from_f32(&v, &[3], dt).unwrap();
        assert_eq!(t.dtype(), dt);
        assert_eq!(t.to_f32_vec().unwrap(), v);
    }
    let t = Tensor::from_f32(&[1.9, -2.9, 7.0], &[3], DType::I64).unwrap();
    assert_eq!(t.as_slice::<i64>().unwrap(), [1, -2, 7]);
}

#[test]
fn to_dtype_roundtrips() {
    let mut rng = Rng(1);
    let v = rng.vec(37);
    let t = Tensor::from_f32(&v, &[37], DType::F32).unwrap();
    let b = t.to_dtype(DType::BF16).unwrap();
    let want: Vec<f32> = v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect();
    assert_eq!(b.to_f32_vec().unwrap(), want);
    let h = b.to_dtype(DType::F16).unwrap();
    assert_eq!(h.to_f32_vec().unwrap(), want); // bf16 values with 8-bit mantissa are exact in f16 here
    let i = Tensor::from_vec(vec![3i8, -4, 100], &[3]).unwrap();
    assert_eq!(i.to_dtype(DType::I64).unwrap().as_slice::<i64>().unwrap(), [3, -4, 100]);
    assert_eq!(
        i.to_dtype(DType::F32).unwrap().as_slice::<f32>().unwrap(),
        [3.0, -4.0, 100.0]
    );
    let back = Tensor::from_vec(vec![1000i64, -1000], &[2])
        .unwrap()
        .to_dtype(DType::I8)
        .unwrap();
    assert_eq!(back.as_slice::<i8>().unwrap(), [127, -128]);
}

#[test]
fn reshape_narrow_cat() {
    let v: Vec<f32> = (0..24).map(|x| x as f32).collect();
    let t = Tensor::from_vec(v.clone(), &[4, 6]).unwrap();
    let r = t.reshape(&[2, 3, 4]).unwrap();
    assert_eq!(r.shape(), [2, 3, 4]);
    let err = t.reshape(&[5, 5]).unwrap_err();
    assert!(matches!(err, TensorError::Shape { op: "reshape", .. }), "{err}");

    let rows = t.narrow_rows(1, 2).unwrap();
    assert_eq!(rows.shape(), [2, 6]);
    assert_eq!(rows.as_slice::<f32>().unwrap(), &v[6..18]);
    // zero-copy: same underlying memory
    assert_eq!(rows.as_bytes().as_ptr(), t.as_bytes()[24..].as_ptr());

    let cols = t.narrow(1, 2, 3).unwrap();
    assert_eq!(cols.shape(), [4, 3]);
    let want: Vec<f32> = (0..4).flat_map(|r| (2..5).map(move |c| (r * 6 + c) as f32)).collect();
    assert_eq!(cols.as_slice::<f32>().unwrap(), want);
    assert_eq!(t.narrow(1, 6, 0).unwrap().shape(), [4, 0]);
    assert!(t.narrow(0, 3, 2).is_err());
    assert!(t.narrow(2, 0, 1).is_err());

    let a = t.narrow_rows(0, 1).unwrap();
    let b = t.narrow_rows(1, 3).unwrap();
    let c = cat(&[&a, &b]).unwrap();
    assert_eq!(c.shape(), [4, 6]);
    assert_eq!(c.as_slice::<f32>().unwrap(), v);
    let other = Tensor::zeros(&[1, 5], DType::F32);
    assert!(matches!(
        cat(&[&a, &other]).unwrap_err(),
        TensorError::Shape { op: "cat", .. }
    ));
    let other = Tensor::zeros(&[1, 6], DType::BF16);
    assert!(matches!(
        cat(&[&a, &other]).unwrap_err(),
        TensorError::DType { op: "cat", .. }
    ));
    assert!(cat(&[]).is_err());
}

fn naive_matmul_t(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for l in 0..k {
                acc += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            out[i * n + j] = acc as f32;
        }
    }
    out
}

#[test]
fn matmul_t_matches_naive() {
    let mut rng = Rng(42);
    let dims = [1usize, 3, 17, 65];
    for &m in &dims {
        for &n in &[1usize, 3, 17, 65, 130] {
            for &k in &dims {
                for dt in [DType::F32, DType::BF16, DType::F16] {
                    let x = rng.vec(m * k);
                    let w = Tensor::from_f32(&rng.vec(n * k), &[n, k], dt).unwrap();
                    let wf = w.to_f32_vec().unwrap(); // reference uses the same rounded weights
                    let xt = Tensor::from_vec(x.clone(), &[m, k]).unwrap();
                    let y = matmul_t(&xt, &w).unwrap();
                    assert_eq!(y.shape(), [m, n]);
                    assert_eq!(y.dtype(), DType::F32);
                    assert_close(y.as_slice::<f32>().unwrap(), &naive_matmul_t(&x, &wf, m, n, k), 1e-4);
                }
            }
        }
    }
}

#[test]
fn matmul_t_batched_and_errors() {
    let mut rng = Rng(7);
    let x = rng.vec(2 * 3 * 5);
    let w = rng.vec(4 * 5);
    let y = matmul_t(
        &Tensor::from_vec(x.clone(), &[2, 3, 5]).unwrap(),
        &Tensor::from_vec(w.clone(), &[4, 5]).unwrap(),
    )
    .unwrap();
    assert_eq!(y.shape(), [2, 3, 4]);
    assert_close(y.as_slice::<f32>().unwrap(), &naive_matmul_t(&x, &w, 6, 4, 5), 1e-5);

    let xt = Tensor::zeros(&[2, 5], DType::F32);
    let err = matmul_t(&xt, &Tensor::zeros(&[4, 6], DType::F32)).unwrap_err();
    assert!(
        matches!(&err, TensorError::Shape { op: "matmul_t", arg: "w", got, .. } if got == &[4, 6]),
        "{err}"
    );
    assert!(err.to_string().contains("[N, 5]"));
    let err = matmul_t(&xt, &Tensor::zeros(&[4, 5, 1], DType::F32)).unwrap_err();
    assert!(matches!(err, TensorError::Shape { arg: "w", .. }));
    let err = matmul_t(&xt, &Tensor::zeros(&[4, 5], DType::I8)).unwrap_err();
    assert!(matches!(
        err,
        TensorError::DType {
            op: "matmul_t",
            arg: "w",
            got: DType::I8,
            ..
        }
    ));
}

#[test]
fn elementwise_ops_match_naive() {
    let mut rng = Rng(3);
    for &(r, c) in &[(1usize, 1usize), (3, 17), (5, 65)] {
        let a = rng.vec(r * c);
        let b = rng.vec(r * c);
        let bias = rng.vec(c);
        let at = Tensor::from_vec(a.clone(), &[r, c]).unwrap();
        let bt = Tensor::from_vec(b.clone(), &[r, c]).unwrap();
        let sum: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        assert_eq!(at.add(&bt).unwrap().as_slice::<f32>().unwrap(), sum);
        let prod: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        assert_eq!(at.mul(&bt).unwrap().as_slice::<f32>().unwrap(), prod);
        let bcast: Vec<f32> = a.iter().enumerate().map(|(i, x)| x + bias[i % c]).collect();
        assert_eq!(
            at.add(&Tensor::from_vec(bias.clone(), &[c]).unwrap())
                .unwrap()
                .as_slice::<f32>()
                .unwrap(),
            bcast
        );
        // bf16 operand
        let bh = Tensor::from_f32(&b, &[r, c], DType::BF16).unwrap();
        let bhf = bh.to_f32_vec().unwrap();
        let sum: Vec<f32> = a.iter().zip(&bhf).map(|(x, y)| x + y).collect();
        assert_eq!(at.add(&bh).unwrap().as_slice::<f32>().unwrap(), sum);

        let silu: Vec<f32> = a.iter().map(|&x| x / (1.0 + (-x).exp())).collect();
        assert_close(at.silu().unwrap().as_slice::<f32>().unwrap(), &silu, 1e-6);

        let mut sm = vec![0f32; r * c];
        for i in 0..r {
            let row = &a[i * c..(i + 1) * c];
            let mx = row.iter().cloned().fold(f32::MIN, f32::max);
            let s: f64 = row.iter().map(|&x| ((x - mx) as f64).exp()).sum();
            for j in 0..c {
                sm[i * c + j] = (((row[j] - mx) as f64).exp() / s) as f32;
            }
        }
        assert_close(at.softmax_last().unwrap().as_slice::<f32>().unwrap(), &sm, 1e-5);

        let am = at.argmax_last().unwrap();
        assert_eq!(am.shape(), [r]);
        let want: Vec<i64> = (0..r)
            .map(|i| {
                let row = &a[i * c..(i + 1) * c];
                (0..c).fold(0, |best, j| if row[j] > row[best] { j } else { best }) as i64
            })
            .collect();
        assert_eq!(am.as_slice::<i64>().unwrap(), want);
    }
    let t = Tensor::from_vec(vec![1f32, 5.0, 5.0, 2.0], &[4]).unwrap();
    assert_eq!(t.argmax_vec().unwrap(), [1]);
    let big = Tensor::from_vec(vec![1000f32, 1000.0], &[2])
        .unwrap()
        .softmax_last()
        .unwrap();
    assert_eq!(big.as_slice::<f32>().unwrap(), [0.5, 0.5]);
}

#[test]
fn rms_norm_matches_hf_numerics() {
    let mut rng = Rng(9);
    let eps = 1e-6f32;
    for &(r, d) in &[(1usize, 1usize), (3, 17), (4, 64)] {
        let x = rng.vec(r * d);
        let w = rng.vec(d);
        for dt in [DType::F32, DType::BF16] {
            let xt = Tensor::from_f32(&x, &[r, d], dt).unwrap();
            let xf = xt.to_f32_vec().unwrap();
            let wt = Tensor::from_f32(&w, &[d], dt).unwrap();
            let wf = wt.to_f32_vec().unwrap();
            let mut want = vec![0f32; r * d];
            for i in 0..r {
                let row = &xf[i * d..(i + 1) * d];
                let ms: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + eps as f64).sqrt();
                for j in 0..d {
                    let mut n = (row[j] as f64 * inv) as f32;
                    if dt == DType::BF16 {
                        n = bf16::from_f32(n).to_f32();
                    }
                    want[i * d + j] = wf[j] * n;
                }
            }
            let got = xt.rms_norm(&wt, eps).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            // bf16 rounding of the normalized value may flip by one ulp on ties between f32/f64 paths
            let tol = if dt == DType::BF16 { 8e-3 } else { 1e-5 };
            assert_close(got.as_slice::<f32>().unwrap(), &want, tol);
        }
    }
    let x = Tensor::zeros(&[2, 4], DType::F32);
    let err = x.rms_norm(&Tensor::zeros(&[3], DType::F32), 1e-6).unwrap_err();
    assert!(
        matches!(
            &err,
            TensorError::Shape {
                op: "rms_norm",
                arg: "weight",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn op_errors_name_op_and_arg() {
    let a = Tensor::zeros(&[2, 3], DType::F32);
    let err = a.add(&Tensor::zeros(&[2, 4], DType::F32)).unwrap_err();
    assert!(
        matches!(
            &err,
            TensorError::Shape {
                op: "add",
                arg: "b",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("[2, 4]"));
    let err = a.mul(&Tensor::zeros(&[2, 3], DType::I32)).unwrap_err();
    assert!(matches!(
        err,
        TensorError::DType {
            op: "mul",
            arg: "b",
            got: DType::I32,
            ..
        }
    ));
    let i = Tensor::zeros(&[3], DType::I64);
    assert!(matches!(i.silu().unwrap_err(), TensorError::DType { op: "silu", .. }));
    assert!(matches!(
        i.softmax_last().unwrap_err(),
        TensorError::DType { op: "softmax", .. }
    ));
    let empty = Tensor::zeros(&[2, 0], DType::F32);
    assert!(matches!(
        empty.argmax_last().unwrap_err(),
        TensorError::Shape { op: "argmax", .. }
    ));
}

#[test]
fn mapped_source_is_zero_copy() {
    let mut bytes = vec![0u8; 3];
    bytes.extend_from_slice(&[0u8; 16]);
    let vals = [1.0f32, 2.0, 3.0, 4.0];
    let mut mm = memmap2::MmapMut::map_anon(4 + 16).unwrap();
    mm[4..20].copy_from_slice(as_bytes(&vals));
    let src = Arc::new(ByteSource::Mapped(mm.make_read_only().unwrap()));
    let t = Tensor::from_mapped(src.clone(), 4, &[2, 2], DType::F32).unwrap();
    assert_eq!(t.as_slice::<f32>().unwrap(), vals);
    let Storage::Cpu(cpu) = t.storage();
    assert!(cpu.is_mapped());
    assert_eq!(t.as_bytes().as_ptr(), src.bytes()[4..].as_ptr());
    // misaligned offset for f32 falls back to a copy
    let t = Tensor::from_mapped(src.clone(), 1, &[2], DType::F32).unwrap();
    assert_eq!(t.as_bytes(), &src.bytes()[1..9]);
    assert!(Tensor::from_mapped(src, 8, &[4], DType::F32).is_err());
}

#[test]
fn from_vec_keeps_its_buffer_and_cat_copies_large_parts_whole() {
    // 3 MiB of bf16: cat's parallel 1 MiB pieces, split across part boundaries.
    let v: Vec<half::bf16> = (0..3 << 20).map(|i| half::bf16::from_f32((i % 251) as f32)).collect();
    let moved = v.clone();
    let ptr = moved.as_ptr() as *const u8;
    let t = Tensor::from_vec(moved, &[3 << 11, 512]).unwrap();
    assert_eq!(t.as_bytes().as_ptr(), ptr, "from_vec moves the Vec in, no copy");
    let rows = t.shape()[0];
    let parts = [
        t.narrow_rows(0, 1000).unwrap(),
        t.narrow_rows(1000, 7).unwrap(),
        t.narrow_rows(1007, rows - 1007).unwrap(),
    ];
    let c = cat(&[&parts[0], &parts[1], &parts[2]]).unwrap();
    assert_eq!(c.shape(), t.shape());
    assert_eq!(c.as_slice::<half::bf16>().unwrap(), &v[..]);
}

/// The GEMV is the batch-invariant kernel (`--enable-deterministic-inference`): row `i` of a
/// batch must be bit-identical to row `i` alone at every row count, where the tiled GEMM's is
/// not (its `K` blocking depends on the rows).
#[test]
fn gemv_rows_do_not_depend_on_the_batch() {
    // K = 333 leaves a tail after the 16-wide vectors; N = 70 a partial group of weight rows.
    let (n, k) = (70, 333);
    let mut rng = Rng(7);
    let (wv, x) = (rng.vec(n * k), rng.vec(100 * k));
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let w = Tensor::from_f32(&wv, &[n, k], dtype).unwrap();
        let gemv = |xs: &[f32]| {
            let xs = Tensor::from_vec(xs.to_vec(), &[xs.len() / k, k]).unwrap();
            gemv_t(&xs, &w).unwrap().to_f32_vec().unwrap()
        };
        let alone: Vec<Vec<f32>> = x.chunks(k).map(gemv).collect();
        // Row counts on both sides of every default crossover (8 GEMV rows, 48 panel rows).
        for m in [2, 3, 5, 9, 17, 48, 100] {
            for (i, row) in gemv(&x[..m * k]).chunks(n).enumerate() {
                let same = row.iter().zip(&alone[i]).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dtype:?}: row {i} of a batch of {m} differs from the row alone");
            }
        }
    }
}
