//! Weights written to the GPU piece by piece: the host converts a few MiB at a time into the
//! buffer's format, and the queue's staging copies are released by waiting for the GPU every
//! few tens of MiB ([`Device::uploads_done`]), so a model of any size loads in bounded host
//! memory.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use half::f16;
use half::slice::HalfFloatSliceExt;
use retnet_kernels::quant::RowEncoder;
use retnet_kernels::WeightFormat;

use crate::buffer::{GpuBuffer, RowBlock, Weights};
use crate::device::Device;
use crate::error::RuntimeError;

/// Bytes converted on the host before they are handed to the queue.
const STAGE_BYTES: usize = 4 << 20;

/// Rows per block are rounded to a multiple of this where the limit allows, so that blocks
/// start on whole tiles of the matmul (64 columns of Y) and on 16-byte boundaries of Y.
const BLOCK_ROW_GRANULE: u64 = 64;

impl Device {
    /// A zero-filled weight matrix of `rows` × `row_len` values in `format`, to fill with a
    /// [`WeightWriter`]. A matrix larger than one storage binding (or one buffer) of the adapter
    /// is split into row blocks of whole rows, as few as fit, of equal size but the last; only
    /// a single row over the limit is refused ([`RuntimeError::BufferTooLarge`]).
    pub fn create_weights(
        &self,
        label: &str,
        rows: usize,
        row_len: usize,
        format: WeightFormat,
    ) -> Result<Weights, RuntimeError> {
        self.check_format(format)?;
        let too_many = |what: &str| RuntimeError::Wgpu(format!("weights {label:?}: {what}"));
        let rows32 = u32::try_from(rows).map_err(|_| too_many("more rows than a u32 counts"))?;
        let row_bytes = format
            .row_bytes(row_len as u64)
            .ok_or_else(|| too_many("a row's bytes overflow"))?;
        let total = row_bytes
            .checked_mul(rows as u64)
            .ok_or_else(|| too_many("the matrix's bytes overflow"))?;
        let limits = self.limits();
        // Buffers are padded to 16 bytes, so a block must fit the limit after padding.
        let limit = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            / 16
            * 16;
        if total <= limit || rows <= 1 {
            let buffer = self.create_storage(label, total)?;
            return Ok(Weights::whole(buffer, rows32, row_len, format));
        }
        let max_rows = limit / row_bytes.max(1);
        if max_rows == 0 {
            // Not even one row fits a binding: no split helps.
            let (limit, max) = if limits.max_storage_buffer_binding_size <= limits.max_buffer_size {
                (
                    "max_storage_buffer_binding_size",
                    limits.max_storage_buffer_binding_size,
                )
            } else {
                ("max_buffer_size", limits.max_buffer_size)
            };
            return Err(RuntimeError::BufferTooLarge {
                label: format!("{label} (one row)"),
                size: row_bytes,
                limit,
                max,
            });
        }
        let parts = (rows as u64).div_ceil(max_rows);
        let mut per_block = (rows as u64).div_ceil(parts);
        let aligned = per_block.next_multiple_of(BLOCK_ROW_GRANULE);
        if aligned <= max_rows {
            per_block = aligned;
        }
        let block = |first: u64| -> Result<RowBlock, RuntimeError> {
            let n = per_block.min(rows as u64 - first);
            let block_label = format!("{label} rows {first}..{}", first + n);
            Ok(RowBlock {
                buffer: self.create_storage(&block_label, n * row_bytes)?,
                // Both at most `rows`, a u32.
                first_row: first as u32,
                rows: n as u32,
            })
        };
        let first = block(0)?;
        let mut more = Vec::with_capacity((parts as usize).saturating_sub(1));
        let mut next = u64::from(first.rows);
        while next < rows as u64 {
            let b = block(next)?;
            next += u64::from(b.rows);
            more.push(b);
        }
        Ok(Weights {
            first,
            more,
            row_len,
            format,
        })
    }

    /// A weight matrix of `values.len() / row_len` rows in `format`, written at once (tests and
    /// verification; models stream theirs with a [`WeightWriter`]). Quantized formats are
    /// encoded row by row, as a streamed load encodes them.
    pub fn upload_matrix(
        &self,
        label: &str,
        values: &[f32],
        row_len: usize,
        format: WeightFormat,
    ) -> Result<Weights, RuntimeError> {
        if row_len == 0 || values.len() % row_len != 0 {
            return Err(RuntimeError::Wgpu(format!(
                "weights {label:?}: {} values are not rows of {row_len}",
                values.len()
            )));
        }
        let weights = self.create_weights(label, values.len() / row_len, row_len, format)?;
        let mut writer = WeightWriter::new(self, &[(&weights, values.len())])?;
        writer.push(values)?;
        writer.finish()?;
        Ok(weights)
    }

    pub(crate) fn check_format(&self, format: WeightFormat) -> Result<(), RuntimeError> {
        match format {
            WeightFormat::F16 if !self.features().shader_f16 => Err(RuntimeError::MissingFeature {
                kernel: "f16 weights",
                needed: "shader-f16".into(),
                available: self.features().to_string(),
            }),
            // q4's block parameters are f16 pairs, read with `unpack2x16float` too.
            WeightFormat::F16Packed | WeightFormat::Q4 if !self.supports_half_weights() => {
                Err(RuntimeError::NoHalfPrecision)
            }
            _ => Ok(()),
        }
    }

    /// Submits the writes queued so far and resolves once the GPU has consumed them, so that
    /// wgpu can free their staging memory. Never blocks: like a read-back, it polls the device
    /// each time it is polled (natively) or waits for the browser's callback.
    pub async fn uploads_done(&self) -> Result<(), RuntimeError> {
        self.check_lost()?;
        self.queue.submit([]);
        let state = Arc::new(Mutex::new(DoneState::default()));
        let callback_state = Arc::clone(&state);
        self.queue.on_submitted_work_done(move || {
            if let Ok(mut state) = callback_state.lock() {
                state.done = true;
                if let Some(waker) = state.waker.take() {
                    waker.wake();
                }
            }
        });
        WorkDone {
            device: self,
            state,
        }
        .await?;
        self.take_uncaptured_error()
    }
}

#[derive(Default)]
struct DoneState {
    done: bool,
    waker: Option<Waker>,
}

/// Resolves when `on_submitted_work_done` has run (or the device is lost).
struct WorkDone<'a> {
    device: &'a Device,
    state: Arc<Mutex<DoneState>>,
}

impl WorkDone<'_> {
    fn done(&self, cx: &Context<'_>) -> bool {
        match self.state.lock() {
            Ok(mut state) => {
                if !state.done {
                    state.waker = Some(cx.waker().clone());
                }
                state.done
            }
            Err(_) => true,
        }
    }
}

impl Future for WorkDone<'_> {
    type Output = Result<(), RuntimeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done(cx) {
            return Poll::Ready(Ok(()));
        }
        // Non-blocking: runs the callbacks of finished work, if any.
        let _ = self.device.device.poll(wgpu::PollType::Poll);
        if self.done(cx) {
            return Poll::Ready(Ok(()));
        }
        if let Err(e) = self.device.check_lost() {
            return Poll::Ready(Err(e));
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            // Nothing else wakes us natively: ask to be polled again, letting the driver's
            // threads run first.
            cx.waker().wake_by_ref();
            std::thread::yield_now();
        }
        Poll::Pending
    }
}

/// Fills one or more weight matrices front to back with f32 values, converted to their format a
/// few MiB at a time and queued with `write_buffer`. A matrix split into row blocks is filled
/// block after block: values may arrive in pieces of any size, across block boundaries, and
/// boundaries need not fall on 4-byte words (an odd count of halves is carried into the next
/// write; each block's buffer starts on a word of its own). The block formats (int8, q4) are
/// quantized here, as they stream in: a partial quantization block is carried from one piece to
/// the next ([`RowEncoder`]); row blocks hold whole rows, so they start on a quantization block.
pub struct WeightWriter<'a> {
    device: &'a Device,
    format: WeightFormat,
    /// Each buffer and how many values it receives (zero-sized ones are dropped).
    targets: Vec<(&'a GpuBuffer, usize)>,
    current: usize,
    /// Values given to the current target so far.
    filled: usize,
    /// Converted bytes not yet queued; they start at byte `queued_in_target` of the target.
    staged: Vec<u8>,
    halves: Vec<f16>,
    /// The block formats' encoder (rows of the matrix's `row_len`) and its output words.
    encoder: Option<RowEncoder>,
    words: Vec<u32>,
    queued_in_target: u64,
    /// Bytes queued by this writer since the last [`WeightWriter::take_queued`].
    queued: u64,
}

impl<'a> WeightWriter<'a> {
    /// A writer of `targets` in order: `(weights, values)`, all of one format, each holding at
    /// least `values` (its first `values`, row-major, are written).
    pub fn new(device: &'a Device, targets: &[(&'a Weights, usize)]) -> Result<Self, RuntimeError> {
        let format = targets.first().map_or(WeightFormat::F32, |(w, _)| w.format);
        let row_len = targets.first().map_or(1, |(w, _)| w.row_len);
        let mut kept = Vec::with_capacity(targets.len());
        for &(weights, values) in targets {
            let capacity: usize = weights
                .blocks()
                .map(|b| b.rows as usize * weights.row_len)
                .sum();
            // Quantized rows are encoded whole: every buffer gets whole rows of one length.
            let whole_rows = format.quant().is_none()
                || (weights.row_len == row_len && values % row_len.max(1) == 0);
            if weights.format != format || values > capacity || !whole_rows {
                return Err(RuntimeError::Wgpu(format!(
                    "weights {:?}: {values} {} values do not fit its {capacity} of {}",
                    weights.buffer().label(),
                    format.name(),
                    weights.format.name(),
                )));
            }
            let mut left = values;
            for block in weights.blocks() {
                let take = left.min(block.rows as usize * weights.row_len);
                if take > 0 {
                    kept.push((&block.buffer, take));
                }
                left -= take;
            }
        }
        Ok(Self {
            device,
            format,
            targets: kept,
            current: 0,
            filled: 0,
            staged: Vec::with_capacity(STAGE_BYTES + 8),
            halves: Vec::new(),
            encoder: format.quant().map(|q| RowEncoder::new(q, row_len)),
            words: Vec::new(),
            queued_in_target: 0,
            queued: 0,
        })
    }

    /// Appends values (converted to the buffers' format).
    pub fn push(&mut self, mut values: &[f32]) -> Result<(), RuntimeError> {
        let per_stage = (STAGE_BYTES as f64 / self.format.bytes_per_value()) as usize;
        while !values.is_empty() {
            let Some(&(_, capacity)) = self.targets.get(self.current) else {
                return Err(self.overflow(values.len()));
            };
            let take = (capacity - self.filled).min(values.len()).min(per_stage);
            let (now, rest) = values.split_at(take);
            self.convert(now);
            self.filled += take;
            values = rest;
            if self.filled == capacity {
                self.write_staged(true);
                self.current += 1;
                self.filled = 0;
                self.queued_in_target = 0;
            } else if self.staged.len() >= STAGE_BYTES {
                self.write_staged(false);
            }
        }
        Ok(())
    }

    fn convert(&mut self, values: &[f32]) {
        match self.format {
            WeightFormat::F32 => self.staged.extend_from_slice(bytemuck::cast_slice(values)),
            WeightFormat::F16 | WeightFormat::F16Packed => {
                self.halves.clear();
                self.halves.resize(values.len(), f16::ZERO);
                self.halves.convert_from_f32_slice(values);
                self.staged
                    .extend_from_slice(bytemuck::cast_slice(self.halves.as_slice()));
            }
            WeightFormat::Int8 | WeightFormat::Q4 => {
                if let Some(encoder) = &mut self.encoder {
                    self.words.clear();
                    encoder.push(values, &mut self.words);
                    self.staged
                        .extend_from_slice(bytemuck::cast_slice(self.words.as_slice()));
                }
            }
        }
    }

    /// Queues the staged bytes that fill whole 4-byte words (all of them, zero-padded, at the
    /// end of a target), keeping the rest for the next write.
    fn write_staged(&mut self, end_of_target: bool) {
        let Some(&(buffer, _)) = self.targets.get(self.current) else {
            return;
        };
        let word = wgpu::COPY_BUFFER_ALIGNMENT as usize;
        if end_of_target {
            self.staged
                .resize(self.staged.len().div_ceil(word) * word, 0);
        }
        let whole = self.staged.len() / word * word;
        if whole == 0 {
            return;
        }
        let bytes = self.staged.get(..whole).unwrap_or_default();
        self.device
            .queue
            .write_buffer(&buffer.buffer, self.queued_in_target, bytes);
        self.queued_in_target += whole as u64;
        self.queued += whole as u64;
        self.staged.drain(..whole);
    }

    /// Bytes queued since the last call: the loader waits for the GPU
    /// ([`Device::uploads_done`]) when enough have piled up.
    pub fn take_queued(&mut self) -> u64 {
        std::mem::take(&mut self.queued)
    }

    /// Checks that every buffer received all its values.
    pub fn finish(self) -> Result<(), RuntimeError> {
        if self.current == self.targets.len() {
            return Ok(());
        }
        let missing: usize = self
            .targets
            .iter()
            .skip(self.current)
            .map(|(_, n)| n)
            .sum::<usize>()
            - self.filled;
        let label = self
            .targets
            .get(self.current)
            .map_or("", |(b, _)| b.label());
        Err(RuntimeError::Wgpu(format!(
            "weights {label:?}: {missing} values were never written"
        )))
    }

    fn overflow(&self, extra: usize) -> RuntimeError {
        let label = self.targets.last().map_or("", |(b, _)| b.label());
        RuntimeError::Wgpu(format!(
            "weights {label:?}: {extra} values more than the buffers hold"
        ))
    }
}
