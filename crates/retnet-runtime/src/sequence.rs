//! Recording a sequence of kernel dispatches and submitting it as one compute pass.

use crate::buffer::{next_id, GpuBuffer};
use crate::cache::{Caches, ParamArena};
use crate::device::Device;
use crate::error::RuntimeError;
use arrayvec::ArrayVec;
use retnet_kernels::{Access, Bound, ConstantValues, Kernel, MAX_BUFFERS, MAX_PARAM_WORDS};

/// A dispatch's buffers (id and handle) in binding order, held inline: recording a decode step
/// allocates nothing per dispatch.
pub(crate) type DispatchBuffers = ArrayVec<(u64, wgpu::Buffer), MAX_BUFFERS>;

pub(crate) struct RecordedDispatch {
    kernel: &'static Kernel,
    constants: ConstantValues,
    buffers: DispatchBuffers,
    params_offset: u32,
    workgroups: [u32; 3],
}

/// The growable parts of a [`Sequence`], kept by the device between sequences so that
/// recording the next decode step reuses their capacity instead of allocating.
#[derive(Default)]
pub(crate) struct SequenceStorage {
    dispatches: Vec<RecordedDispatch>,
    params: Vec<u8>,
}

/// Dispatches recorded in order, submitted together in one compute pass by [`Sequence::submit`].
///
/// Recording only stores values; GPU objects are looked up (or, the first time, created) at
/// submit. All parameter blocks go into one uniform arena, written with a single
/// `write_buffer`, each at its own dynamic offset, so a bind group serves every step that binds
/// the same buffers: recording the same sequence again (e.g. the next decode step, with new
/// positions in the parameters) creates no pipeline, bind group or buffer.
pub struct Sequence<'d> {
    device: &'d Device,
    label: &'static str,
    dispatches: Vec<RecordedDispatch>,
    params: Vec<u8>,
    stride: usize,
    started: HostClock,
}

/// When a sequence started recording, for [`crate::HostStats::sequence_nanos`]; wasm32 has
/// no `Instant`, so nothing is timed there.
#[derive(Clone, Copy)]
struct HostClock(#[cfg(not(target_arch = "wasm32"))] std::time::Instant);

impl HostClock {
    fn now() -> HostClock {
        HostClock(
            #[cfg(not(target_arch = "wasm32"))]
            std::time::Instant::now(),
        )
    }

    fn elapsed_nanos(self) -> u64 {
        #[cfg(not(target_arch = "wasm32"))]
        return u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        #[cfg(target_arch = "wasm32")]
        return 0;
    }
}

impl Device {
    /// Starts recording a sequence of dispatches.
    pub fn sequence(&self, label: &'static str) -> Sequence<'_> {
        // Parameter blocks are at most 64 bytes; dynamic offsets must be aligned (256 on most).
        let alignment = self.limits().min_uniform_buffer_offset_alignment as usize;
        let storage = self
            .sequence_storage
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        Sequence {
            device: self,
            label,
            dispatches: storage.dispatches,
            params: storage.params,
            stride: (MAX_PARAM_WORDS * 4).div_ceil(alignment) * alignment,
            started: HostClock::now(),
        }
    }
}

impl Sequence<'_> {
    /// Appends a dispatch with its buffers, as a kernel constructor of `retnet-kernels` made
    /// it (buffers named, in binding order).
    pub fn dispatch(&mut self, bound: Bound<'_, GpuBuffer>) -> Result<(), RuntimeError> {
        let Bound { dispatch, buffers } = bound;
        let kernel = dispatch.kernel;
        let features = self.device.features();
        if !features.contains(kernel.requires) {
            return Err(RuntimeError::MissingFeature {
                kernel: kernel.name,
                needed: kernel.requires.to_string(),
                available: features.to_string(),
            });
        }
        let expected = kernel.resource_bindings().count();
        if expected != buffers.len() || expected > MAX_BUFFERS {
            return Err(RuntimeError::WrongBufferCount {
                kernel: kernel.name,
                expected,
                got: buffers.len(),
            });
        }
        for (i, (binding, buffer)) in kernel.resource_bindings().zip(buffers.iter()).enumerate() {
            let bound_again = buffers
                .iter()
                .enumerate()
                .any(|(j, other)| j != i && other.id == buffer.id);
            if binding.access == Access::ReadWrite && bound_again {
                return Err(RuntimeError::AliasedOutput {
                    kernel: kernel.name,
                    label: buffer.label().to_string(),
                    binding: binding.index,
                });
            }
        }
        let limits = self.device.limits();
        let [x, y, z] = kernel.workgroup_size(&dispatch.constants);
        if x.saturating_mul(y).saturating_mul(z) > limits.max_compute_invocations_per_workgroup
            || x > limits.max_compute_workgroup_size_x
            || y > limits.max_compute_workgroup_size_y
            || z > limits.max_compute_workgroup_size_z
        {
            return Err(RuntimeError::Wgpu(format!(
                "{}: a workgroup of {x}×{y}×{z} invocations is over the adapter's limits",
                kernel.name
            )));
        }
        let max_groups = limits.max_compute_workgroups_per_dimension;
        if let Some(&too_many) = dispatch.workgroups.iter().find(|&&n| n > max_groups) {
            return Err(RuntimeError::Wgpu(format!(
                "{}: {too_many} workgroups in one dimension, over the limit of {max_groups}",
                kernel.name
            )));
        }
        if dispatch.workgroups.contains(&0) {
            return Ok(());
        }
        let params_offset = self.params.len();
        self.params
            .extend(dispatch.params.0.iter().flat_map(|w| w.to_le_bytes()));
        self.params.resize(params_offset + self.stride, 0);
        self.dispatches.push(RecordedDispatch {
            kernel,
            constants: dispatch.constants,
            // Into the inline list: at most MAX_BUFFERS, checked above.
            buffers: buffers.iter().map(|b| (b.id, b.buffer.clone())).collect(),
            params_offset: params_offset as u32,
            workgroups: dispatch.workgroups,
        });
        Ok(())
    }

    /// Number of dispatches recorded.
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }

    /// Encodes everything into one compute pass and submits it. Does not wait.
    ///
    /// The parameter arena is shared by all sequences: writing it and submitting happen under
    /// the cache lock, so a sequence submitted from another thread in between cannot overwrite
    /// the parameters of this one before the queue has ordered them.
    pub fn submit(self) -> Result<wgpu::SubmissionIndex, RuntimeError> {
        let device = self.device;
        device.check_lost()?;
        let dropped: Vec<u64> = device
            .dropped_buffers
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        let mut caches = device
            .caches
            .lock()
            .map_err(|_| RuntimeError::Wgpu("cache lock poisoned".into()))?;
        caches.forget_buffers(&dropped);
        let mut encoder = device
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(self.label),
            });
        if !self.params.is_empty() {
            let needed = self.params.len() as u64;
            if caches.arena.as_ref().is_none_or(|a| a.capacity < needed) {
                // Grows by powers of two: a new arena (and so new bind groups) only a few times.
                let capacity = needed.next_power_of_two().max(4096);
                device.counters.count_buffer();
                let buffer = device.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("parameter arena"),
                    size: capacity,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                caches.arena = Some(ParamArena {
                    id: next_id(),
                    buffer,
                    capacity,
                });
            }
            if let Some(arena) = &caches.arena {
                device.queue.write_buffer(&arena.buffer, 0, &self.params);
            }
            let mut profiler = device.profiler.lock().ok();
            let profiled = profiler.as_mut().and_then(|p| p.as_mut()).and_then(|p| {
                let kernels: Vec<&'static str> = if p.whole_sequences {
                    vec![self.label]
                } else {
                    self.dispatches.iter().map(|d| d.kernel.name).collect()
                };
                p.reserve(&kernels).map(|first| (p, first))
            });
            match profiled {
                // Profiling whole sequences: the one pass, timestamps at its beginning and end.
                Some((profiler, first)) if profiler.whole_sequences => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(self.label),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: profiler.query_set(),
                            beginning_of_pass_write_index: Some(first),
                            end_of_pass_write_index: Some(first + 1),
                        }),
                    });
                    for dispatch in &self.dispatches {
                        encode(&mut pass, &mut caches, device, dispatch);
                    }
                    drop(pass);
                    profiler.resolve(&mut encoder, first, 2);
                }
                // Profiling: a pass per dispatch, timestamps at its beginning and end.
                Some((profiler, first)) => {
                    for (i, dispatch) in self.dispatches.iter().enumerate() {
                        let index = first + 2 * i as u32;
                        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some(dispatch.kernel.name),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: profiler.query_set(),
                                beginning_of_pass_write_index: Some(index),
                                end_of_pass_write_index: Some(index + 1),
                            }),
                        });
                        encode(&mut pass, &mut caches, device, dispatch);
                    }
                    let count = 2 * self.dispatches.len() as u32;
                    profiler.resolve(&mut encoder, first, count);
                }
                None => {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(self.label),
                        timestamp_writes: None,
                    });
                    for dispatch in &self.dispatches {
                        encode(&mut pass, &mut caches, device, dispatch);
                    }
                }
            }
        }
        let index = device.queue.submit([encoder.finish()]);
        drop(caches);
        device.counters.count_sequence(self.started.elapsed_nanos());
        let (mut dispatches, mut params) = (self.dispatches, self.params);
        dispatches.clear();
        params.clear();
        if let Ok(mut storage) = device.sequence_storage.lock() {
            *storage = SequenceStorage { dispatches, params };
        }
        device.take_uncaptured_error()?;
        Ok(index)
    }
}

/// Sets one dispatch's pipeline, bind group (its parameters at their dynamic offset) and grid.
fn encode(
    pass: &mut wgpu::ComputePass<'_>,
    caches: &mut Caches,
    device: &Device,
    dispatch: &RecordedDispatch,
) {
    let pipeline = caches.pipeline(
        &device.device,
        &device.counters,
        dispatch.kernel,
        dispatch.constants,
    );
    let group = caches.bind_group(
        &device.device,
        &device.counters,
        dispatch.kernel,
        &dispatch.buffers,
    );
    pass.set_pipeline(&pipeline);
    pass.set_bind_group(0, &group, &[dispatch.params_offset]);
    let [x, y, z] = dispatch.workgroups;
    pass.dispatch_workgroups(x, y, z);
}

impl Device {
    /// Number of bind groups currently cached (bind groups of dropped buffers are forgotten at
    /// the next submit).
    pub fn cached_bind_groups(&self) -> usize {
        self.caches
            .lock()
            .map(|c| c.bind_group_count())
            .unwrap_or(0)
    }
}
