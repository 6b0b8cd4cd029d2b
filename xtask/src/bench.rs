//! `cargo xtask bench [--preset NAME] [--quick] [--json FILE]`: speed of the whole model on the
//! GPU with random weights in the shapes of published RetNets, in every weight precision (f32,
//! f16, int8, q4; `--weights` picks some).
//!
//! Per preset: decode tokens/s at batch 1 (GPU sampling, one submission per token) and batch 8
//! ([`GpuBatch::generate`]: GPU sampling too), prefill tokens/s (chunkwise) at 512, 2048 and 8192 tokens, time to first token
//! (prefill 512 + the first sampled token), GPU memory held by the buffers the model and sessions
//! allocate, and the memory-roofline fraction: the bytes one decode step must move (every weight
//! matrix read once, each state read and written) over the copy bandwidth the harness measures
//! itself (large buffer-to-buffer copies, timed with a submit and a wait).
//!
//! The copy bandwidth is a WGSL copy kernel's (16-byte loads and stores over 2 × 512 MiB, read
//! and write both counted, as PyTorch's `copy_` is): wgpu's buffer-to-buffer copy goes through
//! the copy engine, which moves only 0.84 TB/s on the H100 against 2.8 TB/s for a shader.
//!
//! Per-kernel GPU times come from timestamp queries ([`Device::start_profiling`]) around one
//! decode step and one prefill span, each dispatch in a pass of its own, summed per kernel.
//!
//! `--micro`: the kernels alone instead of the model (peak probes, GEMM and matvec sweeps,
//! retention kernels), see [`crate::micro`]; with `--preset test` it runs on lavapipe.
//!
//! `--contexts 1024,65536,1048576`: decode latency and session memory after a real chunkwise
//! prefill of each context length (retention's state is fixed-size, so both should be flat).
//!
//! Hybrid presets (fla's `attn`: 4 of fla-1.3B's 24 layers softmax attention, full or with a
//! 2048-token window) measure the same, and decode at 1k and 64k contexts unless `--contexts`
//! says otherwise: a full-attention cache grows with the context, a window's ring does not.
//!
//! Timings are wall-clock around calls that end with a read-back (so each includes the GPU's
//! work); each measurement is preceded by a warm-up that compiles every pipeline it uses.

use retnet_testkit::Rng;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use retnet_model::weights::AttentionWeights;
use retnet_model::{
    weights, GpuBatch, GpuModel, GpuOptions, LayerKind, LayerWeights, Linear, ModelConfig,
    ModelWeights, SamplingParams, WeightPrecision,
};
use retnet_runtime::kernels::WeightFormat;
use retnet_runtime::Device;
use serde_json::{json, Value};

/// Command-line options of `cargo xtask bench`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Options {
    /// Only this preset: retnet_base, retnet_medium, retnet_xl, fla_retnet_1.3b,
    /// fla_hybrid_1.3b (full attention at 4 layers), fla_hybrid_1.3b_swa (a 2048-token window),
    /// or test / test_hybrid (tiny, for lavapipe). Default: all but the tiny ones.
    #[arg(long, value_name = "NAME", value_parser = parse_preset)]
    pub preset: Option<String>,
    /// retnet_xl only (unless `--preset`), fewer steps and repetitions.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
    /// Context lengths at which to measure decode latency (after a real prefill).
    #[arg(long, value_name = "N,N,..", value_delimiter = ',')]
    pub contexts: Vec<usize>,
    /// The kernels alone ([`crate::micro`]; retnet_xl's shapes unless `--preset`) instead of the
    /// model.
    #[arg(long)]
    pub micro: bool,
    /// Weight precisions to measure, each a row of its own (default: all four; those the
    /// adapter cannot read are skipped with a note).
    #[arg(long, value_name = "P,P,..", value_delimiter = ',', value_parser = parse_precision)]
    pub weights: Vec<WeightPrecision>,
}

/// `f32`, `f16`, `int8` or `q4`.
fn parse_precision(name: &str) -> Result<WeightPrecision, String> {
    ALL_PRECISIONS
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| format!("unknown precision {name:?} (f32, f16, int8, q4)"))
}

const ALL_PRECISIONS: [WeightPrecision; 4] = [
    WeightPrecision::F32,
    WeightPrecision::F16,
    WeightPrecision::Int8,
    WeightPrecision::Q4,
];

/// A preset's name, if there is such a preset.
fn parse_preset(name: &str) -> Result<String, String> {
    match preset(name) {
        Some(_) => Ok(name.to_string()),
        None => {
            let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            Err(format!(
                "unknown preset {name:?} (presets: {})",
                names.join(", ")
            ))
        }
    }
}

/// A model shape: its config JSON (torchscale or fla family) and the run's sizes.
struct Preset {
    name: &'static str,
    json: &'static str,
    /// Prompt lengths of the prefill measurements.
    prefill: &'static [usize],
    /// Prompt length of the time-to-first-token measurement.
    ttft_prompt: usize,
    /// Contexts of the decode-latency sweep when `--contexts` is not given.
    contexts: &'static [usize],
}

const PREFILL: &[usize] = &[512, 2048, 8192];

const PRESETS: &[Preset] = &[
    Preset {
        name: "retnet_base",
        json: r#"{"decoder_embed_dim": 512, "decoder_value_embed_dim": 864,
            "decoder_ffn_embed_dim": 864, "decoder_layers": 6, "decoder_retention_heads": 2,
            "vocab_size": 32000, "activation_fn": "swish"}"#,
        prefill: PREFILL,
        ttft_prompt: 512,
        contexts: &[],
    },
    Preset {
        name: "retnet_medium",
        json: r#"{"decoder_embed_dim": 1024, "decoder_value_embed_dim": 1728,
            "decoder_ffn_embed_dim": 1728, "decoder_layers": 16, "decoder_retention_heads": 4,
            "vocab_size": 32000, "activation_fn": "swish"}"#,
        prefill: PREFILL,
        ttft_prompt: 512,
        contexts: &[],
    },
    Preset {
        name: "retnet_xl",
        json: r#"{"decoder_embed_dim": 2048, "decoder_value_embed_dim": 3456,
            "decoder_ffn_embed_dim": 3456, "decoder_layers": 24, "decoder_retention_heads": 8,
            "vocab_size": 32000, "activation_fn": "swish"}"#,
        prefill: PREFILL,
        ttft_prompt: 512,
        contexts: &[],
    },
    Preset {
        name: "fla_retnet_1.3b",
        json: r#"{"model_type": "retnet", "hidden_size": 2048, "num_hidden_layers": 24,
            "num_heads": 8, "expand_k": 1, "expand_v": 2, "intermediate_size": 2816,
            "vocab_size": 32000}"#,
        prefill: PREFILL,
        ttft_prompt: 512,
        contexts: &[],
    },
    Preset {
        name: "test",
        json: r#"{"decoder_embed_dim": 64, "decoder_value_embed_dim": 96,
            "decoder_ffn_embed_dim": 128, "decoder_layers": 2, "decoder_retention_heads": 2,
            "vocab_size": 1000, "activation_fn": "swish"}"#,
        prefill: &[64, 256],
        ttft_prompt: 64,
        contexts: &[],
    },
    Preset {
        name: "fla_hybrid_1.3b",
        json: r#"{"model_type": "retnet", "hidden_size": 2048, "num_hidden_layers": 24,
            "num_heads": 8, "expand_k": 1, "expand_v": 2, "intermediate_size": 2816,
            "vocab_size": 32000, "attn": {"layers": [5, 11, 17, 23], "num_heads": 16,
            "num_kv_heads": 8, "window_size": null, "rope_theta": 10000.0}}"#,
        prefill: PREFILL,
        ttft_prompt: 512,
        contexts: HYBRID_CONTEXTS,
    },
    Preset {
        name: "fla_hybrid_1.3b_swa",
        json: r#"{"model_type": "retnet", "hidden_size": 2048, "num_hidden_layers": 24,
            "num_heads": 8, "expand_k": 1, "expand_v": 2, "intermediate_size": 2816,
            "vocab_size": 32000, "attn": {"layers": [5, 11, 17, 23], "num_heads": 16,
            "num_kv_heads": 8, "window_size": 2048, "rope_theta": 10000.0}}"#,
        prefill: PREFILL,
        ttft_prompt: 512,
        contexts: HYBRID_CONTEXTS,
    },
    Preset {
        name: "test_hybrid",
        json: r#"{"model_type": "retnet", "hidden_size": 64, "num_hidden_layers": 3,
            "num_heads": 2, "expand_k": 1, "expand_v": 2, "intermediate_size": 128,
            "vocab_size": 1000, "attn": [
                {"layers": [0], "num_heads": 4, "num_kv_heads": 2, "window_size": null},
                {"layers": [2], "num_heads": 4, "num_kv_heads": 2, "window_size": 64}]}"#,
        prefill: &[64, 256],
        ttft_prompt: 64,
        contexts: &[256, 1024],
    },
];

/// The hybrid presets' decode contexts: 1k and 64k tokens.
const HYBRID_CONTEXTS: &[usize] = &[1024, 65536];

/// The tiny presets, for software adapters.
fn is_tiny(name: &str) -> bool {
    name.starts_with("test")
}

fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// Steps and repetitions of one run.
#[derive(Clone, Copy)]
struct Effort {
    decode_steps: usize,
    batch_steps: usize,
    reps: usize,
}

pub fn run(options: &Options) -> ExitCode {
    match pollster::block_on(run_async(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run_async(options: &Options) -> Result<(), String> {
    let names: Vec<&str> = match (&options.preset, options.quick || options.micro) {
        (Some(name), _) => vec![name.as_str()],
        (None, true) => vec!["retnet_xl"],
        (None, false) => PRESETS
            .iter()
            .map(|p| p.name)
            .filter(|&n| !is_tiny(n))
            .collect(),
    };
    let device = Arc::new(Device::from_env().await.map_err(|e| e.to_string())?);
    let info = device.adapter_info().clone();
    println!(
        "adapter: {} ({:?}, driver {} {}), timestamp queries offered: {}",
        info.name,
        info.backend,
        info.driver,
        info.driver_info,
        device.has_timestamp_query()
    );
    let tiny = names.iter().all(|n| is_tiny(n));
    if options.micro {
        let mut results = Vec::new();
        for name in names {
            let preset = preset(name).ok_or_else(|| format!("unknown preset {name}"))?;
            let config = ModelConfig::from_json_str(preset.json).map_err(|e| e.to_string())?;
            results.push(crate::micro::run(&device, name, &config, tiny).await?);
        }
        if let Some(path) = &options.json {
            let doc = json!({
                "adapter": info.name,
                "backend": format!("{:?}", info.backend),
                "driver": info.driver,
                "driver_info": info.driver_info,
                "micro": results,
            });
            let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
            std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
            println!("wrote {path}");
        }
        return Ok(());
    }
    let bandwidth = copy_bandwidth(&device, tiny).await?;
    println!("copy bandwidth: {:.1} GB/s", bandwidth / 1e9);

    let precisions: Vec<WeightPrecision> = if options.weights.is_empty() {
        ALL_PRECISIONS.to_vec()
    } else {
        options.weights.clone()
    };
    let mut results = Vec::new();
    for (name, precision) in names
        .iter()
        .flat_map(|&n| precisions.iter().map(move |&p| (n, p)))
    {
        if precision != WeightPrecision::F32 && !device.supports_half_weights() {
            println!(
                "\n{name} ({} weights): skipped, this adapter cannot read f16 weights",
                precision.name()
            );
            continue;
        }
        let preset = preset(name).ok_or_else(|| format!("unknown preset {name}"))?;
        let effort = match (tiny, options.quick) {
            (true, _) => Effort {
                decode_steps: 32,
                batch_steps: 8,
                reps: 1,
            },
            (false, true) => Effort {
                decode_steps: 256,
                batch_steps: 64,
                reps: 1,
            },
            (false, false) => Effort {
                decode_steps: 512,
                batch_steps: 256,
                reps: 3,
            },
        };
        let contexts = if options.contexts.is_empty() {
            preset.contexts
        } else {
            &options.contexts
        };
        let result = bench_preset(&device, preset, precision, effort, bandwidth, contexts).await?;
        print_table(&result);
        results.push(result);
    }
    if let Some(path) = &options.json {
        let doc = json!({
            "adapter": info.name,
            "backend": format!("{:?}", info.backend),
            "driver": info.driver,
            "driver_info": info.driver_info,
            "timestamp_query": device.has_timestamp_query(),
            "copy_bandwidth_probe": "WGSL vec4<u32> copy kernel, read + write counted",
            "copy_bandwidth_gb_per_s": bandwidth / 1e9,
            "presets": results,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
        println!("wrote {path}");
    }
    Ok(())
}

const COPY_SHADER: &str = "
@group(0) @binding(0) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<u32>>;

@compute @workgroup_size(256)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let stride = groups.x * 256u;
    for (var i = gid.x; i < arrayLength(&dst); i += stride) {
        dst[i] = src[i];
    }
}
";

/// Bytes per second a WGSL copy kernel moves (read + write counted, as PyTorch's `copy_`
/// bandwidth is), over several copies submitted back to back and one wait.
async fn copy_bandwidth(device: &Device, tiny: bool) -> Result<f64, String> {
    let limits = device.limits();
    let cap: u64 = if tiny { 16 << 20 } else { 1 << 30 };
    let size = cap
        .min(limits.max_storage_buffer_binding_size)
        .min(limits.max_buffer_size)
        / 2;
    let err = |e: retnet_runtime::RuntimeError| e.to_string();
    let src = device.create_storage("bandwidth src", size).map_err(err)?;
    let dst = device.create_storage("bandwidth dst", size).map_err(err)?;
    let wgpu_device = device.wgpu_device();
    let module = wgpu_device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("copy probe"),
        source: wgpu::ShaderSource::Wgsl(COPY_SHADER.into()),
    });
    let pipeline = wgpu_device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("copy probe"),
        layout: None,
        module: &module,
        entry_point: Some("copy"),
        compilation_options: Default::default(),
        cache: None,
    });
    let group = wgpu_device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("copy probe"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry {
                binding: 0,
                resource: src.wgpu_buffer().as_entire_binding(),
            },
            wgpu::BindGroupEntry {
                binding: 1,
                resource: dst.wgpu_buffer().as_entire_binding(),
            },
        ],
    });
    let copies = if tiny { 2 } else { 20 };
    let run = |count: usize| {
        let mut encoder = wgpu_device.create_command_encoder(&Default::default());
        for _ in 0..count {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.dispatch_workgroups(8192, 1, 1);
        }
        device.wgpu_queue().submit([encoder.finish()]);
    };
    let wait = || async { device.read_u32(&dst, 0, 1).await.map_err(err) };
    run(1);
    wait().await?;
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let start = Instant::now();
        run(copies);
        wait().await?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * size as f64 * copies as f64 / best)
}

/// GPU time per kernel over everything submitted while `work` runs: (kernel, dispatches, µs),
/// most expensive first; `None` without timestamp queries.
/// Host microseconds per step spent recording, encoding and submitting sequences between two
/// snapshots of the device's counters.
fn host_us_per_step(
    before: &retnet_runtime::HostStats,
    after: &retnet_runtime::HostStats,
    steps: usize,
) -> f64 {
    (after.sequence_nanos - before.sequence_nanos) as f64 / 1e3 / steps.max(1) as f64
}

/// Steps timed by [`finish_pass_timing`].
const PASS_REPEATS: usize = 16;

/// Starts timing each submitted sequence as it normally runs (its dispatches in one pass,
/// [`Device::start_profiling_sequences`]); false without timestamp queries.
fn start_pass_timing(device: &Device) -> Result<bool, String> {
    if !device.has_timestamp_query() {
        return Ok(false);
    }
    device
        .start_profiling_sequences()
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// GPU microseconds per step of the PASS_REPEATS steps run since [`start_pass_timing`], all
/// sequences of a step summed: against the wall time of the same step it separates the GPU's
/// time from the host's. None when not timed.
async fn finish_pass_timing(device: &Device, timed: bool) -> Result<Option<f64>, String> {
    if !timed {
        return Ok(None);
    }
    let (times, missed) = device.finish_profiling().await.map_err(|e| e.to_string())?;
    if missed > 0 || times.is_empty() {
        return Ok(None);
    }
    let total_us: f64 = times.iter().map(|t| t.nanos / 1e3).sum();
    Ok(Some(total_us / PASS_REPEATS as f64))
}

async fn profile<F, Fut>(device: &Device, work: F) -> Result<Option<Value>, String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    if !device.has_timestamp_query() {
        return Ok(None);
    }
    device.start_profiling().map_err(|e| e.to_string())?;
    work().await?;
    let (times, missed) = device.finish_profiling().await.map_err(|e| e.to_string())?;
    let mut per_kernel: Vec<(&str, usize, f64)> = Vec::new();
    for t in &times {
        match per_kernel.iter_mut().find(|(k, _, _)| *k == t.kernel) {
            Some(entry) => {
                entry.1 += 1;
                entry.2 += t.nanos / 1e3;
            }
            None => per_kernel.push((t.kernel, 1, t.nanos / 1e3)),
        }
    }
    per_kernel.sort_by(|a, b| b.2.total_cmp(&a.2));
    let total: f64 = per_kernel.iter().map(|k| k.2).sum();
    Ok(Some(json!({
        "total_us": total,
        "dispatches": times.len(),
        "untimed_dispatches": missed,
        "kernels": per_kernel
            .iter()
            .map(|(k, n, us)| json!({"kernel": k, "dispatches": n, "us": us}))
            .collect::<Vec<_>>(),
    })))
}

/// Weights of std 0.02 (uniform), norms of 1, decays and angles from the formulas.
fn random_weights(config: &ModelConfig, seed: u64) -> ModelWeights {
    // Uniform on [-a, a] has std a/√3.
    let a = 0.02 * 3f32.sqrt();
    let linear = |rng: &mut Rng, out_features: usize, in_features: usize| Linear {
        out_features,
        in_features,
        data: (0..out_features * in_features)
            .map(|_| rng.uniform() * a)
            .collect(),
    };
    let c = config;
    let d = c.d_model;
    let ones = |n: usize| vec![1.0f32; n];
    let layer = |i: usize| {
        let mut rng = Rng::new(seed ^ ((i as u64 + 1) << 20));
        if let LayerKind::Attention(a) = c.layer_kind(i) {
            return LayerWeights {
                retention_norm: ones(d),
                q_proj: linear(&mut rng, a.query_width(), d),
                k_proj: linear(&mut rng, a.kv_width(), d),
                v_proj: linear(&mut rng, a.kv_width(), d),
                g_proj: linear(&mut rng, 0, d),
                out_proj: linear(&mut rng, d, a.query_width()),
                head_norm: None,
                ffn_norm: ones(d),
                ffn_act: linear(&mut rng, c.ffn_dim, d),
                ffn_lin: linear(&mut rng, c.ffn_dim, d),
                ffn_down: linear(&mut rng, d, c.ffn_dim),
                attention: Some(AttentionWeights {
                    config: a.clone(),
                    qkv_bias: None,
                    qk_norm: None,
                    rotary_theta: weights::attention_rotary(a.rope_theta, a.head_dim),
                }),
            };
        }
        LayerWeights {
            retention_norm: ones(d),
            q_proj: linear(&mut rng, c.query_width(), d),
            k_proj: linear(&mut rng, c.key_width(), d),
            v_proj: linear(&mut rng, c.kv_value_width(), d),
            g_proj: linear(&mut rng, c.value_width(), d),
            out_proj: linear(&mut rng, d, c.value_width()),
            head_norm: c.head_norm_weight.then(|| ones(c.head_v_dim)),
            ffn_norm: ones(d),
            ffn_act: linear(&mut rng, c.ffn_dim, d),
            ffn_lin: linear(&mut rng, c.ffn_dim, d),
            ffn_down: linear(&mut rng, d, c.ffn_dim),
            attention: None,
        }
    };
    // One thread per layer: retnet_xl is 1.35 billion values.
    let (layers, embed, head) = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..c.num_layers)
            .map(|i| scope.spawn(move || layer(i)))
            .collect();
        let head = scope.spawn(|| {
            (!c.tied_head).then(|| linear(&mut Rng::new(seed ^ 0xAAAA), c.vocab_size, d))
        });
        let embed = linear(&mut Rng::new(seed ^ 0x5555), c.vocab_size, d);
        let layers: Vec<LayerWeights> = handles
            .into_iter()
            .map(|h| h.join().expect("weight generator thread"))
            .collect();
        (layers, embed, head.join().expect("weight generator thread"))
    });
    ModelWeights {
        embed,
        embed_norm: c.embedding_norm.then(|| ones(d)),
        layers,
        final_norm: c.final_norm.then(|| ones(d)),
        head,
        log_decay: weights::decay_formula(c.num_heads),
        rotary_theta: weights::rotary_formula(c.rotary, c.head_k_dim),
    }
}

/// Parameters read by one decode step: every layer's matrices and the output head (the
/// embedding gather reads one row; norms are negligible).
fn matrix_params_per_step(c: &ModelConfig) -> u64 {
    let d = c.d_model;
    let layers: usize = (0..c.num_layers)
        .map(|i| {
            let mixer = match c.layer_kind(i) {
                LayerKind::Retention => {
                    let qkvg =
                        c.query_width() + c.key_width() + c.kv_value_width() + c.value_width();
                    d * qkvg + c.value_width() * d
                }
                LayerKind::Attention(a) => d * (2 * a.query_width() + 2 * a.kv_width()),
            };
            mixer + 3 * d * c.ffn_dim
        })
        .sum();
    (layers + c.vocab_size * d) as u64
}

/// Bytes of recurrent state one decode step reads (and writes): the retention layers' (an
/// attention layer's key/value cache grows with the context and is not counted).
fn state_bytes_per_step(c: &ModelConfig) -> u64 {
    let retention = (0..c.num_layers)
        .filter(|&i| c.layer_kind(i) == LayerKind::Retention)
        .count();
    (retention * c.retention_state_len() * 4) as u64
}

/// Bytes of weights one decode step reads with `precision`: the layers' matrices in their
/// format, the head in f16 under the block formats ([`retnet_model::quant`]).
fn weight_bytes_per_step(c: &ModelConfig, precision: WeightPrecision) -> u64 {
    let all = matrix_params_per_step(c) as f64;
    let head = (c.vocab_size * c.d_model) as f64;
    let layers = all - head;
    let bytes = match precision {
        WeightPrecision::F32 => 4.0 * all,
        WeightPrecision::F16 => 2.0 * all,
        WeightPrecision::Int8 => WeightFormat::Int8.bytes_per_value() * layers + 2.0 * head,
        WeightPrecision::Q4 => WeightFormat::Q4.bytes_per_value() * layers + 2.0 * head,
    };
    bytes as u64
}

/// Total parameters (as the peers count them: embeddings and head, not norms).
fn total_params(c: &ModelConfig) -> u64 {
    let head = if c.tied_head {
        0
    } else {
        c.vocab_size * c.d_model
    };
    matrix_params_per_step(c) + head as u64
}

fn random_tokens(rng: &mut Rng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as u32)
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn bench_preset(
    device: &Arc<Device>,
    preset: &Preset,
    precision: WeightPrecision,
    effort: Effort,
    bandwidth: f64,
    contexts: &[usize],
) -> Result<Value, String> {
    let err = |e: retnet_model::ModelError| e.to_string();
    let config = ModelConfig::from_json_str(preset.json).map_err(err)?;
    let c = config.clone();
    println!(
        "\n{} ({} weights): d {} layers {} heads {} K {} V {} ffn {} vocab {}, {:.3} B params",
        preset.name,
        precision.name(),
        c.d_model,
        c.num_layers,
        c.num_heads,
        c.head_k_dim,
        c.head_v_dim,
        c.ffn_dim,
        c.vocab_size,
        total_params(&c) as f64 / 1e9
    );
    let start = Instant::now();
    let weights = random_weights(&config, 7);
    let generated = start.elapsed();
    let start = Instant::now();
    let model = GpuModel::from_weights(
        Arc::clone(device),
        config,
        &weights,
        GpuOptions { weights: precision },
    )
    .map_err(err)?;
    drop(weights);
    let uploaded = start.elapsed();
    println!(
        "  weights generated in {:.1} s, uploaded ({precision:?}) in {:.1} s",
        generated.as_secs_f64(),
        uploaded.as_secs_f64()
    );
    let vocab = c.vocab_size;
    let mut rng = Rng::new(11);
    let greedy = SamplingParams::greedy();

    // Time to first token: prefill + one sampled token. The first run compiles the pipelines.
    let prompt = random_tokens(&mut rng, preset.ttft_prompt, vocab);
    let mut ttft = Vec::new();
    let mut session = model.session().map_err(err)?;
    for rep in 0..=effort.reps {
        let mut s = model.session().map_err(err)?;
        let start = Instant::now();
        s.prefill(&prompt).await.map_err(err)?;
        s.sample_loop(&greedy, 0, &prompt, 1, 1, &mut |_| true)
            .await
            .map_err(err)?;
        if rep > 0 {
            ttft.push(start.elapsed());
        }
        session = s;
    }
    let ttft = median(ttft);

    // Decode, batch 1: GPU sampling, one submission per token, ids read every 16 steps.
    let mut history = prompt.clone();
    let warm = session
        .sample_loop(&greedy, 1, &history, 16, 16, &mut |_| true)
        .await
        .map_err(err)?;
    history.extend(&warm);
    let host_before = device.host_stats();
    let start = Instant::now();
    let ids = session
        .sample_loop(&greedy, 17, &history, effort.decode_steps, 16, &mut |_| {
            true
        })
        .await
        .map_err(err)?;
    let decode1 = start.elapsed();
    let host1_us = host_us_per_step(&host_before, &device.host_stats(), effort.decode_steps);
    if ids.len() != effort.decode_steps {
        return Err(format!(
            "sample_loop returned {} of {} tokens",
            ids.len(),
            effort.decode_steps
        ));
    }
    let decode1_tps = effort.decode_steps as f64 / decode1.as_secs_f64();
    let session_bytes = session.buffer_bytes();
    let decoding = &mut session;
    let decode_profile = profile(device, move || async move {
        decoding.step(1).await.map(|_| ()).map_err(err)
    })
    .await?;
    let timed = start_pass_timing(device)?;
    if timed {
        for _ in 0..PASS_REPEATS {
            session.step(1).await.map_err(err)?;
        }
    }
    let decode_pass = finish_pass_timing(device, timed).await?;

    // Decode, batch 8: eight copies of the session's state, sampled on the GPU.
    let batch_size = 8;
    let mut batch = GpuBatch::new(&model, batch_size).map_err(err)?;
    let slots: Vec<usize> = (0..batch_size)
        .map(|_| batch.insert(&session))
        .collect::<retnet_model::Result<_>>()
        .map_err(err)?;
    let mut inputs: Vec<(usize, u32)> = slots.iter().map(|&s| (s, 1)).collect();
    // GPU sampling for the batch (`GpuBatch::generate`): ids read back every 16 steps, no
    // logits leave the GPU. 4 warm-up steps first.
    for input in inputs.iter_mut() {
        input.1 = (rng.next_u64() % vocab as u64) as u32;
    }
    let warm = batch
        .generate(&inputs, &greedy, 0, &[], 4, &mut |_| true)
        .await
        .map_err(err)?;
    for (input, ids) in inputs.iter_mut().zip(&warm) {
        input.1 = ids.last().copied().unwrap_or(1);
    }
    let host_before = device.host_stats();
    let start = Instant::now();
    batch
        .generate(&inputs, &greedy, 4, &[], effort.batch_steps, &mut |_| true)
        .await
        .map_err(err)?;
    let decode8 = start.elapsed();
    let host8_us = host_us_per_step(&host_before, &device.host_stats(), effort.batch_steps);
    let stepping = &mut batch;
    let batch_inputs = &inputs;
    let batch_profile = profile(device, move || async move {
        stepping.step(batch_inputs).await.map(|_| ()).map_err(err)
    })
    .await?;
    let timed = start_pass_timing(device)?;
    if timed {
        for _ in 0..PASS_REPEATS {
            batch.step(&inputs).await.map_err(err)?;
        }
    }
    let batch_pass = finish_pass_timing(device, timed).await?;
    let decode8_tps = (batch_size * effort.batch_steps) as f64 / decode8.as_secs_f64();
    let batch_bytes = batch.buffer_bytes();
    drop(batch);
    drop(session);

    // Prefill, chunkwise, from a fresh state.
    let mut prefill = Vec::new();
    let mut prefill_session_bytes = 0;
    for &n in preset.prefill {
        let tokens = random_tokens(&mut rng, n, vocab);
        let mut times = Vec::new();
        for _ in 0..effort.reps {
            let mut s = model.session().map_err(err)?;
            let start = Instant::now();
            s.prefill(&tokens).await.map_err(err)?;
            times.push(start.elapsed());
            prefill_session_bytes = prefill_session_bytes.max(s.buffer_bytes());
        }
        let t = median(times);
        prefill.push(json!({
            "tokens": n,
            "ms": t.as_secs_f64() * 1e3,
            "tok_per_s": n as f64 / t.as_secs_f64(),
        }));
    }

    // Per-kernel times of one prefill span (the largest prefill size, up to one span).
    let span = preset
        .prefill
        .iter()
        .copied()
        .max()
        .unwrap_or(512)
        .min(2048);
    let span_tokens = random_tokens(&mut rng, span, vocab);
    let prefill_profile = profile(device, || async {
        let mut s = model.session().map_err(err)?;
        s.prefill(&span_tokens).await.map(|_| ()).map_err(err)
    })
    .await?;

    // Decode latency and session memory after long contexts (real chunkwise prefills).
    let mut context_rows = Vec::new();
    for &n in contexts {
        let mut s = model.session().map_err(err)?;
        let start = Instant::now();
        let mut fed = 0;
        while fed < n {
            let piece = (n - fed).min(65536);
            let tokens = random_tokens(&mut rng, piece, vocab);
            s.prefill(&tokens).await.map_err(err)?;
            fed += piece;
        }
        let prefill_time = start.elapsed();
        let history = random_tokens(&mut rng, 64, vocab);
        s.sample_loop(&greedy, 0, &history, 16, 16, &mut |_| true)
            .await
            .map_err(err)?;
        let steps = 128;
        let start = Instant::now();
        s.sample_loop(&greedy, 16, &history, steps, 16, &mut |_| true)
            .await
            .map_err(err)?;
        let decode = start.elapsed();
        context_rows.push(json!({
            "context": n,
            "prefill_s": prefill_time.as_secs_f64(),
            "prefill_tok_per_s": n as f64 / prefill_time.as_secs_f64(),
            "decode_ms_per_step": decode.as_secs_f64() * 1e3 / steps as f64,
            "session_bytes": s.buffer_bytes(),
        }));
        println!(
            "  context {n}: prefill {:.1} s, decode {:.3} ms/step, session {:.3} GiB",
            prefill_time.as_secs_f64(),
            decode.as_secs_f64() * 1e3 / steps as f64,
            s.buffer_bytes() as f64 / (1u64 << 30) as f64
        );
    }

    // Roofline: each matrix read once per step in its format (the block formats' parameters
    // included; the head stays f16 under int8 and q4), each state read and written.
    let weight_bytes = weight_bytes_per_step(&c, precision);
    let state_bytes = state_bytes_per_step(&c);
    let step1_bytes = weight_bytes + 2 * state_bytes;
    let step8_bytes = weight_bytes + 2 * state_bytes * batch_size as u64;
    let roof1 = bandwidth / step1_bytes as f64;
    let roof8 = bandwidth * batch_size as f64 / step8_bytes as f64;
    let model_bytes = model.buffer_bytes();
    // Dispatches of one decode step's forward pass, as the profile counted them (null without
    // timestamp queries); the sampler adds one.
    let dispatches = decode_profile
        .as_ref()
        .map_or(Value::Null, |p| p["dispatches"].clone());
    let stats = device.cache_stats();
    Ok(json!({
        "preset": preset.name,
        "family": format!("{:?}", c.family),
        "params": total_params(&c),
        "weights": precision.name(),
        "shape": {
            "d_model": c.d_model, "layers": c.num_layers, "heads": c.num_heads,
            "head_k_dim": c.head_k_dim, "head_v_dim": c.head_v_dim, "ffn_dim": c.ffn_dim,
            "vocab": c.vocab_size,
        },
        "decode_b1": {
            "steps": effort.decode_steps,
            "tok_per_s": decode1_tps,
            "ms_per_step": decode1.as_secs_f64() * 1e3 / effort.decode_steps as f64,
            "roofline_tok_per_s": roof1,
            "roofline_fraction": decode1_tps / roof1,
            "bytes_per_step": step1_bytes,
            "dispatches_per_step": dispatches,
        },
        "decode_b8": {
            "steps": effort.batch_steps,
            "tok_per_s": decode8_tps,
            "ms_per_step": decode8.as_secs_f64() * 1e3 / effort.batch_steps as f64,
            "roofline_tok_per_s": roof8,
            "roofline_fraction": decode8_tps / roof8,
            "bytes_per_step": step8_bytes,
            "gpu_sampling": true,
        },
        "prefill": prefill,
        "contexts": context_rows,
        "profile_decode_step": decode_profile,
        "gpu_us_decode_step_one_pass": decode_pass,
        "host_us_decode_step": host1_us,
        "host_us_batch8_step": host8_us,
        "gpu_us_batch8_step_one_pass": batch_pass,
        "profile_batch8_step": batch_profile,
        "profile_prefill_span": prefill_profile,
        "profile_prefill_tokens": span,
        "tensor_cores": model.uses_tensor_cores(),
        "ttft_ms": ttft.as_secs_f64() * 1e3,
        "ttft_prompt": preset.ttft_prompt,
        "gpu_memory_bytes": {
            "model": model_bytes,
            "session_decode": session_bytes,
            "batch8": batch_bytes,
            "session_prefill_max": prefill_session_bytes,
        },
        "cache_stats": {
            "shader_modules": stats.shader_modules,
            "pipelines": stats.pipelines,
            "bind_groups": stats.bind_groups,
            "buffers": stats.buffers,
        },
    }))
}

fn print_table(r: &Value) {
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let gib = |v: &Value| f(v) / (1u64 << 30) as f64;
    let b1 = &r["decode_b1"];
    let b8 = &r["decode_b8"];
    println!("  {:<34} {:>12}", "measure", "value");
    println!(
        "  {:<34} {:>12.1}   ({:.3} ms/step, {} dispatches)",
        format!("decode b1 tok/s ({} steps)", b1["steps"]),
        f(&b1["tok_per_s"]),
        f(&b1["ms_per_step"]),
        b1["dispatches_per_step"]
    );
    println!(
        "  {:<34} {:>12.1}   (roofline {:.0} tok/s, fraction {:.3})",
        "",
        "",
        f(&b1["roofline_tok_per_s"]),
        f(&b1["roofline_fraction"])
    );
    println!(
        "  {:<34} {:>12.1}   ({:.3} ms/step; roofline {:.0}, fraction {:.3})",
        format!("decode b8 tok/s ({} steps)", b8["steps"]),
        f(&b8["tok_per_s"]),
        f(&b8["ms_per_step"]),
        f(&b8["roofline_tok_per_s"]),
        f(&b8["roofline_fraction"])
    );
    for p in r["prefill"].as_array().into_iter().flatten() {
        println!(
            "  {:<34} {:>12.1}   ({:.1} ms)",
            format!("prefill {} tok/s", p["tokens"]),
            f(&p["tok_per_s"]),
            f(&p["ms"])
        );
    }
    println!(
        "  {:<34} {:>12.2}",
        format!("ttft ms (prompt {})", r["ttft_prompt"]),
        f(&r["ttft_ms"])
    );
    if let (Some(one), Some(eight)) = (
        r["gpu_us_decode_step_one_pass"].as_f64(),
        r["gpu_us_batch8_step_one_pass"].as_f64(),
    ) {
        println!(
            "  GPU time of a whole step in one pass: decode {one:.1} µs, batch-8 {eight:.1} µs \
             (wall {:.3} / {:.3} ms per step; host recording and submitting {:.1} / {:.1} µs)",
            f(&r["decode_b1"]["ms_per_step"]),
            f(&r["decode_b8"]["ms_per_step"]),
            f(&r["host_us_decode_step"]),
            f(&r["host_us_batch8_step"])
        );
    }
    for (name, key) in [
        ("decode step", "profile_decode_step"),
        ("batch-8 step", "profile_batch8_step"),
        ("prefill span", "profile_prefill_span"),
    ] {
        let p = &r[key];
        if p.is_null() {
            continue;
        }
        println!(
            "  GPU time per kernel, one {name}: {:.1} µs in {} dispatches",
            f(&p["total_us"]),
            p["dispatches"]
        );
        for k in p["kernels"].as_array().into_iter().flatten().take(8) {
            println!(
                "    {:<40} {:>5} × {:>10.1} µs  {:>5.1}%",
                k["kernel"].as_str().unwrap_or("?"),
                k["dispatches"],
                f(&k["us"]),
                100.0 * f(&k["us"]) / f(&p["total_us"])
            );
        }
    }
    let m = &r["gpu_memory_bytes"];
    println!(
        "  {:<34} {:>12.3}   (session {:.3}, batch8 {:.3}, prefill session {:.3})",
        "GPU memory GiB: model",
        gib(&m["model"]),
        gib(&m["session_decode"]),
        gib(&m["batch8"]),
        gib(&m["session_prefill_max"])
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_with_published_sizes() {
        let params = |name: &str| {
            let p = preset(name).unwrap();
            total_params(&ModelConfig::from_json_str(p.json).unwrap())
        };
        // torchscale's retnet_xl is 1.35B with a 32k vocab; fla's retnet-1.3B 1.35B untied.
        assert!((1.30e9..1.40e9).contains(&(params("retnet_xl") as f64)));
        assert!((1.25e9..1.40e9).contains(&(params("fla_retnet_1.3b") as f64)));
        let fla = ModelConfig::from_json_str(preset("fla_retnet_1.3b").unwrap().json).unwrap();
        assert_eq!(
            (fla.head_k_dim, fla.head_v_dim, fla.ffn_dim),
            (256, 512, 2816)
        );
        for p in PRESETS {
            ModelConfig::from_json_str(p.json).unwrap();
        }
    }

    #[test]
    fn random_weights_have_the_configured_shapes() {
        let c = ModelConfig::from_json_str(preset("test").unwrap().json).unwrap();
        let w = random_weights(&c, 1);
        assert_eq!(w.layers.len(), c.num_layers);
        assert_eq!(w.embed.data.len(), c.vocab_size * c.d_model);
        let l = &w.layers[0];
        assert_eq!(l.g_proj.data.len(), c.value_width() * c.d_model);
        let mean_sq: f32 =
            l.q_proj.data.iter().map(|v| v * v).sum::<f32>() / l.q_proj.data.len() as f32;
        assert!((mean_sq.sqrt() - 0.02).abs() < 0.002);
        // Hybrid presets: attention layers in their own shapes.
        let c = ModelConfig::from_json_str(preset("test_hybrid").unwrap().json).unwrap();
        let w = random_weights(&c, 1);
        let a = w.layers[0]
            .attention
            .as_ref()
            .expect("layer 0 is attention");
        assert_eq!(a.config.window, None);
        assert_eq!(w.layers[0].q_proj.out_features, 4 * a.config.head_dim);
        assert!(w.layers[1].attention.is_none());
        assert_eq!(
            w.layers[2].attention.as_ref().unwrap().config.window,
            Some(64)
        );
        let hybrid = preset("fla_hybrid_1.3b").unwrap().json;
        let params = total_params(&ModelConfig::from_json_str(hybrid).unwrap()) as f64;
        assert!((1.2e9..1.4e9).contains(&params), "{params}");
    }

    #[test]
    fn options_parse() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let parse =
            |s: &[&str]| Cli::try_parse_from(std::iter::once("bench").chain(s.iter().copied()));
        let o = parse(&["--quick", "--json", "x.json", "--contexts", "1,8"])
            .unwrap()
            .options;
        assert!(o.quick && o.json.as_deref() == Some("x.json"));
        assert_eq!(o.contexts, vec![1, 8]);
        assert!(parse(&["--preset", "nope"]).is_err());
        assert!(parse(&["--preset", "test"]).is_ok());
        assert!(parse(&["--preset", "test_hybrid"]).is_ok());
        let o = parse(&["--weights", "f16,q4"]).unwrap().options;
        assert_eq!(o.weights, vec![WeightPrecision::F16, WeightPrecision::Q4]);
        assert!(parse(&["--weights", "int4"]).is_err());
    }
}
