//! The `mllm` binary: version, flag errors, unimplemented commands and `bench-one-batch` on
//! dummy weights.

use std::process::{Command, Output};

fn mllm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mllm"))
        .args(args)
        .env("MLLM_OFFLINE", "1")
        .output()
        .expect("running mllm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn version() {
    let o = mllm(&["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.starts_with("mllm 0."), "{out}");
    assert!(out.contains("mllm-kernel"), "{out}");
}

#[test]
fn bad_values_are_named() {
    let o = mllm(&["generate", "--prompt", "hi", "--temperature", "-0.5"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("invalid --temperature -0.5: must be"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    let o = mllm(&["generate", "--prompt", "hi", "--top-p", "0"]);
    assert!(stderr(&o).contains("invalid --top-p 0"), "{}", stderr(&o));

    let o = mllm(&["generate", "--prompt", "hi", "--model", "/no/such/model.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("invalid --model") && err.contains("/no/such/model.gguf"),
        "{err}"
    );

    let o = mllm(&["generate", "--prompt", "hi", "--max-tokens", "many"]);
    assert_eq!(o.status.code(), Some(2)); // clap usage error
    assert!(stderr(&o).contains("--max-tokens"), "{}", stderr(&o));

    let o = mllm(&[SMALL_BENCH.as_slice(), &["--load-format", "dummy"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs --config"), "{}", stderr(&o));
}

#[test]
fn serve_rejects_a_missing_model() {
    let o = mllm(&["serve", "--port", "0", "--model", "/no/such/model.gguf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid --model"), "{}", stderr(&o));
}

/// bench-one-batch's shape flags for a one-sequence run of a few tokens.
const SMALL_BENCH: [&str; 7] = [
    "bench-one-batch",
    "--batch-size",
    "1",
    "--input-len",
    "4",
    "--output-len",
    "2",
];

const TINY_CONFIG: &str = r#"{"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
    "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "vocab_size": 256, "rms_norm_eps": 1e-6, "max_position_embeddings": 64,
    "tie_word_embeddings": true}"#;

#[test]
fn kernel_timeline_needs_a_cuda_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, TINY_CONFIG).unwrap();
    let timeline = dir.path().join("timeline.csv");
    let flags = [
        "--config",
        config.to_str().unwrap(),
        "--load-format",
        "dummy",
        "--device",
        "cpu",
        "--kernel-timeline",
        timeline.to_str().unwrap(),
    ];
    let o = mllm(&[SMALL_BENCH.as_slice(), &flags].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("needs --device cuda"), "{}", stderr(&o));
    assert!(!timeline.exists());
}

#[test]
fn bench_one_batch_dummy_writes_records() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, TINY_CONFIG).unwrap();
    let out_file = dir.path().join("bench.jsonl");
    let config = config.to_str().unwrap();
    let base = [
        "bench-one-batch",
        "--batch-size",
        "3",
        "--input-len",
        "7",
        "--output-len",
        "5",
        "--config",
        config,
        "--load-format",
        "dummy",
        "--warmup",
        "1",
        "--repeats",
        "2",
        "--json",
        "--out",
        out_file.to_str().unwrap(),
    ];
    let o = mllm(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), stdout);
    for (i, r) in lines.iter().enumerate() {
        assert_eq!(r["repeat"], i);
        assert_eq!(
            (
                r["batch_size"].as_u64(),
                r["input_len"].as_u64(),
                r["output_len"].as_u64()
            ),
            (Some(3), Some(7), Some(5))
        );
        assert_eq!(r["bench"], "bench-one-batch");
        assert!(r["commit"].as_str().is_some_and(|c| !c.is_empty()), "{r}");
        assert_eq!(r["device"]["kind"], "cpu");
        assert!(r["device"]["cores"].as_u64().unwrap() >= 1);
        // MLLM_* overrides are recorded (this test's runner sets MLLM_OFFLINE).
        assert_eq!(r["env"]["MLLM_OFFLINE"], "1", "{r}");
        assert!(r["model"].as_str().unwrap().starts_with("Qwen3ForCausalLM"), "{r}");
        assert_eq!(
            (r["format"].as_str(), r["quant"].as_str()),
            (Some("dummy"), Some("f32"))
        );
        assert!(
            r["command"]
                .as_str()
                .unwrap()
                .contains("bench-one-batch --batch-size 3"),
            "{r}"
        );
        assert_eq!(r["temperature"], 0.0);
        assert_eq!(r["radix_cache"], false);
        assert_eq!(r["cuda_graph"], false);
        assert_eq!(r["overlap_schedule"], true);
        assert_eq!(r["jit_compile_included"], false);
        let t = &r["timings"];
        for k in [
            "prefill_latency_s",
            "prefill_throughput_tok_s",
            "decode_median_latency_s",
            "decode_throughput_tok_s",
        ] {
            assert!(t[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
        }
    }
    // Steps read one at a time: the same record, flagged.
    let o = mllm(&[&base[..], &["--disable-overlap-schedule"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let last = String::from_utf8(o.stdout).unwrap();
    let r: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    assert_eq!(r["overlap_schedule"], false, "{r}");
    assert!(
        r["timings"]["decode_median_latency_s"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{r}"
    );
    // Past the context window: a clear error, no panic.
    let mut long = base.to_vec();
    long[4] = "60";
    let o = mllm(&long);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("exceeds the model's context window of 64"),
        "{}",
        stderr(&o)
    );
}
