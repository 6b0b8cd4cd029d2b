//! RetNet in the browser: JavaScript bindings (wasm-bindgen) over the same GPU model and
//! generation sessions that native programs use, running on the browser's WebGPU.
//!
//! ```js
//! import init, { Model } from "./pkg/retnet_web.js";
//! await init();
//! const model = await Model.load(configJson, new Uint8Array(safetensors), "f16");
//! const session = model.session();
//! await session.prefill(model.encode("ROMEO:"));
//! const decoder = new TextDecoder();
//! await session.generate(200, { temperature: 0 }, (bytes) => {
//!   out.textContent += decoder.decode(bytes, { stream: true });
//! });
//! const state = await session.save(); // Uint8Array; model.resume(state) continues it
//! ```
//!
//! Every method that touches the GPU returns a Promise; nothing blocks. Errors are thrown as
//! JavaScript `Error`s with the library's one-line message. Only byte-level models (a vocabulary
//! of 256, like the shipped default model) are supported: the Hugging Face tokenizer is not part
//! of the WebAssembly build.

use std::rc::Rc;
use std::sync::Arc;

use js_sys::{Function, Reflect, Uint32Array, Uint8Array};
use retnet_model::{
    Bytes, Generator, GpuModel, GpuOptions, GpuSession, ModelConfig, SamplingParams, TensorStore,
    TextStream, Tokenizer, WeightPrecision,
};
use retnet_runtime::kernels::WeightFormat;
use retnet_runtime::{Device, DeviceOptions};
use wasm_bindgen::prelude::*;

/// One line for JavaScript's `Error`.
fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A model on the GPU with its tokenizer.
struct Loaded {
    gpu: GpuModel,
    precision: WeightPrecision,
    tokenizer: Tokenizer,
}

/// A RetNet model loaded onto the browser's GPU.
#[wasm_bindgen]
pub struct Model {
    /// Shared with the sessions made from it (they hold the model's GPU handle and the
    /// tokenizer), so the GPU memory is freed once JavaScript has dropped all of them.
    loaded: Rc<Loaded>,
}

#[wasm_bindgen]
impl Model {
    /// Loads a model from the text of its `config.json` and the bytes of its
    /// `model.safetensors` (f32, f16 or bf16), on the browser's WebGPU adapter. `weights` is the
    /// precision of the weight matrices on the GPU: `"f32"`, `"f16"` (read natively where
    /// the adapter has `shader-f16`, packed in u32 otherwise), or the block formats `"int8"`
    /// and `"q4"` (docs/weight-formats.md).
    pub async fn load(
        config_json: String,
        safetensors: Vec<u8>,
        weights: String,
    ) -> Result<Model, JsError> {
        let weights = match weights.as_str() {
            "f32" => WeightPrecision::F32,
            "f16" => WeightPrecision::F16,
            "int8" => WeightPrecision::Int8,
            "q4" => WeightPrecision::Q4,
            other => {
                return Err(JsError::new(&format!(
                    "weights must be \"f32\", \"f16\", \"int8\" or \"q4\", got {other:?}"
                )))
            }
        };
        let config = ModelConfig::from_json_str(&config_json).map_err(js_error)?;
        let tokenizer = Tokenizer::bytes_for(&config).ok_or_else(|| {
            JsError::new(&format!(
                "the browser build reads byte-level models only (a vocabulary of 256), \
                 this one has {}",
                config.vocab_size
            ))
        })?;
        let store = TensorStore::from_bytes("model.safetensors", Bytes::Owned(safetensors))
            .map_err(js_error)?;
        let device = Device::new(&DeviceOptions::default())
            .await
            .map_err(js_error)?;
        // `GpuModel` takes an `Arc` (shared across threads natively); in the browser wgpu's
        // objects are single-threaded and so is this page.
        #[allow(clippy::arc_with_non_send_sync)]
        let device = Arc::new(device);
        // Tensor by tensor from the bytes to the GPU: no f32 copy of the model in wasm memory.
        let options = GpuOptions { weights };
        let gpu = GpuModel::from_store(device, config, &store, options, &mut |_, _| {})
            .await
            .map_err(js_error)?;
        Ok(Model {
            loaded: Rc::new(Loaded {
                gpu,
                precision: weights,
                tokenizer,
            }),
        })
    }

    /// The adapter and what the kernels use of it, e.g. `"swiftshader (BrowserWebGpu), kernels:
    /// core, weights: f16-packed"` (browsers may hide the adapter's name).
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        let device = self.loaded.gpu.device();
        let info = device.adapter_info();
        let name = if info.name.is_empty() {
            "WebGPU adapter"
        } else {
            info.name.as_str()
        };
        format!(
            "{name} ({:?}), kernels: {}, weights: {}",
            info.backend,
            device.features(),
            self.weight_format().name()
        )
    }

    fn weight_format(&self) -> WeightFormat {
        // As `Device::upload_weights` chooses for f16 data on this device.
        match self.loaded.precision {
            WeightPrecision::F32 => WeightFormat::F32,
            WeightPrecision::F16 => WeightFormat::half_for(self.loaded.gpu.device().features()),
            WeightPrecision::Int8 => WeightFormat::Int8,
            WeightPrecision::Q4 => WeightFormat::Q4,
        }
    }

    /// Entries of the vocabulary.
    #[wasm_bindgen(getter, js_name = vocabSize)]
    pub fn vocab_size(&self) -> usize {
        self.loaded.gpu.config().vocab_size
    }

    /// Bytes of GPU memory the weights take.
    #[wasm_bindgen(getter, js_name = gpuBytes)]
    pub fn gpu_bytes(&self) -> f64 {
        self.loaded.gpu.buffer_bytes() as f64
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, JsError> {
        self.loaded.tokenizer.encode(text).map_err(js_error)
    }

    /// The text bytes (UTF-8 where the model wrote UTF-8) of token ids.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>, JsError> {
        self.loaded.tokenizer.decode(ids).map_err(js_error)
    }

    /// A fresh session: zero state at position 0.
    pub fn session(&self) -> Result<Session, JsError> {
        let engine = self.loaded.gpu.session().map_err(js_error)?;
        Ok(Session::new(
            Generator::new(engine),
            Rc::clone(&self.loaded),
        ))
    }

    /// Continues a session saved by [`Session::save`] (here or by `retnet generate
    /// --save-state`); refused if it belongs to another model.
    pub fn resume(&self, state: &[u8]) -> Result<Session, JsError> {
        let engine = self.loaded.gpu.session().map_err(js_error)?;
        let generator = Generator::load_bytes(engine, "state", state).map_err(js_error)?;
        Ok(Session::new(generator, Rc::clone(&self.loaded)))
    }
}

/// One sequence being generated: recurrent state on the GPU, sampler position and history.
#[wasm_bindgen]
pub struct Session {
    generator: Generator<GpuSession>,
    /// The model's tokenizer (and handle), shared with the [`Model`].
    loaded: Rc<Loaded>,
}

impl Session {
    fn new(generator: Generator<GpuSession>, loaded: Rc<Loaded>) -> Self {
        Self { generator, loaded }
    }
}

#[wasm_bindgen]
impl Session {
    /// Tokens consumed so far.
    #[wasm_bindgen(getter)]
    pub fn position(&self) -> usize {
        self.generator.position()
    }

    /// Feeds prompt tokens (chunkwise), after the pending token if there is one.
    pub async fn prefill(&mut self, tokens: Vec<u32>) -> Result<(), JsError> {
        self.generator.prefill(&tokens).await.map_err(js_error)
    }

    /// Samples the next token on the host from the last logits (feeding the previous pending
    /// token first: one recurrent step). The token stays pending until the next call.
    /// `sampling`: see [`Session::generate`].
    #[wasm_bindgen(js_name = nextToken)]
    pub async fn next_token(&mut self, sampling: JsValue) -> Result<u32, JsError> {
        let params = sampling_params(&sampling)?;
        self.generator.next_token(&params).await.map_err(js_error)
    }

    /// Generates up to `count` tokens with the sampler on the GPU, calling
    /// `onText(bytes: Uint8Array, ids: Uint32Array)` as they are read back (every 16 tokens);
    /// `onText` returning `false` stops early. Resolves to the number of tokens generated.
    /// `sampling` is `{ temperature, topK, topP, repeatPenalty, seed }`, every field optional
    /// (defaults 0.8, 40, 0.95, 1, 0; temperature 0 is greedy).
    pub async fn generate(
        &mut self,
        count: usize,
        sampling: JsValue,
        on_text: Function,
    ) -> Result<usize, JsError> {
        let params = sampling_params(&sampling)?;
        let loaded = Rc::clone(&self.loaded);
        let tokenizer = &loaded.tokenizer;
        let mut text = TextStream::new();
        let mut failed: Option<JsError> = None;
        let mut emit = |ids: &[u32]| -> bool {
            let mut bytes = Vec::new();
            for &id in ids {
                match text.push(tokenizer, id) {
                    Ok(b) => bytes.extend(b),
                    Err(e) => {
                        failed = Some(js_error(e));
                        return false;
                    }
                }
            }
            let args = (Uint8Array::from(bytes.as_slice()), Uint32Array::from(ids));
            match on_text.call2(&JsValue::NULL, &args.0, &args.1) {
                Ok(answer) => answer.as_bool() != Some(false),
                Err(thrown) => {
                    let message = thrown
                        .as_string()
                        .or_else(|| js_sys::Error::from(thrown).message().as_string())
                        .unwrap_or_else(|| "the onText callback threw".into());
                    failed = Some(JsError::new(&message));
                    false
                }
            }
        };
        let generated = self.generator.generate(&params, count, &mut emit).await;
        if let Some(e) = failed {
            return Err(e);
        }
        generated.map_err(js_error)
    }

    /// The session as the bytes of a state file (recurrent state, pending token, sampler
    /// position), tagged with the model's fingerprint; [`Model::resume`] continues it exactly.
    pub async fn save(&self) -> Result<Vec<u8>, JsError> {
        self.generator.save_bytes().await.map_err(js_error)
    }

    /// An independent copy (state copied on the GPU); both continue separately.
    pub fn fork(&self) -> Result<Session, JsError> {
        let generator = self.generator.fork().map_err(js_error)?;
        Ok(Session::new(generator, Rc::clone(&self.loaded)))
    }
}

/// Sampling parameters from `{ temperature, topK, topP, repeatPenalty, seed }` (fields optional,
/// `undefined` or `null` for all defaults).
fn sampling_params(options: &JsValue) -> Result<SamplingParams, JsError> {
    let mut params = SamplingParams::default();
    if options.is_undefined() || options.is_null() {
        return Ok(params);
    }
    if !options.is_object() {
        return Err(JsError::new(
            "sampling must be an object like { temperature: 0.8 }",
        ));
    }
    let number = |key: &str| -> Result<Option<f64>, JsError> {
        let value = Reflect::get(options, &JsValue::from_str(key))
            .map_err(|_| JsError::new(&format!("cannot read sampling.{key}")))?;
        if value.is_undefined() || value.is_null() {
            return Ok(None);
        }
        value
            .as_f64()
            .map(Some)
            .ok_or_else(|| JsError::new(&format!("sampling.{key} must be a number")))
    };
    // Integers up to 2^53 are exact in a JavaScript number.
    let whole = |key: &str, value: f64| -> Result<u64, JsError> {
        if value.is_finite() && value >= 0.0 && value.fract() == 0.0 && value <= 9.007e15 {
            Ok(value as u64)
        } else {
            Err(JsError::new(&format!(
                "sampling.{key} must be a whole number ≥ 0, got {value}"
            )))
        }
    };
    if let Some(t) = number("temperature")? {
        params.temperature = t as f32;
    }
    if let Some(k) = number("topK")? {
        params.top_k = usize::try_from(whole("topK", k)?).unwrap_or(usize::MAX);
    }
    if let Some(p) = number("topP")? {
        params.top_p = p as f32;
    }
    if let Some(r) = number("repeatPenalty")? {
        params.repeat_penalty = r as f32;
    }
    if let Some(s) = number("seed")? {
        params.seed = whole("seed", s)?;
    }
    params.validate().map_err(|m| JsError::new(&m))?;
    Ok(params)
}
