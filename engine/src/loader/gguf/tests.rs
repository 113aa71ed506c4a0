//! Tests: a test-only GGUF writer, round trips, hand-computed dequantization
//! and malformed-input errors.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

// ---------------------------------------------------------------- writer

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (without its type tag).
fn put_value(b: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => b.push(*x),
        GgufValue::I8(x) => b.push(*x as u8),
        GgufValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::Bool(x) => b.push(u8::from(*x)),
        GgufValue::String(s) => put_str(b, s),
        GgufValue::Array { elem_type, values } => {
            put_u32(b, elem_type.id());
            put_u64(b, values.len() as u64);
            for e in values {
                put_value(b, e);
            }
        }
        GgufValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        GgufValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

struct TestTensor {
    name: &'static str,
    ne: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
    /// Overrides the computed (aligned) offset.
    offset: Option<u64>,
}

fn tt(name: &'static str, ne: &[u64], ty: GgmlType, data: Vec<u8>) -> TestTensor {
    TestTensor {
        name,
        ne: ne.to_vec(),
        type_id: ty.id(),
        data,
        offset: None,
    }
}

/// Serializes a GGUF file. `alignment` is the layout alignment; callers that
/// use a non-default one also pass a `general.alignment` key.
fn build(version: u32, kvs: &[(&str, GgufValue)], tensors: &[TestTensor], alignment: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    put_u32(&mut b, version);
    put_u64(&mut b, tensors.len() as u64);
    put_u64(&mut b, kvs.len() as u64);
    for (k, v) in kvs {
        put_str(&mut b, k);
        put_u32(&mut b, v.value_type().id());
        put_value(&mut b, v);
    }
    let mut offsets = Vec::new();
    let mut next = 0u64;
    for t in tensors {
        let off = t.offset.unwrap_or(next);
        offsets.push(off);
        next = (off + t.data.len() as u64).next_multiple_of(alignment);
        put_str(&mut b, t.name);
        put_u32(&mut b, t.ne.len() as u32);
        for &d in &t.ne {
            put_u64(&mut b, d);
        }
        put_u32(&mut b, t.type_id);
        put_u64(&mut b, off);
    }
    let data_start = (b.len() as u64).next_multiple_of(alignment) as usize;
    b.resize(data_start, 0);
    for (t, off) in tensors.iter().zip(offsets) {
        let at = data_start + off as usize;
        if b.len() < at {
            b.resize(at, 0);
        }
        b.truncate(at);
        b.extend_from_slice(&t.data);
    }
    b
}

fn arr(elem_type: GgufValueType, values: Vec<GgufValue>) -> GgufValue {
    GgufValue::Array { elem_type, values }
}

fn s(x: &str) -> GgufValue {
    GgufValue::String(x.to_string())
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("mllm-gguf-test-{}-{tag}-{n}.gguf", std::process::id()))
}

fn open_err(bytes: Vec<u8>) -> GgufError {
    GgufFile::from_bytes(bytes).expect_err("expected an error")
}

fn all_kvs() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", s("llama")),
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60000)),
        ("t.i16", GgufValue::I16(-30000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1.25)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.bool_f", GgufValue::Bool(false)),
        ("t.string", s("héllo wörld")),
        ("t.u64", GgufValue::U64(u64::MAX)),
        ("t.i64", GgufValue::I64(i64::MIN)),
        ("t.f64", GgufValue::F64(-2.5e100)),
        ("llama.context_length", GgufValue::U32(4096)),
        (
            "tokenizer.ggml.tokens",
            arr(GgufValueType::String, vec![s("<s>"), s("</s>"), s(""), s("▁the")]),
        ),
        (
            "t.arr_i32",
            arr(GgufValueType::I32, vec![GgufValue::I32(-1), GgufValue::I32(7)]),
        ),
        (
            "t.arr_f32",
            arr(GgufValueType::F32, vec![GgufValue::F32(0.5), GgufValue::F32(-3.0)]),
        ),
        ("t.arr_empty", arr(GgufValueType::U64, vec![])),
        (
            "t.nested",
            arr(
                GgufValueType::Array,
                vec![
                    arr(GgufValueType::U8, vec![GgufValue::U8(1), GgufValue::U8(2)]),
                    arr(GgufValueType::String, vec![s("x")]),
                ],
            ),
        ),
    ]
}

// ---------------------------------------------------------------- reading

#[test]
fn metadata_of_every_type_round_trips_v3_and_v2() {
    for version in [3, 2] {
        let kvs = all_kvs();
        let f = GgufFile::from_bytes(build(version, &kvs, &[], 32)).unwrap();
        assert_eq!(f.version(), version);
        assert_eq!(f.tensor_count(), 0);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.metadata().len(), kvs.len());
        for ((k, v), (rk, rv)) in kvs.iter().zip(f.metadata()) {
            assert_eq!(k, rk);
            assert_eq!(v, rv);
            assert_eq!(f.get(k), Some(v));
        }
        assert_eq!(f.get_u64("t.u8"), Some(200));
        assert_eq!(f.get_i64("t.i8"), Some(-100));
        assert_eq!(f.get_u64("t.i8"), None);
        assert_eq!(f.get_u64("t.u16"), Some(60000));
        assert_eq!(f.get_i64("t.i16"), Some(-30000));
        assert_eq!(f.get_u64("t.u32"), Some(4_000_000_000));
        assert_eq!(f.get_i64("t.i32"), Some(-2_000_000_000));
        assert_eq!(f.get_f32("t.f32"), Some(1.25));
        assert_eq!(f.get("t.f32").unwrap().as_f64(), Some(1.25));
        assert_eq!(f.get_bool("t.bool"), Some(true));
        assert_eq!(f.get_bool("t.bool_f"), Some(false));
        assert_eq!(f.get_str("t.string"), Some("héllo wörld"));
        assert_eq!(f.get_u64("t.u64"), Some(u64::MAX));
        assert_eq!(f.get_i64("t.u64"), None);
        assert_eq!(f.get_i64("t.i64"), Some(i64::MIN));
        assert_eq!(f.get("t.f64").unwrap().as_f64(), Some(-2.5e100));
        assert_eq!(f.get_str("t.u8"), None);
        assert_eq!(f.get("missing"), None);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get_arch("context_length").and_then(GgufValue::as_usize), Some(4096));
        assert_eq!(
            f.get_str_array("tokenizer.ggml.tokens").unwrap(),
            vec!["<s>", "</s>", "", "▁the"]
        );
        assert_eq!(f.get_str_array("t.arr_i32"), None);
        let a = f.get_array("t.arr_i32").unwrap();
        assert_eq!(a.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(), vec![-1, 7]);
        assert_eq!(f.get_array("t.arr_empty").unwrap().len(), 0);
        let nested = f.get_array("t.nested").unwrap();
        assert_eq!(nested[0].as_array().unwrap()[1], GgufValue::U8(2));
        assert_eq!(nested[1].as_str_array().unwrap(), vec!["x"]);
        assert_eq!(f.get("t.nested").unwrap().value_type(), GgufValueType::Array);
    }
}

#[test]
fn tensors_default_alignment_and_shape() {
    let a = f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    let b = u16_bytes(&[0x3C00, 0xC000, 0x3800]);
    let bytes = build(
        3,
        &[("general.architecture", s("test"))],
        &[
            tt("a", &[3, 2], GgmlType::F32, a.clone()),
            tt("b", &[3], GgmlType::F16, b.clone()),
        ],
        32,
    );
    let f = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);
    let names: Vec<_> = f.tensors().map(|t| t.name().to_string()).collect();
    assert_eq!(names, ["a", "b"]);
    let ta = f.tensor_info("a").unwrap();
    assert_eq!(ta.ne(), &[3, 2]);
    assert_eq!(ta.shape(), vec![2, 3]);
    assert_eq!(ta.n_elements(), 6);
    assert_eq!(ta.n_bytes(), 24);
    assert_eq!(ta.offset(), 0);
    assert_eq!(ta.ggml_type(), GgmlType::F32);
    let tb = f.tensor_info("b").unwrap();
    assert_eq!(tb.offset(), 32);
    assert_eq!(tb.shape(), vec![3]);
    assert_eq!(f.tensor_bytes("a").unwrap(), &a[..]);
    assert_eq!(f.tensor_bytes("b").unwrap(), &b[..]);
    assert_eq!(f.dequantize_f32("a").unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    assert_eq!(f.dequantize_f32("b").unwrap(), vec![1.0, -2.0, 0.5]);
}

#[test]
fn custom_alignment_is_honoured() {
    for align in [8u64, 64, 256] {
        let bytes = build(
            3,
            &[("general.alignment", GgufValue::U32(align as u32))],
            &[
                tt("x", &[1], GgmlType::F32, f32_bytes(&[7.0])),
                tt("y", &[2], GgmlType::F32, f32_bytes(&[8.0, 9.0])),
            ],
            align,
        );
        let f = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(f.alignment(), align);
        assert_eq!(f.data_offset() as u64 % align, 0);
        assert_eq!(f.tensor_info("y").unwrap().offset(), align);
        assert_eq!(f.dequantize_f32("x").unwrap(), vec![7.0]);
        assert_eq!(f.dequantize_f32("y").unwrap(), vec![8.0, 9.0]);
    }
}

#[test]
fn open_reads_a_file_through_mmap() {
    let path = temp_path("open");
    let bytes = build(
        3,
        &[("general.name", s("tiny"))],
        &[tt(
            "w",
            &[2, 2],
            GgmlType::BF16,
            u16_bytes(&[0x3F80, 0xC040, 0x4049, 0x0000]),
        )],
        32,
    );
    std::fs::write(&path, bytes).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.get_str("general.name"), Some("tiny"));
    assert_eq!(f.dequantize_f32("w").unwrap(), vec![1.0, -3.0, 3.140625, 0.0]);
    assert!(format!("{f:?}").contains("tensors: 1"));
    drop(f);
    std::fs::remove_file(&path).unwrap();

    let empty = temp_path("empty");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(GgufFile::open(&empty), Err(GgufError::Truncated { .. })));
    std::fs::remove_file(&empty).unwrap();
}

#[test]
fn missing_file_error_names_the_path() {
    let path = temp_path("does-not-exist");
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, GgufError::Io { .. }));
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

// ---------------------------------------------------------------- dequantization (hand-computed)

#[test]
fn dequant_f32_f16_bf16() {
    let v = dequantize(GgmlType::F32, &f32_bytes(&[1.5, -0.25, 0.0]), 3).unwrap();
    assert_eq!(v, vec![1.5, -0.25, 0.0]);

    // f16: 1.0, -2.0, 0x3555 = 1/3 rounded (0.333251953125), max half, smallest subnormal 2^-24, -0.0.
    let v = dequantize(
        GgmlType::F16,
        &u16_bytes(&[0x3C00, 0xC000, 0x3555, 0x7BFF, 0x0001, 0x8000]),
        6,
    )
    .unwrap();
    assert_eq!(v[..5], [1.0, -2.0, 0.333_251_95, 65504.0, 5.960_464_5e-8]);
    assert!(v[5] == 0.0 && v[5].is_sign_negative());

    // bf16: 1.0, -3.0, pi truncated (3.140625), 0.
    let v = dequantize(GgmlType::BF16, &u16_bytes(&[0x3F80, 0xC040, 0x4049, 0x0000]), 4).unwrap();
    assert_eq!(v, vec![1.0, -3.0, 3.140625, 0.0]);
}

#[test]
fn dequant_q8_0_hand_computed() {
    // Block 0: d = 0.5 (f16 0x3800); block 1: d = -2.0 (f16 0xC000).
    let mut data = vec![0x00, 0x38];
    let q0: [i8; 8] = [-128, -1, 0, 1, 127, 2, -3, 100];
    data.extend(q0.iter().map(|&q| q as u8));
    data.extend([0u8; 24]);
    data.extend([0x00, 0xC0]);
    let mut q1 = [0u8; 32];
    q1[0] = 3;
    q1[31] = (-7i8) as u8;
    data.extend(q1);
    let v = dequantize(GgmlType::Q8_0, &data, 64).unwrap();
    assert_eq!(v[..8], [-64.0, -0.5, 0.0, 0.5, 63.5, 1.0, -1.5, 50.0]);
    assert!(v[8..32].iter().all(|&x| x == 0.0));
    assert_eq!(v[32], -6.0);
    assert_eq!(v[63], 14.0);
    assert!(v[33..63].iter().all(|&x| x == 0.0));
}

/// 16 bytes with low nibble j and high nibble 15 − j.
fn nibble_ramp() -> Vec<u8> {
    (0..16u8).map(|j| j | ((15 - j) << 4)).collect()
}

#[test]
fn dequant_q4_0_hand_computed() {
    // d = 2.0 (f16 0x4000); y[j] = (j − 8)·2, y[16 + j] = (15 − j − 8)·2.
    let mut data = vec![0x00, 0x40];
    data.extend(nibble_ramp());
    let v = dequantize(GgmlType::Q4_0, &data, 32).unwrap();
    let expected = [
        -16.0, -14.0, -12.0, -10.0, -8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, //
        14.0, 12.0, 10.0, 8.0, 6.0, 4.0, 2.0, 0.0, -2.0, -4.0, -6.0, -8.0, -10.0, -12.0, -14.0, -16.0,
    ];
    assert_eq!(v, expected);
}

#[test]
fn dequant_q4_1_hand_computed() {
    // d = 0.5 (0x3800), m = -1.0 (0xBC00); y[j] = j·0.5 − 1, y[16 + j] = (15 − j)·0.5 − 1.
    let mut data = vec![0x00, 0x38, 0x00, 0xBC];
    data.extend(nibble_ramp());
    let v = dequantize(GgmlType::Q4_1, &data, 32).unwrap();
    let expected = [
        -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, //
        6.5, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0,
    ];
    assert_eq!(v, expected);
}

/// A Q4_K super-block with d = 0.5, dmin = 0.25, 6-bit scales
/// sc = [1, 2, 3, 4, 17, 33, 5, 63], mins m = [0, 1, 2, 3, 16, 4, 40, 1]
/// packed by hand, and qs[b] = (b % 16) | (((b / 8) % 16) << 4).
fn q4_k_block() -> Vec<u8> {
    let mut blk = vec![0x00, 0x38, 0x00, 0x34];
    // bytes 0..4: sc0..3 low 6 bits | high 2 bits of sc4..7 (17→1, 33→2, 5→0, 63→3)
    // bytes 4..8: m0..3 | high 2 bits of m4..7 (16→1, 4→0, 40→2, 1→0)
    // bytes 8..12: low nibble of sc4..7 | low nibble of m4..7 << 4
    blk.extend([0x41, 0x82, 0x03, 0xC4, 0x40, 0x01, 0x82, 0x03, 0x01, 0x41, 0x85, 0x1F]);
    blk.extend((0..128u8).map(|b| (b % 16) | (((b / 8) % 16) << 4)));
    assert_eq!(blk.len(), 144);
    blk
}

#[test]
fn dequant_q4_k_hand_computed() {
    let v = dequantize(GgmlType::Q4_K, &q4_k_block(), 256).unwrap();
    // (element, expected): element e is in sub-block k = e / 32, which reads the
    // low (k even) or high (k odd) nibble of byte 32·(k/2) + e % 32;
    // y = 0.5·sc[k]·q − 0.25·m[k].
    let spot = [
        (0, 0.0),      // k0, q0: 0.5·1·0 − 0
        (1, 0.5),      // k0, q1: 0.5·1·1
        (32, -0.25),   // k1, byte 0 high nibble 0: −0.25·1
        (63, 2.75),    // k1, byte 31 high nibble 3: 0.5·2·3 − 0.25
        (71, 10.0),    // k2, byte 39 low nibble 7: 0.5·3·7 − 0.25·2
        (99, 7.25),    // k3, byte 35 high nibble 4: 0.5·4·4 − 0.25·3
        (133, 38.5),   // k4, byte 69 low nibble 5: 0.5·17·5 − 0.25·16
        (160, 131.0),  // k5, byte 64 high nibble 8: 0.5·33·8 − 0.25·4
        (207, 27.5),   // k6, byte 111 low nibble 15: 0.5·5·15 − 0.25·40
        (240, 440.75), // k7, byte 112 high nibble 14: 0.5·63·14 − 0.25
        (255, 472.25), // k7, byte 127 high nibble 15: 0.5·63·15 − 0.25
    ];
    for (e, want) in spot {
        assert_eq!(v[e], want, "element {e}");
    }
    // Every element, from the decoded scales above.
    let sc = [1.0f32, 2.0, 3.0, 4.0, 17.0, 33.0, 5.0, 63.0];
    let m = [0.0f32, 1.0, 2.0, 3.0, 16.0, 4.0, 40.0, 1.0];
    for (e, &got) in v.iter().enumerate() {
        let k = e / 32;
        let b = 32 * (k / 2) + e % 32;
        let q = (if k % 2 == 0 { b % 16 } else { (b / 8) % 16 }) as f32;
        assert_eq!(got, 0.5 * sc[k] * q - 0.25 * m[k], "element {e}");
    }
}

/// A Q6_K super-block: ql[b] = b, qh[c] = 0xE4 (c even) / 0x1B (c odd),
/// scales = [1, −2, 3, −4, …, 15, −16], d = 0.25 (f16 0x3400).
fn q6_k_block() -> Vec<u8> {
    let mut blk: Vec<u8> = (0..128u8).collect();
    blk.extend((0..64).map(|c| if c % 2 == 0 { 0xE4u8 } else { 0x1B }));
    blk.extend((1..=16i8).map(|i| (if i % 2 == 1 { i } else { -i }) as u8));
    blk.extend([0x00, 0x34]);
    assert_eq!(blk.len(), 210);
    blk
}

#[test]
fn dequant_q6_k_hand_computed() {
    let v = dequantize(GgmlType::Q6_K, &q6_k_block(), 256).unwrap();
    // y = 0.25 · scale[e / 16] · (q − 32), q = 4 low bits from ql | 2 high bits from qh << 4.
    let spot = [
        (0, -8.0),    // ql[0] lo 0, qh[0] bits0-1 = 0 → q −32; sc 1
        (5, 5.25),    // ql[5] lo 5, qh[5] bits0-1 = 3 → 53 − 32 = 21; sc 1
        (17, -8.5),   // ql[17] lo 1, qh[17] bits0-1 = 3 → 17; sc −2
        (40, -6.0),   // ql[40] lo 8, qh[8] bits2-3 = 1 → 24 − 32 = −8; sc 3
        (77, -20.0),  // ql[13] hi 0, qh[13] bits4-5 = 1 → −16; sc 5
        (127, 58.0),  // ql[63] hi 3, qh[31] bits6-7 = 0 → −29; sc −8
        (128, -72.0), // ql[64] lo 0, qh[32] bits0-1 = 0 → −32; sc 9
        (200, 13.0),  // ql[72] hi 4, qh[40] bits4-5 = 2 → 36 − 32 = 4; sc 13
        (230, 82.5),  // ql[102] hi 6, qh[38] bits6-7 = 3 → 54 − 32 = 22; sc 15
        (255, 100.0), // ql[127] hi 7, qh[63] bits6-7 = 0 → −25; sc −16
    ];
    for (e, want) in spot {
        assert_eq!(v[e], want, "element {e}");
    }
}

#[test]
fn dequant_through_file_for_every_supported_type() {
    let mut q4_0 = vec![0x00, 0x40];
    q4_0.extend(nibble_ramp());
    let mut q4_1 = vec![0x00, 0x38, 0x00, 0xBC];
    q4_1.extend(nibble_ramp());
    let mut q8_0 = vec![0x00, 0x3C];
    q8_0.extend((0..32u8).map(|i| i.wrapping_sub(16)));
    let tensors = vec![
        tt("f32", &[2], GgmlType::F32, f32_bytes(&[1.0, -1.0])),
        tt("f16", &[2], GgmlType::F16, u16_bytes(&[0x3C00, 0xC000])),
        tt("bf16", &[2], GgmlType::BF16, u16_bytes(&[0x3F80, 0xC040])),
        tt("q8_0", &[32], GgmlType::Q8_0, q8_0),
        tt("q4_0", &[32], GgmlType::Q4_0, q4_0),
        tt("q4_1", &[32], GgmlType::Q4_1, q4_1),
        tt("q4_k", &[256], GgmlType::Q4_K, q4_k_block()),
        tt("q6_k", &[256], GgmlType::Q6_K, q6_k_block()),
    ];
    let f = GgufFile::from_bytes(build(3, &[], &tensors, 32)).unwrap();
    assert_eq!(f.dequantize_f32("f32").unwrap(), vec![1.0, -1.0]);
    assert_eq!(f.dequantize_f32("f16").unwrap(), vec![1.0, -2.0]);
    assert_eq!(f.dequantize_f32("bf16").unwrap(), vec![1.0, -3.0]);
    let q8 = f.dequantize_f32("q8_0").unwrap();
    assert_eq!((q8[0], q8[16], q8[31]), (-16.0, 0.0, 15.0));
    assert_eq!(f.dequantize_f32("q4_0").unwrap()[..2], [-16.0, -14.0]);
    assert_eq!(f.dequantize_f32("q4_1").unwrap()[31], -1.0);
    assert_eq!(f.dequantize_f32("q4_k").unwrap()[240], 440.75);
    assert_eq!(f.dequantize_f32("q6_k").unwrap()[230], 82.5);
}

#[test]
fn dequant_large_q8_0_in_parallel() {
    // 512 rows × 256 columns = 131072 elements (> parallel threshold), 4096 blocks.
    // Block b has d = 1.0 (or −0.5 for odd b) and q[i] = (b + i) mod 256 as i8.
    let (rows, cols) = (512usize, 256usize);
    let n_blocks = rows * cols / 32;
    let mut data = Vec::with_capacity(n_blocks * 34);
    for b in 0..n_blocks {
        data.extend(if b % 2 == 0 { [0x00, 0x3C] } else { [0x00, 0xB8] });
        data.extend((0..32).map(|i| ((b + i) % 256) as u8));
    }
    let f = GgufFile::from_bytes(build(
        3,
        &[],
        &[tt("big", &[cols as u64, rows as u64], GgmlType::Q8_0, data)],
        32,
    ))
    .unwrap();
    assert_eq!(f.tensor_info("big").unwrap().shape(), vec![rows, cols]);
    let v = f.dequantize_f32("big").unwrap();
    assert_eq!(v.len(), rows * cols);
    for (e, &got) in v.iter().enumerate() {
        let (b, i) = (e / 32, e % 32);
        let d = if b % 2 == 0 { 1.0 } else { -0.5 };
        assert_eq!(got, f32::from(((b + i) % 256) as u8 as i8) * d, "element {e}");
    }
}

#[test]
fn dequantize_rejects_wrong_sizes() {
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0; 33], 32),
        Err(GgufError::DataSize { expected: 34, .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q8_0, &[0; 34], 31),
        Err(GgufError::DataSize { .. })
    ));
    assert!(matches!(
        dequantize(GgmlType::Q5_0, &[0; 22], 32),
        Err(GgufError::UnsupportedType { .. })
    ));
}

// ---------------------------------------------------------------- errors

fn valid_file() -> Vec<u8> {
    build(
        3,
        &all_kvs(),
        &[
            tt("a", &[32], GgmlType::Q8_0, vec![1; 34]),
            tt("b", &[4, 2], GgmlType::F32, f32_bytes(&[0.0; 8])),
        ],
        32,
    )
}

#[test]
fn truncation_at_every_byte_is_an_error_not_a_panic() {
    let bytes = valid_file();
    assert!(GgufFile::from_bytes(bytes.clone()).is_ok());
    for len in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..len].to_vec());
        assert!(r.is_err(), "truncated to {len} bytes parsed");
    }
    // Specific points: inside the header, inside metadata, inside tensor data.
    assert!(matches!(open_err(bytes[..3].to_vec()), GgufError::Truncated { .. }));
    assert!(matches!(open_err(bytes[..10].to_vec()), GgufError::Truncated { .. }));
    assert!(matches!(open_err(bytes[..40].to_vec()), GgufError::Truncated { .. }));
    let e = open_err(bytes[..bytes.len() - 1].to_vec());
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "b"),
        "{e}"
    );
}

#[test]
fn bad_magic_and_versions() {
    let mut bytes = valid_file();
    bytes[..4].copy_from_slice(b"GGML");
    let e = open_err(bytes);
    assert!(matches!(e, GgufError::BadMagic { found } if &found == b"GGML"));
    assert!(e.to_string().contains("not a GGUF file"));

    for (version, needle) in [(1u32, "GGUF v1 is obsolete"), (4, "version 4"), (0, "version 0")] {
        let mut bytes = valid_file();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let e = open_err(bytes);
        assert!(matches!(e, GgufError::UnsupportedVersion { version: v } if v == version));
        assert!(e.to_string().contains(needle), "{e}");
    }
}

#[test]
fn unsupported_type_message_names_tensor_and_type() {
    let bytes = build(
        3,
        &[],
        &[tt("blk.0.attn_q.weight", &[256], GgmlType::IQ2_XXS, vec![0; 66])],
        32,
    );
    let f = GgufFile::from_bytes(bytes).unwrap();
    // Raw bytes are still available.
    assert_eq!(f.tensor_bytes("blk.0.attn_q.weight").unwrap().len(), 66);
    let e = f.dequantize_f32("blk.0.attn_q.weight").unwrap_err();
    assert_eq!(
        e.to_string(),
        "tensor `blk.0.attn_q.weight` has GGUF type IQ2_XXS (16), which mllm cannot dequantize; \
         supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K"
    );
}

#[test]
fn unknown_type_id_is_rejected_at_open() {
    let mut t = tt("w", &[4], GgmlType::F32, vec![0; 16]);
    t.type_id = 99;
    let e = open_err(build(3, &[], &[t], 32));
    assert!(matches!(&e, GgufError::UnknownType { tensor, type_id: 99 } if tensor == "w"));
    assert!(e.to_string().contains("`w`") && e.to_string().contains("99"));
    // Removed ids (Q4_2 = 4) are unknown as well.
    let mut t = tt("w", &[4], GgmlType::F32, vec![0; 16]);
    t.type_id = 4;
    assert!(matches!(
        open_err(build(3, &[], &[t], 32)),
        GgufError::UnknownType { type_id: 4, .. }
    ));
}

#[test]
fn oversized_lengths_do_not_allocate_or_panic() {
    // Header with one kv whose key length is u64::MAX.
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, 3);
    put_u64(&mut b, 0);
    put_u64(&mut b, 1);
    put_u64(&mut b, u64::MAX);
    b.extend_from_slice(&[b'a'; 32]);
    let e = open_err(b);
    assert!(
        matches!(e, GgufError::Truncated { needed, .. } if needed == u128::from(u64::MAX)),
        "{e}"
    );

    // A string value with a huge length.
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, 3);
    put_u64(&mut b, 0);
    put_u64(&mut b, 1);
    put_str(&mut b, "k");
    put_u32(&mut b, GgufValueType::String.id());
    put_u64(&mut b, 1 << 60);
    assert!(matches!(open_err(b), GgufError::Truncated { .. }));

    // An array with a huge element count (of strings and of u8).
    for elem in [GgufValueType::String, GgufValueType::U8, GgufValueType::Array] {
        let mut b = b"GGUF".to_vec();
        put_u32(&mut b, 3);
        put_u64(&mut b, 0);
        put_u64(&mut b, 1);
        put_str(&mut b, "tokenizer.ggml.tokens");
        put_u32(&mut b, GgufValueType::Array.id());
        put_u32(&mut b, elem.id());
        put_u64(&mut b, u64::MAX / 2);
        b.extend_from_slice(&[0; 64]);
        let e = open_err(b);
        assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    }

    // Huge kv / tensor counts.
    for (n_tensors, n_kv) in [(0, u64::MAX), (u64::MAX, 0)] {
        let mut b = b"GGUF".to_vec();
        put_u32(&mut b, 3);
        put_u64(&mut b, n_tensors);
        put_u64(&mut b, n_kv);
        b.extend_from_slice(&[0; 64]);
        assert!(matches!(open_err(b), GgufError::Truncated { .. }));
    }

    // A tensor whose dims multiply past u64.
    let e = open_err(build(
        3,
        &[],
        &[tt("huge", &[1 << 40, 1 << 40], GgmlType::F32, vec![])],
        32,
    ));
    assert!(matches!(e, GgufError::ShapeOverflow { .. }), "{e}");
    // A tensor whose byte size is far beyond the file.
    let e = open_err(build(3, &[], &[tt("big", &[1 << 40], GgmlType::F32, vec![0; 4])], 32));
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
}

#[test]
fn deeply_nested_arrays_are_rejected() {
    let mut v = arr(GgufValueType::U8, vec![]);
    for _ in 0..100 {
        v = arr(GgufValueType::Array, vec![v]);
    }
    let e = open_err(build(3, &[("deep", v)], &[], 32));
    assert!(matches!(e, GgufError::ArrayTooDeep { .. }), "{e}");
}

#[test]
fn misaligned_offset_and_out_of_bounds_data() {
    let mut t = tt("w", &[4], GgmlType::F32, vec![0; 16]);
    t.offset = Some(4);
    let e = open_err(build(3, &[], &[t], 32));
    assert!(
        matches!(&e, GgufError::MisalignedOffset { tensor, offset: 4, alignment: 32 } if tensor == "w"),
        "{e}"
    );

    let mut bytes = build(3, &[], &[tt("w", &[4], GgmlType::F32, vec![0; 16])], 32);
    bytes.truncate(bytes.len() - 4);
    let e = open_err(bytes);
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "w"),
        "{e}"
    );
    assert!(e.to_string().contains("`w`"));
}

#[test]
fn row_length_must_be_a_multiple_of_the_block_size() {
    let e = open_err(build(3, &[], &[tt("q", &[33], GgmlType::Q8_0, vec![0; 68])], 32));
    assert!(
        matches!(&e, GgufError::BadRowLength { tensor, row_len: 33, block_size: 32, .. } if tensor == "q"),
        "{e}"
    );
    // ne[0] = 16 with ne[1] = 2 is 32 elements, still not a whole block per row.
    let e = open_err(build(3, &[], &[tt("q", &[16, 2], GgmlType::Q4_K, vec![0; 144])], 32));
    assert!(matches!(e, GgufError::BadRowLength { .. }), "{e}");
}

#[test]
fn missing_tensor_name() {
    let f = GgufFile::from_bytes(valid_file()).unwrap();
    let e = f.tensor_bytes("nope").unwrap_err();
    assert!(matches!(&e, GgufError::TensorNotFound(n) if n == "nope"));
    assert!(e.to_string().contains("`nope`"));
    assert!(matches!(f.dequantize_f32("nope"), Err(GgufError::TensorNotFound(_))));
    assert!(f.tensor_info("nope").is_none());
}

#[test]
fn invalid_metadata_is_rejected() {
    // Duplicate key.
    let e = open_err(build(3, &[("k", GgufValue::U8(1)), ("k", GgufValue::U8(2))], &[], 32));
    assert!(matches!(e, GgufError::DuplicateKey(k) if k == "k"));
    // Duplicate tensor.
    let t = || tt("w", &[1], GgmlType::F32, vec![0; 4]);
    assert!(matches!(
        open_err(build(3, &[], &[t(), t()], 32)),
        GgufError::DuplicateTensor(_)
    ));
    // Bad alignment values.
    for v in [
        GgufValue::U32(0),
        GgufValue::U32(3),
        GgufValue::String("32".into()),
        GgufValue::I32(-32),
    ] {
        let e = open_err(build(3, &[("general.alignment", v)], &[], 32));
        assert!(matches!(e, GgufError::InvalidAlignment(_)), "{e}");
    }
    // Invalid value type id 13.
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, 3);
    put_u64(&mut b, 0);
    put_u64(&mut b, 1);
    put_str(&mut b, "k");
    put_u32(&mut b, 13);
    b.extend_from_slice(&[0; 16]);
    assert!(matches!(open_err(b), GgufError::InvalidValueType { type_id: 13, .. }));
    // Invalid bool byte.
    let mut bytes = build(3, &[("b", GgufValue::Bool(true))], &[], 32);
    let at = 24 + 8 + 1 + 4;
    assert_eq!(bytes[at], 1);
    bytes[at] = 2;
    assert!(matches!(open_err(bytes), GgufError::InvalidBool { byte: 2, .. }));
    // Non-UTF-8 key.
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, 3);
    put_u64(&mut b, 0);
    put_u64(&mut b, 1);
    put_u64(&mut b, 2);
    b.extend_from_slice(&[0xFF, 0xFE]);
    put_u32(&mut b, 0);
    b.push(0);
    assert!(matches!(open_err(b), GgufError::InvalidUtf8 { .. }));
    // Too many dims.
    let e = open_err(build(
        3,
        &[],
        &[tt("w", &[1, 1, 1, 1, 1], GgmlType::F32, vec![0; 4])],
        32,
    ));
    assert!(matches!(e, GgufError::TooManyDims { n_dims: 5, .. }), "{e}");
}

#[test]
fn ggml_type_table() {
    for id in 0..64 {
        if let Some(t) = GgmlType::from_id(id) {
            assert_eq!(t.id(), id);
        }
    }
    assert_eq!(GgmlType::from_id(16), Some(GgmlType::IQ2_XXS));
    assert_eq!(GgmlType::from_id(4), None);
    assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
    assert_eq!(GgmlType::Q6_K.bytes_for(100), None);
    assert!(GgmlType::SUPPORTED.iter().all(|t| t.can_dequantize()));
    assert!(!GgmlType::Q5_K.can_dequantize());
    for id in 0..13 {
        assert_eq!(GgufValueType::from_id(id).unwrap().id(), id);
    }
    assert_eq!(GgufValueType::from_id(13), None);
}
