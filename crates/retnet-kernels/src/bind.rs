//! Typed kernel bindings: each kernel's buffers are a struct with one named field per binding,
//! and its uniform parameter block a struct with one typed field per WGSL member, both declared
//! once with the macros of this module.
//!
//! [`buffers!`] declares a buffer struct together with the kernel's binding table, so the two
//! cannot disagree; naga validation ([`crate::validate`]) checks the table against the shader.
//! A constructor such as [`crate::rms_norm::rms_norm`] takes that struct, so a missing buffer
//! does not compile and a swapped one has to be written under the wrong name. It returns a
//! [`Bound`] dispatch: the launch and its buffers in binding order, ready for the runtime.
//!
//! [`param_block!`] declares a parameter block (field names, order, `u32`/`f32` types) as a
//! Rust struct and as the [`ParamsStruct`] that validation compares with the WGSL struct.

use crate::{Dispatch, Kernel};

/// Most buffers any kernel binds (after its parameter block).
pub const MAX_BUFFERS: usize = 8;

/// A kernel's buffers in binding order (binding 1, 2, …), as references to the caller's buffer
/// type `B` (the runtime's `GpuBuffer`).
#[derive(Debug)]
pub struct BufferList<'b, B> {
    slots: [Option<&'b B>; MAX_BUFFERS],
    len: usize,
}

impl<B> Clone for BufferList<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for BufferList<'_, B> {}

impl<'b, B> BufferList<'b, B> {
    /// The buffers, in binding order. Only the macros of this module and kernels built outside
    /// this crate (the xtask's probes) list buffers by position.
    pub fn new(buffers: &[&'b B]) -> Self {
        let mut slots = [None; MAX_BUFFERS];
        for (slot, &buffer) in slots.iter_mut().zip(buffers) {
            *slot = Some(buffer);
        }
        Self {
            slots,
            len: buffers.len(),
        }
    }

    /// Number of buffers listed (more than [`MAX_BUFFERS`] were cut: the runtime's count check
    /// against the kernel then fails).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no buffer is listed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffers in binding order.
    pub fn iter(&self) -> impl Iterator<Item = &'b B> + '_ {
        self.slots.iter().flatten().copied()
    }
}

/// One kernel launch with its buffers: what `retnet-runtime` records.
#[derive(Debug)]
pub struct Bound<'b, B> {
    /// The launch: kernel, constants, parameters, grid.
    pub dispatch: Dispatch,
    /// Its buffers in binding order.
    pub buffers: BufferList<'b, B>,
}

impl<B> Clone for Bound<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B> Copy for Bound<'_, B> {}

impl<'b, B> Bound<'b, B> {
    /// The kernel that runs.
    pub fn kernel(&self) -> &'static Kernel {
        self.dispatch.kernel
    }
}

/// The type of one member of a parameter block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// WGSL `u32`.
    U32,
    /// WGSL `f32`.
    F32,
}

/// A kernel's uniform parameter block as the WGSL declares it: the struct's name and its
/// members in order, with their types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamsStruct {
    /// The WGSL struct's name.
    pub name: &'static str,
    /// Its members in order.
    pub fields: &'static [(&'static str, Scalar)],
}

impl ParamsStruct {
    /// Size in bytes of the block (a 16-byte multiple, as a uniform binding is).
    pub const fn size(&self) -> u64 {
        (self.fields.len() as u64 * 4).div_ceil(16) * 16
    }
}

/// A Rust type that is one 32-bit member of a parameter block.
pub trait ParamScalar: Copy {
    /// Its WGSL type.
    const SCALAR: Scalar;
    /// Its bits.
    fn word(self) -> u32;
}

impl ParamScalar for u32 {
    const SCALAR: Scalar = Scalar::U32;
    fn word(self) -> u32 {
        self
    }
}

impl ParamScalar for f32 {
    const SCALAR: Scalar = Scalar::F32;
    fn word(self) -> u32 {
        self.to_bits()
    }
}

/// Declares a kernel's buffer struct and its binding table from one list:
///
/// ```ignore
/// buffers! {
///     /// Buffers of [`rms_norm`].
///     pub struct RmsNormBuffers, bindings RMS_NORM_BINDINGS {
///         /// `[rows, dim]`.
///         1 input: ReadOnly,
///         2 norm_weight: ReadOnly,
///         3 output: ReadWrite,
///     }
/// }
/// ```
///
/// makes `RmsNormBuffers<'b, B> { input, norm_weight, output }` (each `&'b B`), its
/// `in_order()`, and `const RMS_NORM_BINDINGS: &[Binding]` (the parameter block at 0, then the
/// listed bindings). Field names are the WGSL variable names.
macro_rules! buffers {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident, bindings $table:ident {
            $( $(#[$field_meta:meta])* $index:literal $field:ident : $access:ident ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis struct $name<'b, B> {
            $( $(#[$field_meta])* pub $field: &'b B, )+
        }

        impl<B> Clone for $name<'_, B> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<B> Copy for $name<'_, B> {}

        impl<'b, B> $name<'b, B> {
            /// The buffers in binding order.
            pub fn in_order(self) -> $crate::BufferList<'b, B> {
                $crate::BufferList::new(&[$(self.$field),+])
            }
        }

        #[allow(dead_code)]
        $vis const $table: &[$crate::Binding] = &[
            $crate::PARAMS,
            $( $crate::Binding {
                index: $index,
                name: stringify!($field),
                access: $crate::Access::$access,
            }, )+
        ];
    };
}

/// Declares a uniform parameter block once: a Rust struct with one field per WGSL member (in
/// order, each `u32` or `f32`), its [`ParamsStruct`] for validation and its `words()`.
///
/// ```ignore
/// param_block! {
///     /// The block of [`rms_norm`].
///     pub(crate) struct RmsNormBlock = "RmsNormParams" { rows: u32, dim: u32, eps: f32, _pad: u32 }
/// }
/// ```
macro_rules! param_block {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident = $wgsl:literal {
            $( $field:ident : $ty:ty ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default)]
        $vis struct $name {
            $( pub(crate) $field: $ty, )+
        }

        impl $name {
            /// The WGSL struct this block is.
            pub(crate) const STRUCT: $crate::ParamsStruct = $crate::ParamsStruct {
                name: $wgsl,
                fields: &[ $( (stringify!($field), <$ty as $crate::ParamScalar>::SCALAR), )+ ],
            };

            /// The block's words, in member order.
            pub(crate) fn words(&self) -> $crate::ParamWords {
                $crate::ParamWords::new(&[ $( $crate::ParamScalar::word(self.$field), )+ ])
            }
        }
    };
}

/// Checks a [`Bound`]'s count against its kernel (the macros make them agree; kernels built
/// outside this crate list buffers by position).
pub fn buffer_count_matches<B>(bound: &Bound<'_, B>) -> bool {
    bound.dispatch.kernel.resource_bindings().count() == bound.buffers.len()
}
