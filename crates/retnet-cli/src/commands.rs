//! The subcommands.

use std::path::{Path, PathBuf};
use std::time::Instant;

use retnet_model::{
    mean_nll, CheckpointWeights, CpuEngine, Engine, FastCpuModel, Generator, LogitRows,
    ModelConfig, ModelError, RetentionForm, SamplingParams, TensorStore, TextStream, Tokenizer,
};

use crate::engine::{resolve, Engine as Chosen};
use crate::load::ModelSource;
use crate::output::{write_output, Stdout};
use crate::{note, Backend, CliError};

/// The most a `--tokens-file` may hold (64 MiB: some ten million ids).
const MAX_TOKEN_FILE_BYTES: u64 = 64 << 20;

/// The most a `--text-file` may hold.
const MAX_TEXT_FILE_BYTES: u64 = 256 << 20;

/// Precision of the weight matrices on the GPU.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Weights {
    /// Full precision (exact).
    F32,
    /// Half precision (half the memory traffic).
    F16,
    /// The layers' matrices in 8-bit blocks (one scale per 32 values), embeddings and head f16.
    Int8,
    /// The layers' matrices in 4-bit blocks (a step and a minimum per 32 values), embeddings
    /// and head f16.
    Q4,
}

impl Weights {
    /// The library's option.
    pub fn precision(self) -> retnet_model::WeightPrecision {
        use retnet_model::WeightPrecision as P;
        match self {
            Weights::F32 => P::F32,
            Weights::F16 => P::F16,
            Weights::Int8 => P::Int8,
            Weights::Q4 => P::Q4,
        }
    }
}

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// Model directory: config.json and model.safetensors (or a sharded index).
    #[arg(long)]
    model: PathBuf,
    /// A JSON file holding an array of token ids.
    #[arg(long, conflicts_with = "tokens", required_unless_present = "tokens")]
    tokens_file: Option<PathBuf>,
    /// Token ids separated by commas, e.g. 1,2,3.
    #[arg(long, allow_hyphen_values = true)]
    tokens: Option<String>,
    /// Where to compute: `cpu` is the exact reference; `auto` is a hardware GPU if there is
    /// one, else the reference.
    #[arg(long, value_enum)]
    backend: Backend,
    /// Which retention form to compute.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Tokens per chunk in chunkwise mode (default: the checkpoint's own chunk size).
    #[arg(long)]
    chunk_size: Option<usize>,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Precision of the weight matrices (on the CPU too: int8/q4 compute with the same decoded
    /// blocks as the GPU).
    #[arg(long, value_enum, default_value = "f32")]
    weights: Weights,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Parallel,
    Chunkwise,
    Recurrent,
}

pub fn logits(args: &LogitsArgs) -> Result<(), CliError> {
    let tokens = match (&args.tokens, &args.tokens_file) {
        (Some(list), _) => parse_token_list(list)?,
        (None, Some(path)) => read_token_file(path)?,
        (None, None) => return Err(CliError::BadTokens("give --tokens or --tokens-file".into())),
    };
    let source = ModelSource::new(Some(&args.model))?;
    let config = source.config();
    let form = match args.mode {
        Mode::Parallel => RetentionForm::Parallel,
        Mode::Recurrent => RetentionForm::Recurrent,
        Mode::Chunkwise => RetentionForm::Chunkwise {
            chunk_size: args.chunk_size.unwrap_or(config.default_chunk_size),
        },
    };
    let tokens = to_token_ids(&tokens, config.vocab_size)?;
    let engine = match args.backend {
        Backend::Cpu => Chosen::Cpu,
        backend => resolve(backend, false)?,
    };
    let logits = match engine {
        Chosen::Cpu => source.cpu_model_as(args.weights)?.logits(&tokens, form)?,
        Chosen::Gpu(device) => {
            let gpu = source.gpu_model_on(device, args.weights)?;
            let mut session = gpu.session()?;
            pollster::block_on(session.forward(&tokens, form, LogitRows::All))?
        }
    };
    retnet_model::reference::check_finite_logits(&logits, config.vocab_size, 0)?;
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    drop(logits);
    let output_error = |message: String| CliError::Output {
        path: args.out.clone(),
        message,
    };
    let shape = vec![tokens.len(), config.vocab_size];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| output_error(e.to_string()))?;
    let file = safetensors::serialize([("logits", view)], None)
        .map_err(|e| output_error(e.to_string()))?;
    write_output(&args.out, &file)
}

fn parse_token_list(list: &str) -> Result<Vec<i64>, CliError> {
    if list.trim().is_empty() {
        return Err(CliError::Model(ModelError::EmptyTokens));
    }
    list.split(',')
        .enumerate()
        .map(|(i, s)| {
            s.trim().parse::<i64>().map_err(|_| {
                CliError::BadTokens(format!(
                    "--tokens: `{}` at position {i} is not an integer",
                    s.trim()
                ))
            })
        })
        .collect()
}

fn read_token_file(path: &Path) -> Result<Vec<i64>, CliError> {
    let text = retnet_model::files::read_bounded_text(path, MAX_TOKEN_FILE_BYTES)?;
    serde_json::from_str::<Vec<i64>>(&text).map_err(|e| {
        CliError::BadTokens(format!(
            "{}: expected a JSON array of integer token ids: {e}",
            path.display()
        ))
    })
}

/// Checks sign and range before narrowing, so that -1 is reported as -1, not as 4294967295.
fn to_token_ids(tokens: &[i64], vocab_size: usize) -> Result<Vec<u32>, CliError> {
    if tokens.is_empty() {
        return Err(ModelError::EmptyTokens.into());
    }
    tokens
        .iter()
        .enumerate()
        .map(|(position, &token)| {
            if token < 0 {
                return Err(CliError::BadTokens(format!(
                    "token id {token} at position {position} is negative"
                )));
            }
            match u32::try_from(token) {
                Ok(id) if (id as usize) < vocab_size => Ok(id),
                _ => Err(ModelError::TokenOutOfRange {
                    token,
                    position,
                    vocab_size,
                }
                .into()),
            }
        })
        .collect()
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Model directory (default: the shipped byte-level Shakespeare model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text to start from (default: a newline, unless --load-state continues a session).
    #[arg(long)]
    prompt: Option<String>,
    /// How many tokens to generate.
    #[arg(long, default_value_t = 200)]
    max_tokens: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Sample from the k most likely tokens only (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Sample from the smallest set of tokens whose probabilities reach p.
    #[arg(long, default_value_t = 0.95, allow_negative_numbers = true)]
    top_p: f32,
    /// Penalise the last 64 tokens (1: off).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repeat_penalty: f32,
    /// Seed of the sampler (default: from the clock; printed on stderr).
    #[arg(long)]
    seed: Option<u64>,
    /// Save the session (state and sampler position) here at the end.
    #[arg(long)]
    save_state: Option<PathBuf>,
    /// Continue a session saved with --save-state.
    #[arg(long)]
    load_state: Option<PathBuf>,
    /// Where to compute: `auto` (a hardware GPU if there is one, else the CPU engine), `gpu`
    /// (any adapter, software included) or `cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Precision of the weight matrices (on the CPU too: int8/q4 compute with the same decoded
    /// blocks as the GPU).
    #[arg(long, value_enum, default_value = "f32")]
    weights: Weights,
}

pub fn generate(args: &GenerateArgs) -> Result<(), CliError> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        repeat_penalty: args.repeat_penalty,
        seed,
    };
    params.validate().map_err(CliError::BadArgument)?;
    let source = ModelSource::new(args.model.as_deref())?;
    let tokenizer = source.tokenizer()?;
    let prompt = match (&args.prompt, &args.load_state) {
        (Some(p), _) => tokenizer.encode(p)?,
        (None, Some(_)) => Vec::new(),
        (None, None) => tokenizer.encode("\n")?,
    };
    if prompt.is_empty() && args.load_state.is_none() {
        return Err(CliError::Usage(
            "--prompt gives no tokens: give some text, or leave --prompt out".into(),
        ));
    }
    if args.seed.is_none() && params.temperature > 0.0 {
        note(format_args!("seed: {seed}"));
    }
    let run = GenerationRun {
        args,
        params: &params,
        prompt: &prompt,
        tokenizer: &tokenizer,
    };
    match resolve(args.backend, true)? {
        Chosen::Cpu => {
            let model = source.cpu_model_as(args.weights)?;
            // Hybrid checkpoints (attention layers) run on the CPU reference: the fast CPU engine
            // has retention layers only.
            if model.config().is_hybrid() {
                return pollster::block_on(run.go(CpuEngine::new(&model), "cpu"));
            }
            let fast = FastCpuModel::new(&model)?;
            pollster::block_on(run.go(fast.session(), "cpu"))
        }
        Chosen::Gpu(device) => {
            let gpu = source.gpu_model_on(device, args.weights)?;
            pollster::block_on(run.go(gpu.session()?, "gpu"))
        }
    }
}

/// One `generate` invocation, independent of the backend.
struct GenerationRun<'a> {
    args: &'a GenerateArgs,
    params: &'a SamplingParams,
    prompt: &'a [u32],
    tokenizer: &'a Tokenizer,
}

impl GenerationRun<'_> {
    async fn go<E: Engine>(&self, engine: E, engine_name: &str) -> Result<(), CliError> {
        let args = self.args;
        let mut session = match &args.load_state {
            Some(path) => Generator::load(engine, path)?,
            None => Generator::new(engine),
        };
        let started = Instant::now();
        session.prefill(self.prompt).await?;
        let prefill_time = started.elapsed().as_secs_f64();

        let decode_start = Instant::now();
        let mut stdout = Stdout::new();
        let mut text = TextStream::new();
        let mut failed: Option<CliError> = None;
        let tokenizer = self.tokenizer;
        let mut emit = |tokens: &[u32]| -> bool {
            for &token in tokens {
                // A closed pipe (e.g. `| head`) stops generation, to end quietly with status
                // 141 (after saving the session if asked); any other write error is an error.
                let written = text
                    .push(tokenizer, token)
                    .map_err(CliError::from)
                    .and_then(|bytes| stdout.bytes(&bytes));
                if let Err(e) = written {
                    failed = Some(e);
                    return false;
                }
            }
            true
        };
        let generated = session
            .generate(self.params, args.max_tokens, &mut emit)
            .await?;
        let closed = match failed {
            Some(CliError::ClosedPipe) => true,
            Some(e) => return Err(e),
            None => false,
        };
        let decode_time = decode_start.elapsed().as_secs_f64();
        note(format_args!(
            "\nprefill: {} tokens, {:.1} tok/s; decode: {} tokens, {:.1} tok/s ({} engine)",
            self.prompt.len(),
            self.prompt.len() as f64 / prefill_time.max(1e-9),
            generated,
            generated as f64 / decode_time.max(1e-9),
            engine_name,
        ));
        if let Some(path) = &args.save_state {
            let bytes = session.save_bytes().await.map_err(|e| CliError::Output {
                path: path.clone(),
                message: e.to_string(),
            })?;
            write_output(path, &bytes)?;
        }
        if closed {
            return Err(CliError::ClosedPipe);
        }
        stdout.finish()
    }
}

#[derive(clap::Args)]
pub struct PerplexityArgs {
    /// Model directory (default: the shipped byte-level Shakespeare model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text to score, as one sequence from position 0.
    #[arg(long)]
    text_file: PathBuf,
    /// Where to compute: `auto` (a hardware GPU if there is one, else the CPU engine), `gpu`
    /// (any adapter, software included) or `cpu`.
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Precision of the weight matrices (on the CPU too: int8/q4 compute with the same decoded
    /// blocks as the GPU).
    #[arg(long, value_enum, default_value = "f32")]
    weights: Weights,
}

pub fn perplexity(args: &PerplexityArgs) -> Result<(), CliError> {
    let text = retnet_model::files::read_bounded(&args.text_file, MAX_TEXT_FILE_BYTES)?;
    if text.is_empty() {
        return Err(CliError::Usage(format!(
            "{}: the text file is empty",
            args.text_file.display()
        )));
    }
    let source = ModelSource::new(args.model.as_deref())?;
    let tokens = match source.tokenizer()? {
        Tokenizer::Bytes => text.iter().map(|&b| u32::from(b)).collect(),
        ref t => {
            let text = String::from_utf8(text).map_err(|_| {
                CliError::BadArgument(format!("{}: not UTF-8 text", args.text_file.display()))
            })?;
            t.encode(&text)?
        }
    };
    if tokens.len() < 2 {
        return Err(CliError::Usage(format!(
            "{}: perplexity needs at least 2 tokens of text, the file has {}",
            args.text_file.display(),
            tokens.len()
        )));
    }
    let bar = indicatif::ProgressBar::new(tokens.len() as u64);
    if tokens.len() < 4096 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = Instant::now();
    let mut progress = |done: usize, _| bar.set_position(done as u64);
    let nll = match resolve(args.backend, true)? {
        Chosen::Cpu => {
            let model = source.cpu_model_as(args.weights)?;
            // Hybrid checkpoints (attention layers) run on the CPU reference: the fast CPU engine
            // has retention layers only.
            if model.config().is_hybrid() {
                let mut engine = CpuEngine::new(&model);
                pollster::block_on(mean_nll(&mut engine, &tokens, 512, &mut progress))?
            } else {
                let fast = FastCpuModel::new(&model)?;
                let mut engine = fast.session();
                pollster::block_on(mean_nll(&mut engine, &tokens, 512, &mut progress))?
            }
        }
        Chosen::Gpu(device) => {
            let gpu = source.gpu_model_on(device, args.weights)?;
            let mut engine = gpu.session()?;
            pollster::block_on(mean_nll(&mut engine, &tokens, 512, &mut progress))?
        }
    };
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let perplexity = nll.exp();
    if !perplexity.is_finite() {
        return Err(ModelError::NonFinite(format!(
            "the perplexity exp({nll}) overflows: the model's predictions are degenerate"
        ))
        .into());
    }
    let mut out = Stdout::new();
    out.line(format_args!("tokens: {}", tokens.len()))?;
    out.line(format_args!(
        "tok/s: {:.1}",
        tokens.len() as f64 / seconds.max(1e-9)
    ))?;
    out.line(format_args!("nats/token: {nll:.6}"))?;
    out.line(format_args!("perplexity: {perplexity:.6}"))?;
    out.finish()
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// Model directory.
    #[arg(long)]
    model: PathBuf,
}

pub fn info(args: &InfoArgs) -> Result<(), CliError> {
    let config = ModelConfig::from_file(&args.model.join("config.json"))?;
    let store = TensorStore::open(&args.model)?;
    // Validates every tensor the config requires (name, shape, dtype), as a load would.
    CheckpointWeights::new(&config, &store)?.check()?;
    let mut names: Vec<&str> = store.names().collect();
    names.sort_unstable();
    let mut parameters = 0usize;
    let mut dtypes = std::collections::BTreeMap::<String, usize>::new();
    for name in &names {
        let numel: usize = store.shape(name).map_or(0, |s| s.iter().product());
        if !name.contains("retnet_rel_pos.") {
            parameters += numel;
        }
        if let Some(dtype) = store.dtype(name) {
            *dtypes.entry(format!("{dtype:?}")).or_default() += 1;
        }
    }
    let c = &config;
    let mut out = Stdout::new();
    out.line(format_args!("family: {:?}", c.family))?;
    out.line(format_args!("vocab: {}", c.vocab_size))?;
    out.line(format_args!("width: {}", c.d_model))?;
    out.line(format_args!("layers: {}", c.num_layers))?;
    out.line(format_args!(
        "heads: {} (key/value heads {}), key dim {}, value dim {}",
        c.num_heads, c.num_kv_heads, c.head_k_dim, c.head_v_dim
    ))?;
    let kinds: Vec<String> = (0..c.num_layers)
        .map(|layer| match c.layer_kind(layer) {
            retnet_model::LayerKind::Retention => "retention".to_string(),
            retnet_model::LayerKind::Attention(a) => {
                let mut kind = format!(
                    "attention ({} heads over {} kv heads, head dim {}, {}",
                    a.num_heads,
                    a.num_kv_heads,
                    a.head_dim,
                    match a.window {
                        Some(w) => format!("window {w}"),
                        None => "full".to_string(),
                    }
                );
                if a.qkv_bias {
                    kind.push_str(", qkv bias");
                }
                if a.qk_norm {
                    kind.push_str(", qk_norm in config");
                }
                kind.push_str(&format!(", rope theta {})", a.rope_theta));
                kind
            }
        })
        .collect();
    if c.is_hybrid() {
        for (layer, kind) in kinds.iter().enumerate() {
            out.line(format_args!("layer {layer}: {kind}"))?;
        }
    } else {
        out.line(format_args!("layer kinds: all retention"))?;
    }
    out.line(format_args!("ffn: {} ({:?})", c.ffn_dim, c.ffn_activation))?;
    out.line(format_args!(
        "norms: {:?}, residual alpha {}",
        c.norm_placement, c.residual_alpha
    ))?;
    out.line(format_args!("tied head: {}", c.tied_head))?;
    out.line(format_args!("parameters: {parameters}"))?;
    let dtypes: Vec<String> = dtypes
        .iter()
        .map(|(d, n)| format!("{d} ({n} tensors)"))
        .collect();
    out.line(format_args!("dtypes: {}", dtypes.join(", ")))?;
    out.finish()
}

pub fn devices() -> Result<(), CliError> {
    let options = retnet_runtime::DeviceOptions::from_env().map_err(ModelError::from)?;
    let adapters = pollster::block_on(retnet_runtime::list_adapters(&options));
    let mut out = Stdout::new();
    for a in &adapters {
        let kind = if retnet_runtime::is_software_adapter(a) {
            "software"
        } else {
            "hardware"
        };
        out.line(format_args!(
            "adapter: {} ({:?}, {:?}, {kind}, driver {} {})",
            a.name, a.backend, a.device_type, a.driver, a.driver_info
        ))?;
    }
    if adapters.is_empty() {
        out.line(format_args!("adapter: none"))?;
    }
    let choice =
        pollster::block_on(retnet_runtime::choose_backend(&options)).map_err(ModelError::from)?;
    out.line(format_args!(
        "auto: {} ({})",
        choice.engine_name(),
        choice.reason
    ))?;
    if adapters.is_empty() {
        // Nothing for `--backend gpu` to describe; `auto` runs on the CPU.
        return out.finish();
    }
    let device = crate::load::gpu_device()?;
    let info = device.adapter_info();
    let limits = device.limits();
    out.line(format_args!("selected: {} ({:?})", info.name, info.backend))?;
    out.line(format_args!(
        "features: shader-f16 {}, subgroups {}, cooperative matrices (tensor cores) {}, \
         timestamp queries {}, f16 weights {}",
        device.features().shader_f16,
        device.features().subgroups,
        device.features().cooperative_matrix,
        device.has_timestamp_query(),
        if device.supports_half_weights() {
            "yes"
        } else {
            "no"
        },
    ))?;
    out.line(format_args!(
        "limits: max buffer {} bytes, max storage binding {} bytes, workgroup memory {} bytes",
        limits.max_buffer_size,
        limits.max_storage_buffer_binding_size,
        limits.max_compute_workgroup_storage_size,
    ))?;
    out.finish()
}
