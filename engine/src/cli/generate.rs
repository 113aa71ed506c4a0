//! `mllm generate`: one prompt, streamed to stdout, stats on stderr.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Args;

use super::model_args::ModelArgs;
use crate::executor::sampler::{SamplingError, SamplingParams};
use crate::generation::{FinishReason, GenerateOutput, GenerateRequest, GeneratorTarget};
use crate::tokenizer::Tokenizer;

/// Arguments of `mllm generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    /// The prompt (the user message with --chat).
    #[arg(long)]
    pub prompt: String,
    /// Which model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Wrap the prompt in the model's chat template (with the generation prompt).
    #[arg(long)]
    pub chat: bool,
    /// A system message (needs --chat).
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Most tokens to generate (at least 1).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Stop before this string (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Keep generating after an end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Sampling.
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Sampling flags (checked by [`SamplingParams::validate`]).
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// Softmax temperature; 0 = greedy (the default, deterministic).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Keep the K most likely tokens (0 or -1: off).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub top_k: i32,
    /// Nucleus sampling mass in (0, 1] (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens below P times the top probability, in [0, 1] (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub min_p: f32,
    /// HF repetition penalty, > 0 (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// OpenAI frequency penalty in [-2, 2].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// OpenAI presence penalty in [-2, 2].
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// RNG seed (same seed, same output).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Print each generated token's logprob and the top N alternatives on stderr.
    #[arg(long, value_name = "N")]
    pub logprobs: Option<usize>,
}

impl SamplingArgs {
    /// Validated sampling parameters; errors name the flag.
    ///
    /// ```
    /// use clap::Parser;
    /// use mllm_engine::cli::{Cli, Command};
    /// let cli = Cli::try_parse_from(["mllm", "generate", "--prompt", "x", "--temperature", "-1"]).unwrap();
    /// let Command::Generate(args) = cli.command else { unreachable!() };
    /// let err = args.sampling.params().unwrap_err().to_string();
    /// assert!(err.starts_with("invalid --temperature -1"), "{err}");
    /// ```
    pub fn params(&self) -> anyhow::Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            seed: self.seed,
            logprobs: self.logprobs,
        };
        match p.validate() {
            Ok(()) => Ok(p),
            Err(SamplingError::InvalidParam { param, value, expected }) => {
                bail!("invalid --{} {value}: must be {expected}", param.replace('_', "-"))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs `mllm generate`.
pub(crate) fn run(args: &GenerateArgs) -> anyhow::Result<()> {
    let params = args.sampling.params()?;
    if args.max_tokens == 0 {
        bail!("invalid --max-tokens 0: must be at least 1");
    }
    let loaded = args.model.load()?;
    let tok = loaded.tokenizer()?;
    let ids = if args.chat {
        let text = loaded.chat_prompt(args.system.as_deref(), &args.prompt)?;
        tok.encode(&text, false)?
    } else {
        tok.encode(&args.prompt, true)?
    };
    loaded.check_prompt_len(ids.len()).context("invalid --prompt")?;
    let room = loaded.max_context() - ids.len();
    let max_tokens = if args.max_tokens > room {
        eprintln!(
            "mllm: note: --max-tokens {} lowered to {room}, what is left of the {}-token context after the prompt",
            args.max_tokens,
            loaded.max_context()
        );
        room
    } else {
        args.max_tokens
    };
    let req = GenerateRequest {
        max_tokens,
        params,
        stop: args.stop.clone(),
        ignore_eos: args.ignore_eos,
    };
    let target = GeneratorTarget {
        device: args.model.resolve_device()?,
        cuda_graph: args.model.cuda_graph_max_bs() > 0,
        kv_dtype: args.model.kv_cache_dtype.dtype(),
    };
    let mut generator = loaded.into_generator_on(ids.len() + max_tokens, target)?;
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let out = generator.generate(&ids, &req, |piece| {
        if write_err.is_none() {
            write_err = stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush()).err();
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("cannot write to stdout");
    }
    writeln!(stdout).context("cannot write to stdout")?;
    if args.sampling.logprobs.is_some() {
        print_logprobs(generator.tokenizer(), &out);
    }
    print_stats(&out);
    Ok(())
}

fn print_stats(out: &GenerateOutput) {
    let s = &out.stats;
    let finish = match &out.finish {
        FinishReason::Eos { token } => format!("eos (token {token})"),
        FinishReason::Stop { stop } => format!("stop string {stop:?}"),
        FinishReason::Length => "length".into(),
    };
    eprintln!(
        "mllm: prompt {} tokens, generated {} tokens (finish: {finish}); prefill {:.1} tok/s ({:.1} ms), decode {:.1} tok/s ({} steps, {:.1} ms)",
        s.prompt_tokens,
        s.generated_tokens,
        s.prefill_tok_s(),
        s.prefill_s * 1e3,
        s.decode_tok_s(),
        s.decode_steps,
        s.decode_s * 1e3,
    );
}

fn print_logprobs(tok: &Tokenizer, out: &GenerateOutput) {
    let show = |id: u32| format!("{:?}", tok.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>")));
    for (i, s) in out.samples.iter().enumerate() {
        let top = s
            .top_logprobs
            .iter()
            .flatten()
            .map(|&(id, lp)| format!("{}={lp:.3}", show(id)))
            .collect::<Vec<_>>()
            .join(" ");
        let lp = s.logprob.map_or_else(|| "-".into(), |l| format!("{l:.3}"));
        eprintln!("mllm: token {i}: {} logprob {lp} | top: {top}", show(s.token));
    }
}
