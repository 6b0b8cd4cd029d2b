//! Workgroup memory of a kernel variant, read from naga's IR of its shader: the sizes of the
//! workgroup variables its entry point uses, with override-sized arrays evaluated under the
//! override values of a dispatch. The runtime fits chunk sizes and tiles to the adapter with
//! this, so no size formula is written out by hand next to the shader.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use naga::valid::{ValidationFlags, Validator};

use crate::{ConstantValues, Kernel, ValidationError};

/// What [`workgroup_bytes`] needs of a parsed and validated module.
struct Parsed {
    module: naga::Module,
    /// Types of the workgroup variables the entry point uses.
    workgroup_types: Vec<naga::Handle<naga::Type>>,
}

/// Parsed modules by kernel name: each is parsed and validated once per process.
fn cache() -> &'static Mutex<HashMap<&'static str, Arc<Parsed>>> {
    static CACHE: OnceLock<Mutex<HashMap<&'static str, Arc<Parsed>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn parsed(kernel: &'static Kernel) -> Result<Arc<Parsed>, ValidationError> {
    if let Some(p) = cache()
        .lock()
        .ok()
        .and_then(|c| c.get(kernel.name).cloned())
    {
        return Ok(p);
    }
    let module = naga::front::wgsl::parse_str(kernel.source)
        .map_err(|e| ValidationError::Parse(e.emit_to_string(kernel.source)))?;
    let info = Validator::new(
        ValidationFlags::all(),
        crate::validate::capabilities(kernel.requires),
    )
    .validate(&module)
    .map_err(|e| ValidationError::Invalid(e.emit_to_string(kernel.source)))?;
    let entry = module
        .entry_points
        .iter()
        .position(|ep| ep.name == kernel.entry_point)
        .ok_or_else(|| {
            ValidationError::Mismatch(format!("no entry point `{}`", kernel.entry_point))
        })?;
    let entry_info = info.get_entry_point(entry);
    let workgroup_types = module
        .global_variables
        .iter()
        .filter(|(handle, var)| {
            var.space == naga::AddressSpace::WorkGroup && !entry_info[*handle].is_empty()
        })
        .map(|(_, var)| var.ty)
        .collect();
    let parsed = Arc::new(Parsed {
        module,
        workgroup_types,
    });
    if let Ok(mut c) = cache().lock() {
        c.insert(kernel.name, Arc::clone(&parsed));
    }
    Ok(parsed)
}

/// Bytes of workgroup memory `kernel` declares when dispatched with `constants` (the sum of
/// its workgroup variables' sizes, as naga lays them out).
pub fn workgroup_bytes(
    kernel: &'static Kernel,
    constants: &ConstantValues,
) -> Result<u32, ValidationError> {
    let parsed = parsed(kernel)?;
    let overrides = |name: &str| {
        kernel
            .constants
            .iter()
            .position(|c| c.name == name)
            .and_then(|i| constants.0.get(i).copied())
    };
    let mut total: u64 = 0;
    for &ty in &parsed.workgroup_types {
        total = total.saturating_add(type_bytes(&parsed.module, ty, &overrides)?);
    }
    u32::try_from(total).map_err(|_| mismatch(kernel, "workgroup memory over 4 GiB"))
}

fn mismatch(kernel: &Kernel, what: &str) -> ValidationError {
    ValidationError::Mismatch(format!("{}: {what}", kernel.name))
}

/// Size of a type, arrays sized by override expressions included.
fn type_bytes(
    module: &naga::Module,
    ty: naga::Handle<naga::Type>,
    overrides: &dyn Fn(&str) -> Option<u32>,
) -> Result<u64, ValidationError> {
    match module.types[ty].inner {
        naga::TypeInner::Array {
            size: naga::ArraySize::Pending(handle),
            stride,
            ..
        } => {
            let length = override_value(module, handle, overrides)?;
            Ok(u64::from(stride) * length)
        }
        ref inner => Ok(u64::from(inner.size(module.to_ctx()))),
    }
}

fn override_value(
    module: &naga::Module,
    handle: naga::Handle<naga::Override>,
    overrides: &dyn Fn(&str) -> Option<u32>,
) -> Result<u64, ValidationError> {
    let o = &module.overrides[handle];
    if let Some(value) = o.name.as_deref().and_then(overrides) {
        return Ok(u64::from(value));
    }
    let init = o.init.ok_or_else(|| {
        ValidationError::Mismatch(format!("override {:?} without a value", o.name))
    })?;
    evaluate(module, init, overrides)
}

/// The value of an override expression made of integer literals, overrides, constants and
/// `+ − × ÷` (what array sizes in these shaders are written with).
fn evaluate(
    module: &naga::Module,
    expr: naga::Handle<naga::Expression>,
    overrides: &dyn Fn(&str) -> Option<u32>,
) -> Result<u64, ValidationError> {
    use naga::{BinaryOperator as Op, Expression as E, Literal as L};
    let unsupported =
        || ValidationError::Mismatch(format!("array size {:?}", module.global_expressions[expr]));
    Ok(match module.global_expressions[expr] {
        E::Literal(L::U32(v)) => u64::from(v),
        E::Literal(L::I32(v)) => u64::try_from(v).map_err(|_| unsupported())?,
        E::Literal(L::AbstractInt(v)) => u64::try_from(v).map_err(|_| unsupported())?,
        E::Override(h) => override_value(module, h, overrides)?,
        E::Constant(h) => evaluate(module, module.constants[h].init, overrides)?,
        E::Binary { op, left, right } => {
            let (a, b) = (
                evaluate(module, left, overrides)?,
                evaluate(module, right, overrides)?,
            );
            match op {
                Op::Add => a.checked_add(b),
                Op::Subtract => a.checked_sub(b),
                Op::Multiply => a.checked_mul(b),
                Op::Divide => a.checked_div(b),
                _ => None,
            }
            .ok_or_else(unsupported)?
        }
        _ => return Err(unsupported()),
    })
}
