//! Scale-out on the CPU: two `mllm serve` processes behind sglang-router (`cache_aware`) on
//! loopback, driven the way a client would drive them.
//!
//! Needs the router (`scripts/setup.sh` installs the pinned wheel and exports
//! `$MLLM_SGLANG_ROUTER` in `.toolchain/env.sh`) and the default model, SmolLM2-135M-Instruct
//! (`$MLLM_TEST_GGUF`, else the hub cache). Without either the test prints `SKIPPED` and passes.
//!
//! SLOW (60-100 s on 2 busy cores): the phases share one set of processes, so they run in one test:
//! 64 concurrent chats equal the direct answers; a shared prefix sticks to one worker and hits
//! its radix cache; a worker killed mid-run costs no hung request; the restarted worker gets
//! traffic again.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const MODEL_NAME: &str = "mllm-test";
/// A client that waits this long for an answer reports a hang.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Eight prompts with different first words, so the router's prefix tree sees no shared prefix.
const PROMPTS: [&str; 8] = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Give one synonym for happy.",
    "Which planet is closest to the sun?",
    "Translate 'good morning' into Spanish.",
    "Describe the moon in five words.",
    "Suggest a name for a small brown dog.",
];

const SHARED_SYSTEM: &str = "You are the reference desk of the Harbor Street public library. Answer in \
one short sentence, name the branch that holds the item, and never invent opening hours: Central \
is open 9 to 17, North 10 to 18 and Harbor 12 to 20, closed on public holidays.";

/// A child process killed (SIGKILL) and reaped on drop, so a failing test leaves nothing behind.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(program: &Path, args: &[String], log: PathBuf) -> Self {
        let out = File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Self { child, log }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The last lines of the process's output, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); `Err` on any socket error,
/// including no answer within `timeout`.
fn http(port: u16, method: &str, path: &str, body: Option<&Value>, timeout: Duration) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let (status, _, body) = common::split_response(&raw)?;
    Ok((status, body))
}

fn get_json(port: u16, path: &str) -> Value {
    let (status, body) =
        http(port, "GET", path, None, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

fn chat_body(system: Option<&str>, user: &str, max_tokens: u32) -> Value {
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(json!({"role": "system", "content": s}));
    }
    messages.push(json!({"role": "user", "content": user}));
    json!({"model": MODEL_NAME, "messages": messages, "max_tokens": max_tokens, "temperature": 0})
}

/// POSTs a chat completion; `Ok((status, content or error body))`.
fn chat(port: u16, body: &Value) -> Result<(u16, String), String> {
    let (status, text) = http(port, "POST", "/v1/chat/completions", Some(body), CLIENT_TIMEOUT)?;
    if status != 200 {
        return Ok((status, text));
    }
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .ok_or_else(|| format!("no content in {v}"))?;
    Ok((status, content.to_string()))
}

/// Sends every body at once, one thread each; results in order.
fn chat_all(port: u16, bodies: Vec<Value>) -> Vec<Result<(u16, String), String>> {
    let handles: Vec<_> = bodies
        .into_iter()
        .map(|b| thread::spawn(move || chat(port, &b)))
        .collect();
    handles.into_iter().map(|h| h.join().expect("client thread")).collect()
}

/// A counter from the worker's Prometheus text.
fn metric(port: u16, name: &str) -> f64 {
    let (status, text) = http(port, "GET", "/metrics", None, Duration::from_secs(10)).expect("/metrics");
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} on :{port}"))
}

/// Requests the worker has served, and prompt tokens it took from its radix cache.
fn served(port: u16) -> (f64, f64) {
    (
        metric(port, "mllm_requests_total"),
        metric(port, "mllm_cached_tokens_total"),
    )
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, logs: &[&Proc]) {
    let t = Instant::now();
    while !ok() {
        if t.elapsed() > timeout {
            let tails: Vec<String> = logs
                .iter()
                .map(|p| format!("{}:\n{}", p.log.display(), p.tail()))
                .collect();
            panic!("timed out after {timeout:?} waiting for {what}\n{}", tails.join("\n"));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn healthy(port: u16) -> bool {
    matches!(http(port, "GET", "/health", None, Duration::from_secs(2)), Ok((200, _)))
}

/// The router's opinion of the worker at `port`: `Some(is_healthy)` if registered.
fn router_view(router: u16, port: u16) -> Option<bool> {
    let Ok((200, body)) = http(router, "GET", "/workers", None, Duration::from_secs(5)) else {
        return None;
    };
    let v: Value = serde_json::from_str(&body).ok()?;
    let url = format!("http://127.0.0.1:{port}");
    v["workers"].as_array()?.iter().find(|w| w["url"] == url.as_str())?["is_healthy"].as_bool()
}

fn spawn_worker(model: &Path, port: u16, dir: &Path, tag: &str) -> Proc {
    let args: Vec<String> = [
        "serve",
        "--model",
        &model.display().to_string(),
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--served-model-name",
        MODEL_NAME,
        "--max-running-requests",
        "64",
        // Step 2 compares answers from batches of ~32 with answers computed alone: without
        // batch invariance the CPU kernels sum differently by batch size and near-ties flip.
        "--enable-deterministic-inference",
    ]
    .map(String::from)
    .to_vec();
    Proc::spawn(
        Path::new(env!("CARGO_BIN_EXE_mllm")),
        &args,
        dir.join(format!("worker-{tag}.log")),
    )
}

#[test]
fn two_workers_behind_sglang_router() {
    let Some(router_bin) = std::env::var_os("MLLM_SGLANG_ROUTER").filter(|p| !p.is_empty()) else {
        eprintln!("SKIPPED two_workers_behind_sglang_router: $MLLM_SGLANG_ROUTER is unset (run scripts/setup.sh, then source .toolchain/env.sh)");
        return;
    };
    let router_bin = PathBuf::from(router_bin);
    assert!(
        router_bin.is_file(),
        "$MLLM_SGLANG_ROUTER={} does not exist (re-run scripts/setup.sh)",
        router_bin.display()
    );
    let Some(model) = common::default_model_gguf("two_workers_behind_sglang_router") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb, pr) = (free_port(), free_port(), free_port());
    let a = spawn_worker(&model, pa, dir.path(), "a");
    let mut b = spawn_worker(&model, pb, dir.path(), "b1");
    wait_until(
        "both workers' /health",
        Duration::from_secs(120),
        || healthy(pa) && healthy(pb),
        &[&a, &b],
    );

    // Fast health checks and a short circuit-breaker timeout, so the kill/restart phases are quick.
    let router_args: Vec<String> = [
        "--worker-urls",
        &format!("http://127.0.0.1:{pa}"),
        &format!("http://127.0.0.1:{pb}"),
        "--policy",
        "cache_aware",
        "--host",
        "127.0.0.1",
        "--port",
        &pr.to_string(),
        "--prometheus-host",
        "127.0.0.1",
        "--prometheus-port",
        &free_port().to_string(),
        "--health-check-interval-secs",
        "1",
        "--health-failure-threshold",
        "1",
        "--health-success-threshold",
        "1",
        "--cb-timeout-duration-secs",
        "1",
        "--request-timeout-secs",
        "100",
        "--log-level",
        "warn",
    ]
    .map(String::from)
    .to_vec();
    let router = Proc::spawn(&router_bin, &router_args, dir.path().join("router.log"));
    wait_until(
        "the router to see two healthy workers",
        Duration::from_secs(60),
        || router_view(pr, pa) == Some(true) && router_view(pr, pb) == Some(true),
        &[&router, &a, &b],
    );

    for port in [pa, pb] {
        let info = get_json(port, "/server_info");
        assert_eq!(info["served_model_name"], MODEL_NAME, "/server_info of :{port}: {info}");
        assert_eq!(
            info["enable_deterministic_inference"], true,
            "/server_info of :{port}: {info}"
        );
    }

    // 1. Reference answers, straight from worker A.
    let expected: Vec<String> = PROMPTS
        .iter()
        .map(|p| match chat(pa, &chat_body(None, p, 8)) {
            Ok((200, content)) => content,
            other => panic!("direct request for {p:?}: {other:?}\n{}", a.tail()),
        })
        .collect();

    // 2. 64 concurrent chats through the router: all succeed, each equals the direct answer,
    //    and distinct prompts are spread over both workers.
    let (a0, b0) = (served(pa).0, served(pb).0);
    let bodies = (0..64).map(|i| chat_body(None, PROMPTS[i % 8], 8)).collect();
    for (i, r) in chat_all(pr, bodies).into_iter().enumerate() {
        match r {
            Ok((200, content)) => assert_eq!(content, expected[i % 8], "request {i} ({:?})", PROMPTS[i % 8]),
            other => panic!("request {i} through the router: {other:?}\n{}", router.tail()),
        }
    }
    let (da, db) = (served(pa).0 - a0, served(pb).0 - b0);
    eprintln!(
        "[{:>5.1} s] 64 concurrent chats: worker A served {da}, worker B {db}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(da + db, 64.0, "the workers served {da} + {db} requests");
    assert!(
        da > 0.0 && db > 0.0,
        "cache_aware sent all distinct prompts to one worker: {da} / {db}"
    );

    // 3. Requests sharing a long system prompt stick to one worker and hit its radix cache.
    let (sa, sb) = (served(pa), served(pb));
    for (i, q) in PROMPTS.iter().enumerate() {
        match chat(pr, &chat_body(Some(SHARED_SYSTEM), q, 4)) {
            Ok((200, _)) => {}
            other => panic!("shared-prefix request {i}: {other:?}"),
        }
    }
    let (ea, eb) = (served(pa), served(pb));
    let (ra, rb) = (ea.0 - sa.0, eb.0 - sb.0);
    let hits = (ea.1 - sa.1) + (eb.1 - sb.1);
    eprintln!(
        "[{:>5.1} s] shared prefix: worker A served {ra}, worker B {rb}; {hits} prompt tokens from the radix cache",
        started.elapsed().as_secs_f64()
    );
    assert!(
        (ra, rb) == (8.0, 0.0) || (ra, rb) == (0.0, 8.0),
        "shared-prefix requests split: A {ra}, B {rb}"
    );
    // The system prompt is well over 40 tokens; seven of the eight requests reuse it.
    assert!(
        hits >= 7.0 * 40.0,
        "only {hits} cached prompt tokens for 7 requests sharing the system prompt"
    );

    // 4. Kill worker B mid-run: every request completes through A or gets an HTTP error status;
    //    none hangs (the client gives up after CLIENT_TIMEOUT and that fails the test).
    let bodies: Vec<Value> = (0..24).map(|i| chat_body(None, PROMPTS[i % 8], 16)).collect();
    let clients = thread::spawn(move || chat_all(pr, bodies));
    wait_until(
        "requests in flight on worker B",
        Duration::from_secs(30),
        || metric(pb, "mllm_num_running_reqs") > 0.0,
        &[&b],
    );
    b.kill();
    let t = Instant::now();
    let results = clients.join().unwrap();
    let (mut ok, mut failed) = (0, 0);
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok((200, content)) => {
                assert!(
                    content.starts_with(&expected[i % 8]),
                    "request {i}: {content:?} does not extend {:?}",
                    expected[i % 8]
                );
                ok += 1;
            }
            Ok((status, body)) => {
                assert!(status >= 400, "request {i}: status {status}: {body}");
                failed += 1;
            }
            Err(e) => panic!("request {i} got no HTTP answer after the kill ({e})\n{}", router.tail()),
        }
    }
    eprintln!(
        "[{:>5.1} s] kill mid-run: {ok} completed, {failed} clean errors, all answered {:.1} s after the kill",
        started.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    assert!(ok > 0, "no request completed through the surviving worker");
    wait_until(
        "the router to mark B unhealthy",
        Duration::from_secs(30),
        || router_view(pr, pb) == Some(false),
        &[&router],
    );
    match chat(pr, &chat_body(None, PROMPTS[0], 8)) {
        Ok((200, content)) => assert_eq!(content, expected[0]),
        other => panic!("request with B down: {other:?}"),
    }

    // 5. Restart B on the same port: the router marks it healthy and routes to it again.
    let b = spawn_worker(&model, pb, dir.path(), "b2");
    wait_until("restarted B's /health", Duration::from_secs(120), || healthy(pb), &[&b]);
    wait_until(
        "the router to mark B healthy",
        Duration::from_secs(30),
        || router_view(pr, pb) == Some(true),
        &[&router],
    );
    // Fresh prompts (no prefix in the router's tree) go to the worker with the smaller tree,
    // and the restarted process's counter starts from zero.
    for round in 0..5 {
        let bodies = (0..8)
            .map(|i| chat_body(None, &format!("{round}{i} fresh question {i}: {}", PROMPTS[i]), 4))
            .collect();
        for r in chat_all(pr, bodies) {
            assert!(matches!(r, Ok((200, _))), "after the restart: {r:?}");
        }
        if served(pb).0 > 0.0 {
            eprintln!(
                "[{:>5.1} s] restarted worker B got traffic in round {round}",
                started.elapsed().as_secs_f64()
            );
            return;
        }
    }
    panic!(
        "the restarted worker got no request in 40 through the router\n{}",
        router.tail()
    );
}
