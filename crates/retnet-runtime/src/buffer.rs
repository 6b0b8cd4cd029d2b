//! GPU buffers: creation within the adapter's limits, upload, weights in f32 or f16, and
//! asynchronous read-back.

use crate::device::Device;
use crate::error::RuntimeError;
use half::f16;
use retnet_kernels::embedding::{gather, gather_rows, EmbeddingParams, GatherBuffers};
use retnet_kernels::linear::LinearParams;
use retnet_kernels::{Bound, WeightFormat};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

static NEXT_BUFFER_ID: AtomicU64 = AtomicU64::new(1);

/// Every buffer is a multiple of this many bytes, so kernels may bind it as `array<vec4<…>>`.
const SIZE_GRANULE: u64 = 16;

pub(crate) fn next_id() -> u64 {
    NEXT_BUFFER_ID.fetch_add(1, Ordering::Relaxed)
}

/// A storage buffer with an identity that the bind-group cache keys on.
pub struct GpuBuffer {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) id: u64,
    label: String,
    dropped: Arc<Mutex<Vec<u64>>>,
}

impl std::fmt::Debug for GpuBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuffer({:?}, {} bytes)",
            self.label,
            self.buffer.size()
        )
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // The device forgets the bind groups holding this buffer at its next submit.
        if let Ok(mut dropped) = self.dropped.lock() {
            dropped.push(self.id);
        }
    }
}

impl GpuBuffer {
    /// Size in bytes (a multiple of 16).
    pub fn size(&self) -> u64 {
        self.buffer.size()
    }

    /// The label given at creation.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The wgpu buffer.
    pub fn wgpu_buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// A weight matrix on the GPU and how it is stored: one buffer, or, where the matrix is larger
/// than one storage binding may be, several row blocks of whole rows, each its own buffer
/// ([`Device::create_matrix`]). Kernels run once per block ([`Weights::linear_parts`],
/// [`Weights::gather_parts`]); an unsplit matrix is one block and one dispatch, as before.
#[derive(Debug)]
pub struct Weights {
    /// The first row block (the whole matrix unless it is split)...
    pub(crate) first: RowBlock,
    /// ...and the others, in row order.
    pub(crate) more: Vec<RowBlock>,
    /// Values per row. Weights uploaded flat ([`Device::upload_weights`]) are seen as one row.
    pub(crate) row_len: usize,
    /// Its format; pick kernel variants with it.
    pub format: WeightFormat,
}

/// Rows `[first_row, first_row + rows)` of a weight matrix, in a buffer of their own.
#[derive(Debug)]
pub struct RowBlock {
    /// The rows' values, row-major from the block's first row.
    pub buffer: GpuBuffer,
    /// The matrix row the buffer starts with.
    pub first_row: u32,
    /// Rows in the block.
    pub rows: u32,
}

impl Weights {
    /// Weights in one buffer.
    pub(crate) fn whole(
        buffer: GpuBuffer,
        rows: u32,
        row_len: usize,
        format: WeightFormat,
    ) -> Self {
        Weights {
            first: RowBlock {
                buffer,
                first_row: 0,
                rows,
            },
            more: Vec::new(),
            row_len,
            format,
        }
    }

    /// The row blocks, in row order; one unless the matrix is larger than a binding.
    pub fn blocks(&self) -> impl Iterator<Item = &RowBlock> + '_ {
        std::iter::once(&self.first).chain(&self.more)
    }

    /// The first block's buffer: the whole matrix unless it is split ([`Weights::is_split`]).
    pub fn buffer(&self) -> &GpuBuffer {
        &self.first.buffer
    }

    /// The first block's buffer, owned (the whole matrix unless it is split).
    pub fn into_buffer(self) -> GpuBuffer {
        self.first.buffer
    }

    /// Whether the matrix is held in more than one row block.
    pub fn is_split(&self) -> bool {
        !self.more.is_empty()
    }

    /// Values per row (the matrix's input dimension).
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Bytes of all the blocks' buffers.
    pub fn size(&self) -> u64 {
        self.blocks().map(|b| b.buffer.size()).sum()
    }

    /// `Y = X · Wᵀ` as one product per row block: each block's buffer with `params` restricted
    /// to its rows ([`LinearParams::row_block`]: its columns of the same Y). `params` describe
    /// the whole matrix; an unsplit matrix gives them back unchanged.
    pub fn linear_parts(
        &self,
        params: LinearParams,
    ) -> impl Iterator<Item = (&GpuBuffer, LinearParams)> + '_ {
        let split = self.is_split();
        self.blocks().map(move |b| {
            let part = if split {
                params.row_block(b.first_row, b.rows)
            } else {
                params
            };
            (&b.buffer, part)
        })
    }

    /// The embedding gather from this table into `output`, one dispatch per row block (each
    /// writes the rows of the tokens in its block). An unsplit table gives the plain [`gather`].
    pub fn gather_parts<'b>(
        &'b self,
        params: EmbeddingParams,
        token_ids: &'b GpuBuffer,
        output: &'b GpuBuffer,
    ) -> impl Iterator<Item = Bound<'b, GpuBuffer>> + 'b {
        let split = self.is_split();
        let format = self.format;
        self.blocks().map(move |b| {
            let buffers = GatherBuffers {
                weight: &b.buffer,
                token_ids,
                output,
            };
            if split {
                gather_rows(format, params, b.first_row, b.rows, buffers)
            } else {
                gather(format, params, buffers)
            }
        })
    }
}

/// Host weights to upload.
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    /// Kept in f32.
    F32(&'a [f32]),
    /// Kept in f16.
    F16(&'a [f16]),
}

impl Device {
    fn check_size(&self, label: &str, size: u64) -> Result<(), RuntimeError> {
        let limits = self.limits();
        let too_large = |limit, max| RuntimeError::BufferTooLarge {
            label: label.to_string(),
            size,
            limit,
            max,
        };
        if size > limits.max_storage_buffer_binding_size {
            return Err(too_large(
                "max_storage_buffer_binding_size",
                limits.max_storage_buffer_binding_size,
            ));
        }
        if size > limits.max_buffer_size {
            return Err(too_large("max_buffer_size", limits.max_buffer_size));
        }
        Ok(())
    }

    /// Runs `create` (an allocation) inside out-of-memory and validation error scopes and
    /// returns what they caught as a typed error, so that a failed allocation is reported where
    /// it happens. On native backends wgpu reports errors synchronously: the popped scopes are
    /// ready at once. In the browser they resolve later, so there the scopes are not used and
    /// the uncaptured-error handler hands the error to the next submit.
    pub(crate) fn allocation<T>(
        &self,
        what: impl FnOnce() -> String,
        create: impl FnOnce() -> T,
    ) -> Result<T, RuntimeError> {
        self.check_lost()?;
        #[cfg(not(target_arch = "wasm32"))]
        {
            let out_of_memory = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let value = create();
            // A stack: the inner scope is popped first.
            let invalid = now_or_never(validation.pop()).flatten();
            let no_memory = now_or_never(out_of_memory.pop()).flatten();
            if let Some(error) = no_memory {
                return Err(RuntimeError::OutOfMemory {
                    what: format!("{} ({error})", what()),
                });
            }
            if let Some(error) = invalid {
                self.check_lost()?;
                return Err(RuntimeError::Wgpu(format!("{}: {error}", what())));
            }
            Ok(value)
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = what;
            Ok(create())
        }
    }

    /// Creates a raw wgpu buffer (for what this crate does not wrap) inside the same error
    /// scopes as the runtime's own buffers: a descriptor wgpu refuses, or memory the device
    /// cannot give, comes back as an error here rather than at a later submit.
    pub fn create_buffer_checked(
        &self,
        descriptor: &wgpu::BufferDescriptor<'_>,
    ) -> Result<wgpu::Buffer, RuntimeError> {
        let label = descriptor.label.unwrap_or("unlabelled");
        let size = descriptor.size;
        self.counters.count_buffer();
        self.allocation(
            || format!("buffer {label:?} of {size} bytes"),
            || self.device.create_buffer(descriptor),
        )
    }

    fn wrap(&self, buffer: wgpu::Buffer, label: &str) -> GpuBuffer {
        self.counters.count_buffer();
        GpuBuffer {
            buffer,
            id: next_id(),
            label: label.to_string(),
            dropped: Arc::clone(&self.dropped_buffers),
        }
    }

    fn storage_usage() -> wgpu::BufferUsages {
        wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
    }

    /// A zero-filled storage buffer of at least `size` bytes.
    pub fn create_storage(&self, label: &str, size: u64) -> Result<GpuBuffer, RuntimeError> {
        let size = size.max(1).div_ceil(SIZE_GRANULE) * SIZE_GRANULE;
        self.check_size(label, size)?;
        let buffer = self.allocation(
            || format!("buffer {label:?} of {size} bytes"),
            || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: Self::storage_usage(),
                    mapped_at_creation: false,
                })
            },
        )?;
        Ok(self.wrap(buffer, label))
    }

    /// A zero-filled storage buffer for `len` f32 (or u32) values.
    pub fn create_storage_f32(&self, label: &str, len: usize) -> Result<GpuBuffer, RuntimeError> {
        self.create_storage(label, len as u64 * 4)
    }

    /// A storage buffer holding `bytes`, zero-padded to a multiple of 16 bytes.
    pub fn upload_bytes(&self, label: &str, bytes: &[u8]) -> Result<GpuBuffer, RuntimeError> {
        let size = (bytes.len() as u64).max(1).div_ceil(SIZE_GRANULE) * SIZE_GRANULE;
        self.check_size(label, size)?;
        let buffer = self.allocation(
            || format!("buffer {label:?} of {size} bytes"),
            || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(label),
                    size,
                    usage: Self::storage_usage(),
                    mapped_at_creation: true,
                })
            },
        )?;
        {
            let mut view = buffer
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| RuntimeError::Wgpu(e.to_string()))?;
            view.slice(..bytes.len()).copy_from_slice(bytes);
        }
        buffer.unmap();
        Ok(self.wrap(buffer, label))
    }

    /// A storage buffer holding these f32 values.
    pub fn upload_f32(&self, label: &str, values: &[f32]) -> Result<GpuBuffer, RuntimeError> {
        self.upload_bytes(label, bytemuck::cast_slice(values))
    }

    /// A storage buffer holding these u32 values (e.g. token ids).
    pub fn upload_u32(&self, label: &str, values: &[u32]) -> Result<GpuBuffer, RuntimeError> {
        self.upload_bytes(label, bytemuck::cast_slice(values))
    }

    /// A storage buffer holding these halves.
    pub fn upload_f16(&self, label: &str, values: &[f16]) -> Result<GpuBuffer, RuntimeError> {
        self.upload_bytes(label, bytemuck::cast_slice(values))
    }

    /// Uploads a weight matrix; f16 data is read natively where the device has `shader-f16`,
    /// packed in u32 otherwise.
    pub fn upload_weights(
        &self,
        label: &str,
        data: WeightData<'_>,
    ) -> Result<Weights, RuntimeError> {
        let format = match data {
            WeightData::F32(_) => WeightFormat::F32,
            WeightData::F16(_) => WeightFormat::half_for(self.features()),
        };
        self.upload_weights_as(label, data, format)
    }

    /// Uploads a weight matrix for a chosen format (e.g. to test the packed path on an adapter
    /// that has `shader-f16`). f32 data asked in an f16 format is rounded to f16, and back.
    pub fn upload_weights_as(
        &self,
        label: &str,
        data: WeightData<'_>,
        format: WeightFormat,
    ) -> Result<Weights, RuntimeError> {
        let buffer = match (data, format) {
            (WeightData::F32(values), WeightFormat::F32) => self.upload_f32(label, values)?,
            (WeightData::F16(values), WeightFormat::F32) => {
                let widened: Vec<f32> = values.iter().map(|v| v.to_f32()).collect();
                self.upload_f32(label, &widened)?
            }
            (_, WeightFormat::F16) if !self.features().shader_f16 => {
                return Err(RuntimeError::MissingFeature {
                    kernel: "f16 weights",
                    needed: "shader-f16".into(),
                    available: self.features().to_string(),
                })
            }
            (_, WeightFormat::F16Packed) if !self.supports_half_weights() => {
                return Err(RuntimeError::NoHalfPrecision)
            }
            // A flat upload is one row: the block formats need the matrix's rows.
            (_, WeightFormat::Int8 | WeightFormat::Q4) => {
                return Err(RuntimeError::Wgpu(format!(
                    "weights {label:?}: {} weights are uploaded by rows (Device::upload_matrix)",
                    format.name()
                )))
            }
            (WeightData::F16(values), _) => self.upload_f16(label, values)?,
            (WeightData::F32(values), _) => {
                let halves: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                self.upload_f16(label, &halves)?
            }
        };
        let len = match data {
            WeightData::F32(values) => values.len(),
            WeightData::F16(values) => values.len(),
        };
        Ok(Weights::whole(buffer, 1, len, format))
    }

    /// Overwrites f32 values starting at element `offset` (ordered before later submissions).
    pub fn write_f32(&self, buffer: &GpuBuffer, offset: usize, values: &[f32]) {
        self.queue.write_buffer(
            &buffer.buffer,
            offset as u64 * 4,
            bytemuck::cast_slice(values),
        );
    }

    /// Overwrites u32 values starting at element `offset` (ordered before later submissions).
    pub fn write_u32(&self, buffer: &GpuBuffer, offset: usize, values: &[u32]) {
        self.queue.write_buffer(
            &buffer.buffer,
            offset as u64 * 4,
            bytemuck::cast_slice(values),
        );
    }

    /// Fills the buffer with zeros (ordered before later submissions).
    pub fn clear(&self, buffer: &GpuBuffer) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&buffer.buffer, 0, None);
        self.queue.submit([encoder.finish()]);
    }

    /// Copies `src` into `dst` (sizes must match; e.g. to clone a recurrent state).
    pub fn copy(&self, src: &GpuBuffer, dst: &GpuBuffer) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(&src.buffer, 0, &dst.buffer, 0, Some(src.size()));
        self.queue.submit([encoder.finish()]);
    }

    /// Copies `bytes` bytes from `src` at byte `src_offset` to `dst` at byte `dst_offset`, on the
    /// GPU (offsets and size must be multiples of 4).
    pub fn copy_region(
        &self,
        src: &GpuBuffer,
        src_offset: u64,
        dst: &GpuBuffer,
        dst_offset: u64,
        bytes: u64,
    ) {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(
            &src.buffer,
            src_offset,
            &dst.buffer,
            dst_offset,
            Some(bytes),
        );
        self.queue.submit([encoder.finish()]);
    }

    /// Reads `len` f32 values starting at element `offset`, once the submitted work is done.
    /// Staging buffers are pooled, so reading back each decode step creates nothing after the first.
    pub async fn read_f32(
        &self,
        buffer: &GpuBuffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let bytes = self
            .read_bytes(
                &buffer.buffer,
                &buffer.label,
                offset as u64 * 4,
                len as u64 * 4,
            )
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Reads `len` u32 values starting at element `offset`.
    pub async fn read_u32(
        &self,
        buffer: &GpuBuffer,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u32>, RuntimeError> {
        let bytes = self
            .read_bytes(
                &buffer.buffer,
                &buffer.label,
                offset as u64 * 4,
                len as u64 * 4,
            )
            .await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    pub(crate) async fn read_bytes(
        &self,
        buffer: &wgpu::Buffer,
        label: &str,
        offset: u64,
        size: u64,
    ) -> Result<Vec<u8>, RuntimeError> {
        if size == 0 {
            return Ok(Vec::new());
        }
        self.check_lost()?;
        let padded = size.div_ceil(wgpu::COPY_BUFFER_ALIGNMENT) * wgpu::COPY_BUFFER_ALIGNMENT;
        let staging = self.take_staging(padded)?;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_buffer_to_buffer(buffer, offset, &staging, 0, Some(padded));
        self.queue.submit([encoder.finish()]);
        let mapped = MapRead::new(&self.device, &self.lost, &staging, padded).await;
        let result = match mapped {
            Ok(()) => {
                let bytes = staging
                    .slice(..padded)
                    .get_mapped_range()
                    .map(|view| {
                        let mut bytes = view.to_vec();
                        bytes.truncate(size as usize);
                        bytes
                    })
                    .map_err(|e| RuntimeError::Wgpu(e.to_string()));
                staging.unmap();
                bytes
            }
            Err(MapFailure::Lost(reason)) => Err(RuntimeError::DeviceLost { reason }),
            Err(MapFailure::Map(source)) => {
                // A mapping refused because the device is gone: let wgpu run the device-lost
                // callback, so the error says so.
                let _ = self.device.poll(wgpu::PollType::Poll);
                self.check_lost()?;
                Err(RuntimeError::Map {
                    label: label.to_string(),
                    source,
                })
            }
        };
        self.return_staging(staging);
        result
    }

    fn take_staging(&self, size: u64) -> Result<wgpu::Buffer, RuntimeError> {
        if let Ok(mut caches) = self.caches.lock() {
            let best = caches
                .staging
                .iter()
                .enumerate()
                .filter(|(_, (s, _))| *s >= size)
                .min_by_key(|(_, (s, _))| *s)
                .map(|(i, _)| i);
            if let Some(i) = best {
                return Ok(caches.staging.swap_remove(i).1);
            }
        }
        self.counters.count_buffer();
        self.allocation(
            || format!("read-back staging buffer of {size} bytes"),
            || {
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("read-back staging"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            },
        )
    }

    fn return_staging(&self, buffer: wgpu::Buffer) {
        if let Ok(mut caches) = self.caches.lock() {
            caches.staging.push((buffer.size(), buffer));
        }
    }
}

#[derive(Default)]
struct MapState {
    result: Option<Result<(), wgpu::BufferAsyncError>>,
    waker: Option<Waker>,
}

/// Why a read-back could not map its staging buffer.
enum MapFailure {
    /// The device was lost while waiting (its reason).
    Lost(String),
    /// wgpu's mapping error.
    Map(wgpu::BufferAsyncError),
}

/// Polls a future once without waiting: its output if it is ready.
#[cfg(not(target_arch = "wasm32"))]
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Resolves when `map_async` on a buffer completes. On native backends wgpu only runs the
/// callback when the device is polled, so each poll of this future polls the device without
/// blocking and asks to be polled again; in the browser the callback wakes it. A lost device
/// may never run the callback: the loss (recorded by the device-lost callback or
/// [`Device::simulate_loss`]) ends the wait with an error instead.
struct MapRead<'a> {
    device: &'a wgpu::Device,
    lost: &'a Mutex<Option<String>>,
    state: Arc<Mutex<MapState>>,
}

impl<'a> MapRead<'a> {
    fn new(
        device: &'a wgpu::Device,
        lost: &'a Mutex<Option<String>>,
        buffer: &wgpu::Buffer,
        size: u64,
    ) -> Self {
        let state = Arc::new(Mutex::new(MapState::default()));
        let callback_state = Arc::clone(&state);
        buffer
            .slice(..size)
            .map_async(wgpu::MapMode::Read, move |result| {
                if let Ok(mut state) = callback_state.lock() {
                    state.result = Some(result);
                    if let Some(waker) = state.waker.take() {
                        waker.wake();
                    }
                }
            });
        MapRead {
            device,
            lost,
            state,
        }
    }

    fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|reason| reason.clone())
    }

    fn take_result(&self, cx: &Context<'_>) -> Option<Result<(), wgpu::BufferAsyncError>> {
        let mut state = self.state.lock().ok()?;
        let result = state.result.take();
        if result.is_none() {
            state.waker = Some(cx.waker().clone());
        }
        result
    }
}

impl Future for MapRead<'_> {
    type Output = Result<(), MapFailure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(result) = self.take_result(cx) {
            return Poll::Ready(result.map_err(MapFailure::Map));
        }
        // Non-blocking: runs the callbacks of finished work, if any (and the device-lost
        // callback of a device that is gone).
        let _ = self.device.poll(wgpu::PollType::Poll);
        if let Some(result) = self.take_result(cx) {
            return Poll::Ready(result.map_err(MapFailure::Map));
        }
        if let Some(reason) = self.lost_reason() {
            return Poll::Ready(Err(MapFailure::Lost(reason)));
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            // Nothing else will wake us on native: ask to be polled again, letting other threads
            // (the driver's, on a software adapter) run first.
            cx.waker().wake_by_ref();
            std::thread::yield_now();
        }
        Poll::Pending
    }
}
