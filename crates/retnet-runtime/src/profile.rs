//! GPU time of each dispatch, from timestamp queries (needs TIMESTAMP_QUERY).
//!
//! While profiling, [`crate::Sequence::submit`] encodes each dispatch in a compute pass of its
//! own whose beginning and end write timestamps, so one dispatch's time is the GPU time between
//! them. Passes add a little overhead of their own: the sum of the times is the work of the
//! kernels, not the wall time of a step. [`Device::start_profiling_sequences`] times each
//! submitted sequence as it normally runs instead, all its dispatches in one pass: against the
//! wall time of the same work, it tells the GPU's share from the host's.

use crate::device::Device;
use crate::error::RuntimeError;

/// Timestamps one profile can hold (two per dispatch; wgpu allows at most 4096 per query set).
const CAPACITY: u32 = 4096;
/// Each submit's timestamps start on a 256-byte boundary of the resolve buffer (a wgpu rule for
/// `resolve_query_set`): 32 timestamps of 8 bytes.
const ALIGN: u32 = 32;

/// One dispatch's GPU time.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    /// The kernel's name (its variant, e.g. `matvec/f16/subgroup`).
    pub kernel: &'static str,
    /// Nanoseconds between the start and the end of its pass.
    pub nanos: f64,
}

pub(crate) struct Profiler {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Timestamps used so far (aligned per submit).
    used: u32,
    /// Kernel of each profiled dispatch and the index of its first timestamp.
    dispatches: Vec<(&'static str, u32)>,
    /// Dispatches submitted once the query set was full (not timed).
    missed: usize,
    /// Whether each sequence is timed as one pass (named by its label) instead of each dispatch.
    pub(crate) whole_sequences: bool,
}

impl Profiler {
    /// The first timestamp index for `count` more dispatches, if they fit.
    pub(crate) fn reserve(&mut self, kernels: &[&'static str]) -> Option<u32> {
        let first = self.used;
        let needed = 2 * kernels.len() as u32;
        if first + needed > CAPACITY {
            self.missed += kernels.len();
            return None;
        }
        for (i, kernel) in kernels.iter().enumerate() {
            self.dispatches.push((kernel, first + 2 * i as u32));
        }
        self.used = (first + needed).div_ceil(ALIGN) * ALIGN;
        Some(first)
    }

    pub(crate) fn query_set(&self) -> &wgpu::QuerySet {
        &self.query_set
    }

    /// Copies timestamps `first .. first + count` into the resolve buffer.
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder, first: u32, count: u32) {
        encoder.resolve_query_set(
            &self.query_set,
            first..first + count,
            &self.resolve,
            u64::from(first) * 8,
        );
    }
}

impl Device {
    /// Starts timing every dispatch submitted from now on, until [`Device::finish_profiling`]
    /// (at most 2048 dispatches; later ones run untimed). Needs TIMESTAMP_QUERY.
    pub fn start_profiling(&self) -> Result<(), RuntimeError> {
        self.start_profiler(false)
    }

    /// Starts timing every sequence submitted from now on as one compute pass, its dispatches
    /// encoded as without profiling, until [`Device::finish_profiling`], which then returns one
    /// [`KernelTime`] per sequence, named by the sequence's label. Needs TIMESTAMP_QUERY.
    pub fn start_profiling_sequences(&self) -> Result<(), RuntimeError> {
        self.start_profiler(true)
    }

    fn start_profiler(&self, whole_sequences: bool) -> Result<(), RuntimeError> {
        if !self.has_timestamp_query() {
            return Err(RuntimeError::MissingFeature {
                kernel: "profiling",
                needed: "TIMESTAMP_QUERY".into(),
                available: "no timestamp queries".into(),
            });
        }
        let query_set = self.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: CAPACITY,
        });
        let resolve = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size: u64::from(CAPACITY) * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let profiler = Profiler {
            query_set,
            resolve,
            used: 0,
            dispatches: Vec::new(),
            missed: 0,
            whole_sequences,
        };
        let mut slot = self
            .profiler
            .lock()
            .map_err(|_| RuntimeError::Wgpu("profiler lock poisoned".into()))?;
        *slot = Some(profiler);
        Ok(())
    }

    /// Stops profiling and returns the GPU time of each dispatch timed since
    /// [`Device::start_profiling`], in submission order, and how many ran untimed.
    pub async fn finish_profiling(&self) -> Result<(Vec<KernelTime>, usize), RuntimeError> {
        let profiler = self
            .profiler
            .lock()
            .map_err(|_| RuntimeError::Wgpu("profiler lock poisoned".into()))?
            .take();
        let Some(profiler) = profiler else {
            return Ok((Vec::new(), 0));
        };
        if profiler.used == 0 {
            return Ok((Vec::new(), profiler.missed));
        }
        let bytes = self
            .read_bytes(
                &profiler.resolve,
                "profile",
                0,
                u64::from(profiler.used) * 8,
            )
            .await?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = f64::from(self.queue.get_timestamp_period());
        let times = profiler
            .dispatches
            .iter()
            .map(|&(kernel, first)| {
                let at = |i: u32| ticks.get(i as usize).copied().unwrap_or(0);
                let (start, end) = (at(first), at(first + 1));
                KernelTime {
                    kernel,
                    nanos: end.saturating_sub(start) as f64 * period,
                }
            })
            .collect();
        Ok((times, profiler.missed))
    }
}
