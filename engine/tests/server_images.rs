//! Image parts in `/v1/chat/completions`, end to end on the CPU. On a tiny Qwen-VL-shaped text
//! model directory (`tests/fixtures/vl_tiny`: a Qwen3 text decoder with a `vision_config`,
//! random weights written next to a copy) every bad image is a 400 naming the part and the
//! numbers, the server keeps serving after each, and a valid image request is validated and
//! tokenized, then refused with 501 (its runner runs text only). A text-only model answers 400
//! "does not accept images". The tiny Qwen3-VL checkpoint (`tests/fixtures/qwen3_vl_model`)
//! answers image chats, streaming and not.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use mllm_engine::generation::{LoadedModel, ModelSource};
use mllm_engine::loader::config::ModelConfig;
use mllm_engine::models::random::random_weights;
use mllm_engine::multimodal::{ImageLimits, LocalMediaRoot, VisionSetup};
use mllm_engine::orchestrator::{Engine, EngineConfig};
use mllm_engine::server::{router, serve_with, AppState, DEFAULT_SHUTDOWN_TIMEOUT};
use mllm_engine::tensor::DType;
use safetensors::tensor::{Dtype as StDtype, TensorView};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

fn fixture_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vl_tiny")
}

/// A copy of the fixture directory with random weights; `vision: false` drops `vision_config`.
fn model_dir(vision: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "config.json",
    ] {
        std::fs::copy(fixture_dir().join(f), dir.path().join(f)).unwrap();
    }
    if !vision {
        let mut cfg: Value = serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
        cfg.as_object_mut().unwrap().remove("vision_config");
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    }
    let cfg = ModelConfig::from_dir(dir.path()).unwrap();
    let weights = random_weights(&cfg, 7, DType::F32).unwrap();
    let bytes: HashMap<String, (Vec<usize>, Vec<u8>)> = weights
        .iter()
        .map(|(k, t)| (k.clone(), (t.shape().to_vec(), t.as_bytes().to_vec())))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, (s, b))| (k.clone(), TensorView::new(StDtype::F32, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _model: Option<tempfile::TempDir>,
}

impl Server {
    /// A server for the fixture model; with `vision`, images are accepted within `limits` and
    /// local files under `media`.
    async fn start(vision: bool, limits: ImageLimits, media: Option<&Path>) -> Self {
        let model = model_dir(vision);
        let mut s = Self::start_dir(model.path(), limits, media).await;
        s._model = Some(model);
        s
    }

    /// A server for the model directory `dir`.
    async fn start_dir(dir: &Path, limits: ImageLimits, media: Option<&Path>) -> Self {
        let loaded = LoadedModel::load(&ModelSource::Dir(dir.to_path_buf()), &Default::default()).unwrap();
        let root = media.map(|m| LocalMediaRoot::new(m).unwrap());
        let setup = VisionSetup::from_model_dir(dir, loaded.tokenizer().ok(), limits, root).unwrap();
        let engine: Arc<Engine> = Engine::start(loaded, EngineConfig::default()).unwrap();
        let state = AppState::new(engine.clone(), Some("tiny-vl".into()), "tiny-vl".into(), None).with_vision(setup);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let task = tokio::spawn(serve_with(
            listener,
            router(state, 4 << 20),
            engine,
            shutdown,
            DEFAULT_SHUTDOWN_TIMEOUT,
        ));
        Self {
            addr,
            stop: Some(stop),
            task,
            _model: None,
        }
    }

    async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (addr, path, body) = (self.addr, path.to_string(), body.to_string());
        let raw = tokio::task::spawn_blocking(move || common::raw_request(addr, "POST", &path, &body, &[]))
            .await
            .unwrap();
        let (status, _, body) = common::split_response(&raw).unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    /// Posts a one-message chat whose user content is `parts`.
    async fn chat(&self, parts: Value) -> (u16, Value) {
        let body = json!({"messages": [{"role": "user", "content": parts}], "max_tokens": 2, "temperature": 0});
        self.post("/v1/chat/completions", &body).await
    }

    /// A text chat must still be answered.
    async fn assert_serving(&self) {
        let (status, body) = self.chat(json!("Hello")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["completion_tokens"], 2, "{body}");
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn data_uri(media_type: &str, bytes: &[u8]) -> String {
    format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn image_part(url: &str) -> Value {
    json!({"type": "image_url", "image_url": {"url": url}})
}

/// `[text, image]`: the image is part 1 of message 0.
fn one_image(url: &str) -> Value {
    json!([{"type": "text", "text": "Describe this"}, image_part(url)])
}

/// Asserts a 400 whose message contains `needle` (and names `param`, when given).
fn assert_400(resp: &(u16, Value), param: Option<&str>, needle: &str) {
    let (status, body) = resp;
    assert_eq!(*status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
    if let Some(p) = param {
        assert_eq!(body["error"]["param"], p, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_are_400s_and_the_server_keeps_serving() {
    let limits = ImageLimits {
        max_images: 2,
        max_bytes: 64 << 10,
        max_pixels: 300 * 300,
    };
    let s = Server::start(true, limits, None).await;
    s.assert_serving().await;
    let p1 = Some("messages[0].content[1]");

    let r = s.chat(one_image("https://example.com/cat.png")).await;
    assert_400(&r, p1, "remote image URLs are not fetched");
    let r = s.chat(one_image("http://10.0.0.1/x.png")).await;
    assert_400(&r, p1, "remote image URLs are not fetched");
    let r = s.chat(one_image("data:image/png;base64,@@@not base64@@@")).await;
    assert_400(&r, p1, "not valid base64");
    let r = s
        .chat(one_image(&data_uri("image/png", b"just some text, not a PNG")))
        .await;
    assert_400(&r, p1, "unsupported image format; send PNG, JPEG or WebP");
    let r = s.chat(one_image(&data_uri("text/plain", &png(8, 8)))).await;
    assert_400(&r, p1, "media type `text/plain`");
    let r = s.chat(one_image(&data_uri("image/png", &png(400, 300)))).await;
    assert_400(&r, p1, "image is 400x300 = 120000 pixels, the limit is 90000 pixels");
    let big: Vec<u8> = std::iter::repeat_n(0u8, 70 << 10).collect();
    let r = s.chat(one_image(&data_uri("image/png", &big))).await;
    assert_400(&r, p1, "the limit is 65536 bytes");
    // A truncated PNG: the header promises more than is there.
    let mut cut = png(64, 64);
    cut.truncate(cut.len() / 2);
    let r = s.chat(one_image(&data_uri("image/png", &cut))).await;
    assert_400(&r, p1, "cannot decode PNG image");
    let three = Value::Array(vec![image_part(&data_uri("image/png", &png(8, 8))); 3]);
    let r = s.chat(three).await;
    assert_400(
        &r,
        Some("messages"),
        "too many images in the request: 3, the limit is 2",
    );
    // Local files are off by default, with or without file://.
    for url in ["/etc/passwd", "file:///etc/passwd", "cat.png"] {
        let r = s.chat(one_image(url)).await;
        assert_400(&r, p1, "local image paths are disabled on this server");
    }
    // Malformed parts.
    let r = s.chat(json!([{"type": "image_url"}])).await;
    assert_400(&r, Some("messages[0].content[0]"), "needs its `image_url.url` field");
    let r = s.chat(json!([{"type": "input_audio", "input_audio": {}}])).await;
    assert_400(
        &r,
        Some("messages[0].content[0]"),
        "unsupported content part type `input_audio`",
    );
    // Placeholder tokens typed as text, with no image.
    let r = s
        .chat(json!("Describe <|vision_start|><|image_pad|><|vision_end|>"))
        .await;
    assert_400(&r, Some("messages"), "image placeholder token(s)");
    // ... or with one image: two placeholders for one image.
    let typed = json!([{"type": "text", "text": "<|vision_start|><|image_pad|><|vision_end|>"},
                       image_part(&data_uri("image/png", &png(64, 64)))]);
    let r = s.chat(typed).await;
    assert_400(
        &r,
        Some("messages"),
        "the prompt has 2 image placeholders but 1 images were given",
    );
    let r = s
        .post("/generate", &json!({"text": "Hello", "image_data": ["x.png"]}))
        .await;
    assert_400(&r, Some("image_data"), "not supported on /generate");
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_images_are_tokenized_then_refused_by_a_text_runner() {
    let media = tempfile::tempdir().unwrap();
    let root = media.path().join("media");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("cat.png"), png(64, 64)).unwrap();
    std::fs::write(media.path().join("secret.png"), png(64, 64)).unwrap();
    let s = Server::start(true, ImageLimits::default(), Some(&root)).await;

    let check_501 = |r: (u16, Value), images: usize, tokens: usize| {
        assert_eq!(r.0, 501, "{}", r.1);
        assert_eq!(r.1["error"]["code"], "images_not_supported");
        let msg = r.1["error"]["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains(&format!("{images} image(s) ({tokens} tokens) are valid")),
            "{msg}"
        );
    };
    // 64x64 → 4 tokens; 200x100 → 160x64 → 10 tokens (the fixture's 128² pixel cap).
    let r = s.chat(one_image(&data_uri("image/png", &png(64, 64)))).await;
    check_501(r, 1, 4);
    let two = json!([image_part(&data_uri("image/png", &png(200, 100))), {"type": "text", "text": "and"},
                     {"type": "image", "image": data_uri("image/png", &png(64, 64))}]);
    check_501(s.chat(two).await, 2, 14);
    // Local files inside the allowed directory, as a relative path, absolute path or file:// URL.
    let abs = root.canonicalize().unwrap().join("cat.png");
    for url in [
        "cat.png".to_string(),
        abs.display().to_string(),
        format!("file://{}", abs.display()),
    ] {
        check_501(s.chat(one_image(&url)).await, 1, 4);
    }
    // ... and nothing outside it.
    let outside = media.path().canonicalize().unwrap().join("secret.png");
    for url in [
        "../secret.png".to_string(),
        "media/../../secret.png".to_string(),
        outside.display().to_string(),
        format!("file://{}", outside.display()),
    ] {
        let r = s.chat(one_image(&url)).await;
        assert_400(
            &r,
            Some("messages[0].content[1]"),
            "outside the allowed local media directory",
        );
    }
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, root.join("link.png")).unwrap();
        let r = s.chat(one_image("link.png")).await;
        assert_400(&r, None, "outside the allowed local media directory");
    }
    s.assert_serving().await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_model_does_not_accept_images() {
    let s = Server::start(false, ImageLimits::default(), None).await;
    let r = s.chat(one_image(&data_uri("image/png", &png(64, 64)))).await;
    assert_400(
        &r,
        Some("messages[0].content[1]"),
        "model `tiny-vl` does not accept images",
    );
    // Without a vision tower, placeholder-looking text is just text.
    let (status, body) = s.chat(json!("Describe <|image_pad|>")).await;
    assert_eq!(status, 200, "{body}");
    s.assert_serving().await;
    s.stop().await;
}

/// `engine/tests/fixtures/qwen3_vl_model`: the tiny random Qwen3-VL checkpoint with a word-level
/// tokenizer whose vision tokens have the checkpoint's ids (248-250).
fn qwen3_vl_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen3_vl_model")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qwen3_vl_answers_image_chats_streaming_and_not() {
    let s = Server::start_dir(&qwen3_vl_dir(), ImageLimits::default(), None).await;
    // 32x48 pixels → a 2x3 grid of merged patches: 6 image tokens.
    let body = |stream: bool| {
        json!({"messages": [{"role": "user", "content": one_image(&data_uri("image/png", &png(32, 48)))}],
               "max_tokens": 4, "temperature": 0, "stream": stream})
    };
    let (status, first) = s.post("/v1/chat/completions", &body(false)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "chat.completion", "{first}");
    assert!(first["choices"][0]["message"]["content"].is_string(), "{first}");
    let prompt_tokens = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 6, "{first}");
    // Same request again (a prefix-cache hit): the same answer.
    let (status, again) = s.post("/v1/chat/completions", &body(false)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["choices"][0]["message"], first["choices"][0]["message"]);
    // Streaming.
    let (status, sse) = s.post("/v1/chat/completions", &body(true)).await;
    assert_eq!(status, 200, "{sse}");
    let sse = sse.as_str().unwrap_or_default().to_string();
    assert!(sse.contains("chat.completion.chunk"), "{sse}");
    assert!(sse.trim_end().ends_with("data: [DONE]"), "{sse}");
    let streamed: String = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(streamed, first["choices"][0]["message"]["content"].as_str().unwrap());
    // A different image, and text alone, are answered too.
    let two = json!([image_part(&data_uri("image/png", &png(64, 32))), {"type": "text", "text": "and"},
                     image_part(&data_uri("image/png", &png(32, 48)))]);
    let (status, body) = s.chat(two).await;
    assert_eq!(status, 200, "{body}");
    s.assert_serving().await;
    s.stop().await;
}
