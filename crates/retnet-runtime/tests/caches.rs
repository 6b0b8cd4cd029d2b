//! Recording the same dispatch sequence again creates no GPU object; errors are clear.
// Test code: clippy.toml allows these in #[test] functions; the helpers here are test code too.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::{device, read, Rng};
use retnet_runtime::kernels::embedding::{gather, EmbeddingParams, GatherBuffers};
use retnet_runtime::kernels::gated_activation::{
    gated_activation, Activation, GatedActivationBuffers, GatedActivationParams,
};
use retnet_runtime::kernels::head_norm_gate::{
    head_norm_gate_unweighted, HeadGateBuffers, HeadNormGateParams,
};
use retnet_runtime::kernels::linear::{linear, LinearBuffers, LinearParams, Reduction};
use retnet_runtime::kernels::retention::{recurrent, RetentionBuffers, RetentionParams, Strided};
use retnet_runtime::kernels::rms_norm::{rms_norm, RmsNormBuffers, RmsNormParams};
use retnet_runtime::kernels::rotary::{rotary, RotaryBuffers, RotaryParams, RotaryStyle};
use retnet_runtime::kernels::{Bound, BufferList};
use retnet_runtime::{Device, DeviceOptions, GpuBuffer, RuntimeError, WeightData, Weights};

/// The buffers of `y = x · wᵀ`.
fn linear_buffers<'b>(
    w: &'b Weights,
    input: &'b GpuBuffer,
    output: &'b GpuBuffer,
) -> LinearBuffers<'b, GpuBuffer> {
    LinearBuffers {
        weight: w.buffer(),
        input,
        output,
    }
}

/// A one-layer RetNet decode step's worth of buffers (fla-like: fused q|k|v|g projection).
struct Toy {
    d: u32,
    heads: u32,
    k: u32,
    v: u32,
    ffn: u32,
    vocab: u32,
    embed: Weights,
    qkvg: Weights,
    out_proj: Weights,
    up: Weights,
    down: Weights,
    norm: GpuBuffer,
    theta: GpuBuffer,
    log_decay: GpuBuffer,
    token: GpuBuffer,
    x: GpuBuffer,
    h: GpuBuffer,
    proj: GpuBuffer,
    attn: GpuBuffer,
    gated: GpuBuffer,
    ffn_in: GpuBuffer,
    ffn_act: GpuBuffer,
    state: GpuBuffer,
    logits: GpuBuffer,
}

impl Toy {
    fn new(device: &Device) -> Toy {
        let mut rng = Rng::new(21);
        let (d, heads, k, v, ffn, vocab) = (16u32, 2u32, 8u32, 12u32, 24u32, 50u32);
        let qkvg_out = heads * (2 * k + 2 * v);
        let mut weights = |label, rows: u32, cols: u32| {
            let data = rng.vec((rows * cols) as usize);
            device
                .upload_weights(label, WeightData::F32(&data))
                .unwrap()
        };
        let embed = weights("embed", vocab, d);
        let qkvg = weights("qkvg", qkvg_out, d);
        let out_proj = weights("out", d, heads * v);
        let up = weights("gate|up", 2 * ffn, d);
        let down = weights("down", d, ffn);
        let storage = |label, len: u32| device.create_storage_f32(label, len as usize).unwrap();
        Toy {
            d,
            heads,
            k,
            v,
            ffn,
            vocab,
            embed,
            qkvg,
            out_proj,
            up,
            down,
            norm: device.upload_f32("norm", &vec![1.0; d as usize]).unwrap(),
            theta: device
                .upload_f32("theta", &[1.0, 0.1, 0.01, 0.001])
                .unwrap(),
            log_decay: device.upload_f32("log γ", &[-0.03, 0.0]).unwrap(),
            token: device.upload_u32("token", &[3]).unwrap(),
            x: storage("x", d),
            h: storage("h", d),
            proj: storage("q|k|v|g", qkvg_out),
            attn: storage("retention out", heads * v),
            gated: storage("gated", heads * v),
            ffn_in: storage("gate|up out", 2 * ffn),
            ffn_act: storage("ffn act", ffn),
            state: storage("state", heads * k * v),
            logits: storage("logits", vocab),
        }
    }

    /// Records one decode step at `position`.
    fn step(&self, device: &Device, position: u32) -> Result<(), RuntimeError> {
        let reduction = Reduction::for_features(device.features());
        let (d, heads, k, v, ffn) = (self.d, self.heads, self.k, self.v, self.ffn);
        let row = heads * (2 * k + 2 * v);
        let mut s = device.sequence("decode step");
        let embed = EmbeddingParams {
            tokens: 1,
            dim: d,
            scale: 1.0,
        };
        let buffers = GatherBuffers {
            weight: self.embed.buffer(),
            token_ids: &self.token,
            output: &self.x,
        };
        s.dispatch(gather(self.embed.format, embed, buffers))?;
        let norm = RmsNormParams {
            rows: 1,
            dim: d,
            eps: 1e-6,
        };
        let normed = RmsNormBuffers {
            input: &self.x,
            norm_weight: &self.norm,
            output: &self.h,
        };
        s.dispatch(rms_norm(norm, normed))?;
        let buffers = linear_buffers(&self.qkvg, &self.h, &self.proj);
        let qkvg = LinearParams::new(1, d, row);
        s.dispatch(linear(self.qkvg.format, reduction, qkvg, buffers))?;
        for (offset, scale) in [(0, 1.0 / (k as f32).sqrt()), (heads * k, 1.0)] {
            let params = RotaryParams {
                tokens: 1,
                heads,
                head_dim: k,
                start_pos: position,
                row_stride: row,
                col_offset: offset,
                scale,
            };
            let buffers = RotaryBuffers {
                theta: &self.theta,
                x: &self.proj,
            };
            s.dispatch(rotary(RotaryStyle::Halves, params, buffers))?;
        }
        let retention = RetentionParams {
            tokens: 1,
            query_heads: heads,
            kv_heads: heads,
            key_dim: k,
            value_dim: v,
            start_pos: position,
            q: Strided {
                offset: 0,
                stride: row,
            },
            k: Strided {
                offset: heads * k,
                stride: row,
            },
            v: Strided {
                offset: 2 * heads * k,
                stride: row,
            },
            out: Strided::dense(heads * v),
            scale_by_decay_sum: false,
        };
        let p = &self.proj;
        let buffers = RetentionBuffers {
            q: p,
            k: p,
            v: p,
            log_decay: &self.log_decay,
            state: &self.state,
            output: &self.attn,
        };
        s.dispatch(recurrent(retention, buffers))?;
        let gate = HeadNormGateParams {
            tokens: 1,
            heads,
            head_dim: v,
            eps: 1e-6,
            input: Strided::dense(heads * v),
            gate: Strided {
                offset: 2 * heads * k + heads * v,
                stride: row,
            },
            out: Strided::dense(heads * v),
        };
        let buffers = HeadGateBuffers {
            input: &self.attn,
            gate: &self.proj,
            output: &self.gated,
        };
        s.dispatch(head_norm_gate_unweighted(gate, buffers))?;
        let out = LinearParams {
            accumulate: Some(1.0),
            ..LinearParams::new(1, heads * v, d)
        };
        let buffers = linear_buffers(&self.out_proj, &self.gated, &self.x);
        s.dispatch(linear(self.out_proj.format, reduction, out, buffers))?;
        s.dispatch(rms_norm(norm, normed))?;
        let buffers = linear_buffers(&self.up, &self.h, &self.ffn_in);
        let up = LinearParams::new(1, d, 2 * ffn);
        s.dispatch(linear(self.up.format, reduction, up, buffers))?;
        let act = GatedActivationParams {
            tokens: 1,
            width: ffn,
            act: Strided::dense(2 * ffn),
            linear: Strided {
                offset: ffn,
                stride: 2 * ffn,
            },
            out: Strided::dense(ffn),
        };
        let buffers = GatedActivationBuffers {
            act_input: &self.ffn_in,
            linear_input: &self.ffn_in,
            output: &self.ffn_act,
        };
        s.dispatch(gated_activation(Activation::Silu, act, buffers))?;
        // x ← x + down(act), the residual fused into the projection as the model does.
        let down = LinearParams {
            accumulate: Some(1.0),
            ..LinearParams::new(1, ffn, d)
        };
        let buffers = linear_buffers(&self.down, &self.ffn_act, &self.x);
        s.dispatch(linear(self.down.format, reduction, down, buffers))?;
        s.dispatch(rms_norm(norm, normed))?;
        let buffers = linear_buffers(&self.embed, &self.h, &self.logits);
        let head = LinearParams::new(1, d, self.vocab);
        s.dispatch(linear(self.embed.format, reduction, head, buffers))?;
        s.submit()?;
        Ok(())
    }
}

#[test]
fn repeating_a_decode_step_creates_no_pipeline_bind_group_or_buffer() {
    let Some(device) = device() else { return };
    let toy = Toy::new(device);
    toy.step(device, 0).unwrap();
    let first_logits = read(device, &toy.logits, toy.vocab as usize);
    let after_first = device.cache_stats();
    assert!(after_first.pipelines > 0 && after_first.bind_groups > 0);

    let mut logits = Vec::new();
    for (position, token) in [(1u32, 7u32), (2, 11), (3, 7)] {
        device.write_u32(&toy.token, 0, &[token]);
        toy.step(device, position).unwrap();
        logits = read(device, &toy.logits, toy.vocab as usize);
        assert_eq!(
            device.cache_stats(),
            after_first,
            "step at position {position} created GPU objects"
        );
    }
    assert!(logits.iter().all(|v| v.is_finite()));
    assert_ne!(
        logits, first_logits,
        "the steps should see their new tokens and positions"
    );
}

#[test]
fn bind_groups_of_dropped_buffers_are_forgotten() {
    if device().is_none() {
        return;
    }
    // A device of its own: the shared one's cache changes under concurrent tests.
    let device = &pollster::block_on(Device::new(&DeviceOptions::default())).unwrap();
    let x = device.upload_f32("x", &[2.0; 8]).unwrap();
    let y = device.create_storage_f32("y", 8).unwrap();
    let before = device.cached_bind_groups();
    {
        let g = device.upload_f32("g", &[3.0; 8]).unwrap();
        let mut s = device.sequence("norm");
        let params = RmsNormParams {
            rows: 1,
            dim: 8,
            eps: 0.0,
        };
        let buffers = RmsNormBuffers {
            input: &x,
            norm_weight: &g,
            output: &y,
        };
        s.dispatch(rms_norm(params, buffers)).unwrap();
        s.submit().unwrap();
        assert!(device.cached_bind_groups() > before);
    }
    // `g` is dropped: the next submit forgets its bind group.
    device.sequence("empty").submit().unwrap();
    assert_eq!(device.cached_bind_groups(), before);
    // x / rms(x) · g = 1 · 3.
    assert_eq!(read(device, &y, 8), vec![3.0; 8]);
}

#[test]
fn misuse_is_reported_clearly() {
    let Some(device) = device() else { return };
    let x = device.upload_f32("x", &[1.0; 4]).unwrap();
    let mut s = device.sequence("misuse");
    let params = RmsNormParams {
        rows: 1,
        dim: 4,
        eps: 1e-6,
    };
    let aliased = RmsNormBuffers {
        input: &x,
        norm_weight: &x,
        output: &x,
    };
    let bound = rms_norm(params, aliased);
    // Only a kernel's own constructor names its buffers; a list by position (the xtask's
    // probes of kernels built outside the kernel crate) is checked for its length.
    let wrong_count = s.dispatch(Bound {
        buffers: BufferList::new(&[&x]),
        ..bound
    });
    assert!(matches!(
        wrong_count,
        Err(RuntimeError::WrongBufferCount {
            expected: 3,
            got: 1,
            ..
        })
    ));
    let aliased = s.dispatch(bound);
    assert!(matches!(
        aliased,
        Err(RuntimeError::AliasedOutput { binding: 3, .. })
    ));

    let options = DeviceOptions {
        adapter_name: Some("no such adapter".into()),
        ..Default::default()
    };
    let error = pollster::block_on(Device::new(&options)).unwrap_err();
    assert!(
        matches!(error, RuntimeError::AdapterNotFound { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(&device.adapter_info().name),
        "{error}"
    );

    let error = retnet_runtime::parse_backend("glide").unwrap_err();
    assert!(
        error.to_string().contains("vulkan, metal, dx12 or gl"),
        "{error}"
    );
    let no_adapter = RuntimeError::NoAdapter {
        backends: "VULKAN".into(),
    };
    assert!(no_adapter
        .to_string()
        .contains("apt-get install mesa-vulkan-drivers"));
}
