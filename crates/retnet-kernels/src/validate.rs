//! naga validation of a kernel variant, plus checks that its description matches its source.

use crate::{Access, Dim, Features, Kernel, Scalar};
use naga::valid::{Capabilities, ValidationFlags, Validator};

/// Why a kernel variant is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The WGSL did not parse.
    #[error("WGSL parse error:\n{0}")]
    Parse(String),
    /// naga's validator rejected the module (for example a missing capability).
    #[error("naga validation error:\n{0}")]
    Invalid(String),
    /// The kernel's description disagrees with its WGSL source.
    #[error("description does not match the shader: {0}")]
    Mismatch(String),
}

/// What validation found out about a valid variant.
#[derive(Clone, Debug)]
pub struct ValidationReport {
    /// Number of bindings the entry point uses.
    pub bindings: usize,
    /// Number of override constants of the module.
    pub overrides: usize,
}

/// naga capabilities that correspond to a feature set.
///
/// `unpack2x16float` (the packed-f16 weight path) is WebGPU core but a separate naga capability,
/// granted by wgpu where the adapter has the `SHADER_F16_IN_F32` downlevel flag (every compliant
/// adapter; Mesa's Vulkan drivers without `shader-f16` lack it, and the runtime checks).
pub fn capabilities(features: Features) -> Capabilities {
    let mut caps = Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if features.shader_f16 {
        caps |= Capabilities::SHADER_FLOAT16;
    }
    if features.subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    if features.cooperative_matrix {
        caps |= Capabilities::COOPERATIVE_MATRIX;
    }
    caps
}

/// Parses `kernel.source` and validates it for an adapter with `features`, then checks that the
/// entry point exists and that its bindings, parameter struct, override constants and workgroup
/// size are those the description states.
pub fn validate(kernel: &Kernel, features: Features) -> Result<ValidationReport, ValidationError> {
    let module = naga::front::wgsl::parse_str(kernel.source)
        .map_err(|e| ValidationError::Parse(e.emit_to_string(kernel.source)))?;
    let info = Validator::new(ValidationFlags::all(), capabilities(features))
        .validate(&module)
        .map_err(|e| ValidationError::Invalid(e.emit_to_string(kernel.source)))?;
    let mismatch = |what: String| Err(ValidationError::Mismatch(what));

    let Some((entry_index, entry)) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, ep)| ep.name == kernel.entry_point)
    else {
        return mismatch(format!("no entry point `{}`", kernel.entry_point));
    };
    let entry_info = info.get_entry_point(entry_index);

    // Bindings actually used by the entry point, with their access.
    let mut used = Vec::new();
    for (handle, var) in module.global_variables.iter() {
        let (Some(binding), false) = (&var.binding, entry_info[handle].is_empty()) else {
            continue;
        };
        if binding.group != 0 {
            return mismatch(format!("binding in group {}", binding.group));
        }
        let access = match var.space {
            naga::AddressSpace::Uniform => Access::Uniform,
            naga::AddressSpace::Storage { access }
                if access.contains(naga::StorageAccess::STORE) =>
            {
                Access::ReadWrite
            }
            naga::AddressSpace::Storage { .. } => Access::ReadOnly,
            other => return mismatch(format!("unexpected address space {other:?}")),
        };
        used.push((
            binding.binding,
            var.name.clone().unwrap_or_default(),
            access,
        ));
    }
    used.sort_by_key(|(index, _, _)| *index);
    let described: Vec<_> = kernel
        .bindings
        .iter()
        .map(|b| (b.index, b.name.to_string(), b.access))
        .collect();
    if used != described {
        return mismatch(format!("bindings used {used:?}, described {described:?}"));
    }

    // The parameter struct behind binding 0.
    let params_var = module
        .global_variables
        .iter()
        .find(|(_, v)| v.binding.as_ref().is_some_and(|b| b.binding == 0));
    let Some((_, params_var)) = params_var else {
        return mismatch("no binding 0".into());
    };
    let ty = &module.types[params_var.ty];
    let naga::TypeInner::Struct { members, span } = &ty.inner else {
        return mismatch("binding 0 is not a struct".into());
    };
    // Names, order and types (u32 or f32), as `param_block!` declared them.
    let fields: Vec<(String, Option<Scalar>)> = members
        .iter()
        .map(|m| {
            let scalar = match module.types[m.ty].inner {
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Uint,
                    width: 4,
                }) => Some(Scalar::U32),
                naga::TypeInner::Scalar(naga::Scalar {
                    kind: naga::ScalarKind::Float,
                    width: 4,
                }) => Some(Scalar::F32),
                _ => None,
            };
            (m.name.clone().unwrap_or_default(), scalar)
        })
        .collect();
    let described: Vec<(String, Option<Scalar>)> = kernel
        .params
        .fields
        .iter()
        .map(|&(name, scalar)| (name.to_string(), Some(scalar)))
        .collect();
    if ty.name.as_deref() != Some(kernel.params.name) || fields != described {
        return mismatch(format!(
            "params struct {:?} {fields:?}, described {} {described:?}",
            ty.name, kernel.params.name
        ));
    }
    if u64::from(*span) != kernel.params_size() {
        return mismatch(format!(
            "params struct is {span} bytes, not {} 32-bit words",
            fields.len()
        ));
    }

    // Override constants: every described one exists with the same default.
    for constant in kernel.constants {
        let found = module
            .overrides
            .iter()
            .find(|(_, o)| o.name.as_deref() == Some(constant.name));
        let default = found
            .and_then(|(_, o)| o.init)
            .map(|init| &module.global_expressions[init]);
        if default
            != Some(&naga::Expression::Literal(naga::Literal::U32(
                constant.default,
            )))
        {
            return mismatch(format!(
                "override {} = {} not found in the source",
                constant.name, constant.default
            ));
        }
    }

    // Workgroup size, dimension by dimension.
    for (axis, dim) in kernel.workgroup_size.iter().enumerate() {
        let overridden = entry
            .workgroup_size_overrides
            .and_then(|o| o.get(axis).copied().flatten())
            .map(|expr| &module.global_expressions[expr]);
        let ok = match (dim, overridden) {
            (Dim::Fixed(n), None) => entry.workgroup_size.get(axis) == Some(n),
            (Dim::Constant(name), Some(naga::Expression::Override(handle))) => {
                module.overrides[*handle].name.as_deref() == Some(*name)
            }
            _ => false,
        };
        if !ok {
            return mismatch(format!("workgroup size axis {axis} is not {dim:?}"));
        }
    }

    Ok(ValidationReport {
        bindings: used.len(),
        overrides: module.overrides.len(),
    })
}
