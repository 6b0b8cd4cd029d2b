//! Embedding retnet in a program: load a checkpoint, put it on the GPU, prefill a prompt,
//! decode token by token, fork a session, save its state, and decode several sequences in one
//! batch.
//!
//! ```sh
//! cargo run --release --example embed -- models/retnet-shakespeare "ROMEO:"
//! ```
//!
//! Everything in the library is async (so that it also runs in a browser); a native program
//! drives it with any executor — here `pollster` at the edge.

use std::path::PathBuf;
use std::sync::Arc;

use retnet::model::sampling::argmax;
use retnet::model::{
    Generator, GpuBatch, GpuModel, GpuOptions, SamplingParams, Tokenizer, WeightPrecision,
};
use retnet::runtime::Device;
use retnet::ModelError;

fn main() -> Result<(), ModelError> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .unwrap_or_else(|| "models/retnet-shakespeare".into()),
    );
    let prompt = args.next().unwrap_or_else(|| "ROMEO:\n".into());
    pollster::block_on(run(dir, prompt))
}

async fn run(dir: PathBuf, prompt: String) -> Result<(), ModelError> {
    // 1. Load config.json + safetensors (torchscale or fla naming; f32, f16 or bf16) straight
    //    to the GPU, tensor by tensor (RETNET_BACKEND / RETNET_ADAPTER pick the adapter).
    let device = Arc::new(Device::from_env().await?);
    let options = GpuOptions {
        weights: WeightPrecision::F16,
    };
    let gpu = GpuModel::load(device, &dir, options).await?;

    // 2. The tokenizer: tokenizer.json next to the weights, or bytes for a byte-level model.
    let tokenizer = Tokenizer::for_model(&dir, gpu.config())?;

    // 3. Prefill the prompt (chunkwise), then decode (recurrent, O(1) per token).
    let mut session = Generator::new(gpu.session()?);
    session.prefill(&tokenizer.encode(&prompt)?).await?;
    let params = SamplingParams {
        temperature: 0.8,
        top_k: 40,
        top_p: 0.95,
        repeat_penalty: 1.1,
        seed: 42,
    };
    let mut ids = Vec::new();
    for _ in 0..64 {
        ids.push(session.next_token(&params).await?);
    }
    println!("{}", String::from_utf8_lossy(&tokenizer.decode(&ids)?));

    // 4. Fork: two continuations of the same context, computed independently.
    let mut other = session.fork()?;
    let greedy = SamplingParams::greedy();
    let a: Vec<u32> = take_tokens(&mut session, &greedy, 16).await?;
    let b: Vec<u32> = take_tokens(&mut other, &greedy, 16).await?;
    assert_eq!(a, b, "greedy continuations of identical states agree");

    // 5. Save the session; `Generator::load` (on either backend) resumes it exactly.
    let path = std::env::temp_dir().join("retnet-example-state.safetensors");
    session.save(&path).await?;
    println!(
        "state saved to {} at position {}",
        path.display(),
        session.position()
    );

    // 6. Batched decode: sequences of different lengths, one token each per step, one dispatch
    //    per kernel for all of them.
    let mut batch = GpuBatch::new(&gpu, 4)?;
    let mut next = Vec::new();
    for prompt in ["ROMEO:\n", "JULIET:\nO Romeo, Romeo!", "Enter"] {
        let mut s = gpu.session()?;
        let logits = s.prefill(&tokenizer.encode(prompt)?).await?;
        next.push((batch.insert(&s)?, argmax(&logits)));
    }
    let vocab = gpu.config().vocab_size;
    let mut texts = vec![Vec::new(); next.len()];
    for _ in 0..32 {
        let logits = batch.step(&next).await?;
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            texts[i].push(next[i].1);
            next[i].1 = argmax(row);
        }
    }
    for text in texts {
        println!(
            "batched: {:?}",
            String::from_utf8_lossy(&tokenizer.decode(&text)?)
        );
    }
    Ok(())
}

/// `n` tokens from a generator.
async fn take_tokens<E: retnet::model::Engine>(
    session: &mut Generator<E>,
    params: &SamplingParams,
    n: usize,
) -> Result<Vec<u32>, ModelError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(session.next_token(params).await?);
    }
    Ok(out)
}
