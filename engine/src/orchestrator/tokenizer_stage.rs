//! The tokenizer stage: chat-template rendering and encoding, run on blocking threads so the
//! async handlers never tokenize on the runtime. A chat with images also has its images loaded,
//! decoded and preprocessed here, and its placeholders expanded ([`tokenize_with_images`]).

use std::sync::Arc;

use crate::multimodal::{MultimodalInputs, VisionSetup};
use crate::tokenizer::{ChatMessage, Tokenizer};

/// What to tokenize.
#[derive(Debug, Clone)]
pub enum PromptInput {
    /// Plain text, encoded with special tokens (BOS) as the tokenizer adds them.
    Text(String),
    /// A conversation rendered with the model's chat template; `extra` holds template kwargs
    /// such as `enable_thinking` and `tools`.
    Chat {
        /// The messages.
        messages: Vec<ChatMessage>,
        /// Extra template variables (a JSON object).
        extra: Option<serde_json::Value>,
        /// Append the assistant turn opener.
        add_generation_prompt: bool,
        /// Continue the last message: the rendering is cut right after its content.
        continue_final_message: bool,
    },
}

/// Errors of the tokenizer stage; each becomes a 400 naming `param`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TokenizeError {
    /// The request field at fault (`messages`, `prompt`, `messages[0].content[1]`, ...).
    pub param: String,
    /// What went wrong.
    pub message: String,
}

/// One image of a chat request: its URL and where it was in the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `image_url.url` (or `image`) as sent.
    pub url: String,
    /// The field, e.g. `messages[0].content[1]`.
    pub param: String,
}

/// [`tokenize`] for a chat whose messages hold the image parts `images` (in prompt order), on
/// a blocking thread: each image is loaded, decoded and preprocessed by `vision`, the chat is
/// rendered and encoded, and each image's `<|image_pad|>` is expanded to its token count.
/// `max_tokens` bounds the expanded prompt (images are refused before resizing when they
/// alone would not fit).
pub async fn tokenize_with_images(
    tokenizer: Option<Arc<Tokenizer>>,
    input: PromptInput,
    images: Vec<ImageRef>,
    vision: Arc<VisionSetup>,
    max_tokens: usize,
) -> Result<(Vec<u32>, MultimodalInputs), TokenizeError> {
    let Some(tok) = tokenizer else {
        return Err(TokenizeError {
            param: "messages".into(),
            message: "the model has no tokenizer (random weights); images need one".into(),
        });
    };
    let job = tokio::task::spawn_blocking(move || tokenize_images_blocking(&tok, &input, &images, &vision, max_tokens));
    job.await.unwrap_or_else(|e| {
        Err(TokenizeError {
            param: "messages".into(),
            message: format!("tokenizer failed: {e}"),
        })
    })
}

/// The synchronous body of [`tokenize_with_images`].
pub fn tokenize_images_blocking(
    tok: &Tokenizer,
    input: &PromptInput,
    images: &[ImageRef],
    vision: &VisionSetup,
    max_tokens: usize,
) -> Result<(Vec<u32>, MultimodalInputs), TokenizeError> {
    if let Err(e) = vision.limits.check_count(images.len()) {
        return Err(TokenizeError {
            param: "messages".into(),
            message: e.to_string(),
        });
    }
    let mut budget = max_tokens;
    let mut prepared = Vec::with_capacity(images.len());
    for image in images {
        let (patches, hash) = vision.prepare(&image.url, budget).map_err(|e| TokenizeError {
            param: image.param.clone(),
            message: format!("{}: {e}", image.param),
        })?;
        budget = budget.saturating_sub(patches.grid.num_tokens(vision.processor.merge_size));
        prepared.push((patches, hash));
    }
    let ids = tokenize_blocking(tok, input)?;
    MultimodalInputs::expand(&ids, prepared, vision.tokens, vision.processor.merge_size).map_err(|e| TokenizeError {
        param: "messages".into(),
        message: format!("{e} (the chat template must write one <|vision_start|><|image_pad|><|vision_end|> per image part, and text must not contain these tokens)"),
    })
}

/// Renders (for chats) and encodes `input` on a blocking thread.
pub async fn tokenize(tokenizer: Option<Arc<Tokenizer>>, input: PromptInput) -> Result<Vec<u32>, TokenizeError> {
    let param = match input {
        PromptInput::Text(_) => "prompt",
        PromptInput::Chat { .. } => "messages",
    };
    let Some(tok) = tokenizer else {
        return Err(TokenizeError {
            param: param.into(),
            message: "the model has no tokenizer (random weights); send input_ids to /generate".into(),
        });
    };
    let job = tokio::task::spawn_blocking(move || tokenize_blocking(&tok, &input));
    job.await.unwrap_or_else(|e| {
        Err(TokenizeError {
            param: param.into(),
            message: format!("tokenizer failed: {e}"),
        })
    })
}

/// The synchronous body of [`tokenize`].
pub fn tokenize_blocking(tok: &Tokenizer, input: &PromptInput) -> Result<Vec<u32>, TokenizeError> {
    match input {
        PromptInput::Text(text) => tok.encode(text, true).map_err(|e| TokenizeError {
            param: "prompt".into(),
            message: e.to_string(),
        }),
        PromptInput::Chat {
            messages,
            extra,
            add_generation_prompt,
            continue_final_message,
        } => {
            let bad = |message: String| TokenizeError {
                param: "messages".into(),
                message,
            };
            let template = tok
                .chat_template()
                .ok_or_else(|| bad("the model has no chat template; use /v1/completions".into()))?;
            let add_prompt = *add_generation_prompt && !*continue_final_message;
            let mut text = template
                .render(messages, add_prompt, extra.as_ref())
                .map_err(|e| bad(format!("chat template: {e}")))?;
            if *continue_final_message {
                text = cut_after_final_message(text, messages).map_err(bad)?;
            }
            tok.encode(&text, false).map_err(|e| bad(e.to_string()))
        }
    }
}

/// The rendering up to the end of the last message's content, so generation continues that
/// message (the template's end-of-turn markup after it is dropped).
fn cut_after_final_message(mut text: String, messages: &[ChatMessage]) -> Result<String, String> {
    let last = messages.last().map(|m| m.content.as_str()).unwrap_or_default();
    if last.is_empty() {
        return Err("continue_final_message needs a last message with content".into());
    }
    let end = text
        .rfind(last)
        .ok_or("continue_final_message: the chat template changed the last message's text")?
        + last.len();
    text.truncate(end);
    Ok(text)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use base64::Engine;

    use super::*;
    use crate::multimodal::{ImageLimits, IMAGE_KEY_BASE};
    use crate::tokenizer::ContentPart;

    fn fixture() -> (Tokenizer, VisionSetup) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vl_tiny");
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let limits = ImageLimits {
            max_images: 3,
            ..ImageLimits::default()
        };
        let vision = VisionSetup::from_model_dir(&dir, Some(&tok), limits, None)
            .unwrap()
            .unwrap();
        (tok, vision)
    }

    fn png_uri(width: u32, height: u32, shade: u8) -> String {
        let mut png = Vec::new();
        image::RgbImage::from_pixel(width, height, image::Rgb([shade, 0, 0]))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        )
    }

    fn chat(parts: Vec<ContentPart>) -> PromptInput {
        PromptInput::Chat {
            messages: vec![ChatMessage::with_parts("user", parts)],
            extra: None,
            add_generation_prompt: true,
            continue_final_message: false,
        }
    }

    fn refs(urls: &[String]) -> Vec<ImageRef> {
        urls.iter()
            .enumerate()
            .map(|(i, u)| ImageRef {
                url: u.clone(),
                param: format!("messages[0].content[{i}]"),
            })
            .collect()
    }

    #[test]
    fn images_are_expanded_to_their_grid_token_counts() {
        let (tok, vision) = fixture();
        let t = vision.tokens;
        let text = |s: &str| ContentPart::Text { text: s.into() };
        let input = chat(vec![
            text("Compare "),
            ContentPart::Image,
            text(" and "),
            ContentPart::Image,
        ]);
        // 64x64 is the fixture's minimum (4 tokens); 200x100 is over its maximum and resizes to
        // 160x64 → 10x4 patches → 5x2 = 10 tokens.
        let urls = [png_uri(64, 64, 1), png_uri(200, 100, 2)];
        let (ids, mm) = tokenize_images_blocking(&tok, &input, &refs(&urls), &vision, 1000).unwrap();
        assert_eq!(mm.images.len(), 2);
        assert_eq!(mm.images[0].token_range.len(), 4);
        assert_eq!(mm.images[1].token_range.len(), 10);
        assert_eq!(
            mm.grids().iter().map(|g| (g.t, g.h, g.w)).collect::<Vec<_>>(),
            [(1, 4, 4), (1, 4, 10)]
        );
        for im in &mm.images {
            let r = im.token_range.clone();
            assert!(ids[r.clone()].iter().all(|&id| id == t.image_pad));
            assert_eq!((ids[r.start - 1], ids[r.end]), (t.vision_start, t.vision_end));
            assert_eq!(im.patches.pixel_values.len(), im.patches.grid.num_patches() * 1536);
        }
        assert_eq!(ids.iter().filter(|&&id| id == t.image_pad).count(), 14);
        assert_ne!(mm.images[0].hash, mm.images[1].hash);
        let key = mm.radix_key(&ids);
        assert!(key[mm.images[1].token_range.clone()]
            .iter()
            .all(|&k| k >= IMAGE_KEY_BASE));
        // The rendered text around the images is the template's.
        let shown = tok.decode(&ids[..mm.images[0].token_range.start], false).unwrap();
        assert!(shown.contains("user"), "{shown}");
    }

    #[test]
    fn image_errors_name_the_part_and_the_numbers() {
        let (tok, vision) = fixture();
        let one = chat(vec![ContentPart::Image]);
        let run = |urls: &[String], budget| tokenize_images_blocking(&tok, &one, &refs(urls), &vision, budget);
        let err = run(&[png_uri(64, 64, 0)], 3).unwrap_err();
        assert_eq!(err.param, "messages[0].content[0]");
        assert!(err.message.contains("needs 4 tokens but only 3"), "{}", err.message);
        let err = run(&["data:image/png;base64,%%%".into()], 100).unwrap_err();
        assert!(
            err.message
                .starts_with("messages[0].content[0]: data: URI payload is not valid base64"),
            "{}",
            err.message
        );
        let err = run(
            &[format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode("text")
            )],
            100,
        )
        .unwrap_err();
        assert!(err.message.contains("unsupported image format"), "{}", err.message);
        let four = vec![png_uri(64, 64, 0); 4];
        let err = run(&four, 100).unwrap_err();
        assert_eq!(err.message, "too many images in the request: 4, the limit is 3");
        // One image part but two images (or a pad token typed as text): count mismatch, a 400.
        let two = vec![png_uri(64, 64, 0); 2];
        let err = run(&two, 100).unwrap_err();
        assert!(
            err.message
                .starts_with("the prompt has 1 image placeholders but 2 images"),
            "{}",
            err.message
        );
    }

    use super::cut_after_final_message;

    #[test]
    fn continuing_cuts_the_end_of_turn_markup() {
        let msgs = [
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "The answer is"),
        ];
        let text = "<|user|>Hi<|end|><|assistant|>The answer is<|end|>\n".to_string();
        assert_eq!(
            cut_after_final_message(text, &msgs).unwrap(),
            "<|user|>Hi<|end|><|assistant|>The answer is"
        );
        let err = cut_after_final_message("x".into(), &msgs).unwrap_err();
        assert!(err.contains("changed"), "{err}");
    }
}
