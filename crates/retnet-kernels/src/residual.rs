//! Residual update `x ← α·x + r`.

use crate::{
    ceil_div, f, Access, Binding, Dim, Dispatch, Features, Kernel, OverrideConstant, ParamWords,
    PARAMS,
};

/// x ← α·x + r.
pub static RESIDUAL_ADD: Kernel = Kernel {
    name: "residual_add",
    source: shader!("residual_add.wgsl"),
    entry_point: "residual_add",
    workgroup_size: [
        Dim::Constant("WORKGROUP_SIZE"),
        Dim::Fixed(1),
        Dim::Fixed(1),
    ],
    constants: &[OverrideConstant {
        name: "WORKGROUP_SIZE",
        default: 256,
    }],
    bindings: &[
        PARAMS,
        Binding {
            index: 1,
            name: "x",
            access: Access::ReadWrite,
        },
        Binding {
            index: 2,
            name: "residual",
            access: Access::ReadOnly,
        },
    ],
    params: ("ResidualAddParams", &["count", "alpha", "groups_x", "_pad"]),
    requires: Features::NONE,
};

/// All variants.
pub static KERNELS: &[&Kernel] = &[&RESIDUAL_ADD];

/// `x[i] ← alpha·x[i] + residual[i]` for `i < count`. Buffers: x (read and written), residual.
pub fn residual_add(count: u32, alpha: f32) -> Dispatch {
    const MAX_GROUPS_PER_DIMENSION: u32 = 65535;
    let kernel = &RESIDUAL_ADD;
    let constants = kernel.default_constants();
    let [size, _, _] = kernel.workgroup_size(&constants);
    let groups = ceil_div(count, size).max(1);
    let groups_x = groups.min(MAX_GROUPS_PER_DIMENSION);
    Dispatch {
        kernel,
        constants,
        params: ParamWords::new(&[count, f(alpha), groups_x]),
        workgroups: [groups_x, ceil_div(groups, groups_x), 1],
    }
}
