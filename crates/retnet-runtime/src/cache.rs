//! Caches of GPU objects, so that recording the same work again creates nothing:
//! shader modules and layouts per kernel, pipelines per (kernel, override values), bind groups per
//! (kernel, bound buffers), one uniform arena for every dispatch's parameters, staging buffers for
//! read-back. Counters make this observable.

use retnet_kernels::{Access, ConstantValues, Kernel};
use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers of GPU objects created since the device was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Shader modules (one per kernel variant used).
    pub shader_modules: u64,
    /// Compute pipelines (one per kernel variant and override values used).
    pub pipelines: u64,
    /// Bind groups (one per kernel and set of bound buffers).
    pub bind_groups: u64,
    /// Buffers, including the parameter arena and staging buffers.
    pub buffers: u64,
}

/// The host's side of the submitted work, as counted since the device was created
/// ([`crate::Device::host_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostStats {
    /// Sequences submitted ([`crate::Sequence::submit`]).
    pub sequences: u64,
    /// Host nanoseconds those sequences took from [`crate::Device::sequence`] to the end of their
    /// submit: recording, encoding and submitting, the CPU side of the GPU's work (0 on wasm32,
    /// which has no clock here).
    pub sequence_nanos: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    shader_modules: AtomicU64,
    pipelines: AtomicU64,
    bind_groups: AtomicU64,
    pub(crate) buffers: AtomicU64,
    sequences: AtomicU64,
    sequence_host_nanos: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CacheStats {
        CacheStats {
            shader_modules: self.shader_modules.load(Ordering::Relaxed),
            pipelines: self.pipelines.load(Ordering::Relaxed),
            bind_groups: self.bind_groups.load(Ordering::Relaxed),
            buffers: self.buffers.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn host(&self) -> HostStats {
        HostStats {
            sequences: self.sequences.load(Ordering::Relaxed),
            sequence_nanos: self.sequence_host_nanos.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn count_sequence(&self, host_nanos: u64) {
        self.sequences.fetch_add(1, Ordering::Relaxed);
        self.sequence_host_nanos
            .fetch_add(host_nanos, Ordering::Relaxed);
    }

    pub(crate) fn count_buffer(&self) {
        self.buffers.fetch_add(1, Ordering::Relaxed);
    }
}

struct KernelLayout {
    module: wgpu::ShaderModule,
    bind_group_layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct BindGroupKey {
    kernel: &'static str,
    arena: u64,
    // Inline: looking a bind group up allocates nothing.
    buffers: arrayvec::ArrayVec<u64, { retnet_kernels::MAX_BUFFERS }>,
}

/// The uniform buffer holding every dispatch's parameter block of one submission.
pub(crate) struct ParamArena {
    pub(crate) id: u64,
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) capacity: u64,
}

#[derive(Default)]
pub(crate) struct Caches {
    layouts: HashMap<&'static str, KernelLayout>,
    pipelines: HashMap<(&'static str, ConstantValues), wgpu::ComputePipeline>,
    bind_groups: HashMap<BindGroupKey, wgpu::BindGroup>,
    pub(crate) arena: Option<ParamArena>,
    /// Free staging buffers for read-back, by size.
    pub(crate) staging: Vec<(u64, wgpu::Buffer)>,
}

impl Caches {
    fn layout(
        &mut self,
        device: &wgpu::Device,
        counters: &Counters,
        kernel: &'static Kernel,
    ) -> &KernelLayout {
        self.layouts.entry(kernel.name).or_insert_with(|| {
            counters.shader_modules.fetch_add(1, Ordering::Relaxed);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(kernel.name),
                source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(kernel.source)),
            });
            let entries: Vec<_> = kernel
                .bindings
                .iter()
                .map(|binding| wgpu::BindGroupLayoutEntry {
                    binding: binding.index,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: match binding.access {
                        // Every dispatch's parameters live in one arena, at a dynamic offset.
                        Access::Uniform => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: true,
                            min_binding_size: NonZeroU64::new(kernel.params_size()),
                        },
                        Access::ReadOnly | Access::ReadWrite => wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage {
                                read_only: binding.access == Access::ReadOnly,
                            },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                    },
                    count: None,
                })
                .collect();
            let bind_group_layout =
                device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(kernel.name),
                    entries: &entries,
                });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(kernel.name),
                bind_group_layouts: &[Some(&bind_group_layout)],
                immediate_size: 0,
            });
            KernelLayout {
                module,
                bind_group_layout,
                pipeline_layout,
            }
        })
    }

    pub(crate) fn pipeline(
        &mut self,
        device: &wgpu::Device,
        counters: &Counters,
        kernel: &'static Kernel,
        constants: ConstantValues,
    ) -> wgpu::ComputePipeline {
        if let Some(pipeline) = self.pipelines.get(&(kernel.name, constants)) {
            return pipeline.clone();
        }
        let layout = self.layout(device, counters, kernel);
        counters.pipelines.fetch_add(1, Ordering::Relaxed);
        let pairs = constants.pairs(kernel);
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.name),
            layout: Some(&layout.pipeline_layout),
            module: &layout.module,
            entry_point: Some(kernel.entry_point),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &pairs,
                // Every kernel writes the workgroup memory it reads; skipping the zeroing saves a
                // pass over it per workgroup.
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.pipelines
            .insert((kernel.name, constants), pipeline.clone());
        pipeline
    }

    /// The bind group for `kernel` with the arena at binding 0 and `buffers` at the following
    /// bindings, in order.
    pub(crate) fn bind_group(
        &mut self,
        device: &wgpu::Device,
        counters: &Counters,
        kernel: &'static Kernel,
        buffers: &[(u64, wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let Some(arena) = &self.arena else {
            unreachable!("the arena is made before any bind group");
        };
        let key = BindGroupKey {
            kernel: kernel.name,
            arena: arena.id,
            buffers: buffers.iter().map(|(id, _)| *id).collect(),
        };
        if let Some(group) = self.bind_groups.get(&key) {
            return group.clone();
        }
        let arena_buffer = arena.buffer.clone();
        let layout = &self.layout(device, counters, kernel).bind_group_layout;
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &arena_buffer,
                offset: 0,
                size: NonZeroU64::new(kernel.params_size()),
            }),
        }];
        for (binding, (_, buffer)) in kernel.resource_bindings().zip(buffers) {
            entries.push(wgpu::BindGroupEntry {
                binding: binding.index,
                resource: buffer.as_entire_binding(),
            });
        }
        counters.bind_groups.fetch_add(1, Ordering::Relaxed);
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(kernel.name),
            layout,
            entries: &entries,
        });
        self.bind_groups.insert(key, group.clone());
        group
    }

    /// Forgets bind groups that reference dropped buffers (which they would keep alive).
    pub(crate) fn forget_buffers(&mut self, dropped: &[u64]) {
        if !dropped.is_empty() {
            self.bind_groups
                .retain(|key, _| !key.buffers.iter().any(|id| dropped.contains(id)));
        }
    }

    /// Number of cached bind groups.
    pub(crate) fn bind_group_count(&self) -> usize {
        self.bind_groups.len()
    }
}
