//! Every kernel variant through naga's writers for the native backends wgpu uses — SPIR-V
//! (Vulkan), MSL (Metal), HLSL (DX12) — and back through WGSL, with the override constants
//! resolved first as wgpu does when it creates a pipeline.
//!
//! Only Vulkan runs on the machines this project is tested on; translating every variant proves
//! the other backends as far as a compiler can without their drivers: naga accepts the module and
//! emits code for the shading-language version wgpu would use on an adapter offering the same
//! features. Each feature set is translated for the oldest target that can express it:
//!
//! | features | SPIR-V | MSL | HLSL |
//! |---|---|---|---|
//! | core | 1.0 | 2.0 | SM 5.1 (FXC) |
//! | f16 | 1.0 + `SPV_KHR_16bit_storage` | 2.0 (`half` is core MSL) | SM 6.2 (16-bit types) |
//! | subgroups | 1.3 (`GroupNonUniform*`) | 2.1 (SIMD-group functions) | SM 6.0 (wave intrinsics) |
//! | f16+subgroups | 1.3 | 2.1 | SM 6.2 |
//! | f16+subgroups+coop | 1.6 + `SPV_KHR_cooperative_matrix` | 2.3 (8×8 tiles only) | excluded |
//!
//! wgpu's DX12 backend only offers SHADER_F16 at SM ≥ 6.2 and SUBGROUP at SM ≥ 6.0, its Metal
//! backend SUBGROUP only on SIMD-group capable families and its Vulkan backend SUBGROUP on Vulkan
//! ≥ 1.1 (SPIR-V ≥ 1.3), so the runtime's feature detection never selects a variant for a target
//! below these: an f16 variant in SM 5.1 is excluded by construction, and [`translate_for`]
//! reports such a combination as [`Translation::Excluded`] with the reason.
//!
//! Cooperative-matrix variants are written where [`CoopTile::expressible_in`] says their tile
//! can be, the table the runtime selects a device's tile from: SPIR-V for 8×8 and 16×16 tiles,
//! MSL for 8×8 tiles (Metal's simdgroup matrices; naga would write a 16×16 tile as
//! `simdgroup_half16x16`, a type Metal does not have), HLSL for none.

use crate::gemm_coop::{CoopTile, Language};
use crate::validate::capabilities;
use crate::{Features, Kernel};
use naga::back::PipelineConstants;
use naga::valid::{ModuleInfo, ValidationFlags, Validator};
use naga::{Module, ShaderStage};

/// A naga writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SPIR-V for Vulkan.
    SpirV,
    /// Metal Shading Language.
    Msl,
    /// HLSL for DX12.
    Hlsl,
    /// WGSL written back out (overrides resolved), re-parsed and validated again.
    Wgsl,
}

impl Backend {
    /// Every backend, in table order.
    pub const ALL: [Backend; 4] = [Backend::SpirV, Backend::Msl, Backend::Hlsl, Backend::Wgsl];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::SpirV => "spir-v",
            Backend::Msl => "msl",
            Backend::Hlsl => "hlsl",
            Backend::Wgsl => "wgsl",
        }
    }
}

/// The language version a backend is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// SPIR-V (major, minor).
    SpirV(u8, u8),
    /// MSL (major, minor).
    Msl(u8, u8),
    /// HLSL shader model.
    Hlsl(naga::back::hlsl::ShaderModel),
    /// WGSL.
    Wgsl,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::SpirV(major, minor) => write!(f, "spv{major}.{minor}"),
            Target::Msl(major, minor) => write!(f, "msl{major}.{minor}"),
            Target::Hlsl(model) => write!(f, "sm{}", model.to_str().replace('_', ".")),
            Target::Wgsl => write!(f, "wgsl"),
        }
    }
}

/// The oldest target of `backend` that wgpu would use on an adapter offering `features`
/// (see the module documentation for why).
pub fn target_for(backend: Backend, features: Features) -> Target {
    use naga::back::hlsl::ShaderModel;
    match backend {
        // As wgpu writes it on Vulkan ≥ 1.3, where drivers offer VK_KHR_cooperative_matrix with the
        // Vulkan memory model wgpu requires for it.
        Backend::SpirV if features.cooperative_matrix => Target::SpirV(1, 6),
        Backend::SpirV if features.subgroups => Target::SpirV(1, 3),
        Backend::SpirV => Target::SpirV(1, 0),
        Backend::Msl if features.cooperative_matrix => Target::Msl(2, 3),
        Backend::Msl if features.subgroups => Target::Msl(2, 1),
        Backend::Msl => Target::Msl(2, 0),
        Backend::Hlsl if features.shader_f16 => Target::Hlsl(ShaderModel::V6_2),
        Backend::Hlsl if features.subgroups => Target::Hlsl(ShaderModel::V6_0),
        Backend::Hlsl => Target::Hlsl(ShaderModel::V5_1),
        Backend::Wgsl => Target::Wgsl,
    }
}

/// What translating one variant gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Translation {
    /// Written for `target`; `size` is the output's length (SPIR-V words, else bytes).
    Written {
        /// The language version used.
        target: Target,
        /// Output length.
        size: usize,
    },
    /// The target cannot express the variant; the runtime never selects it there.
    Excluded {
        /// The language version asked for.
        target: Target,
        /// Why.
        reason: &'static str,
    },
}

/// Why a translation failed (a bug in a shader or in naga, never an expected exclusion).
#[derive(Debug, thiserror::Error)]
pub enum TranslateError {
    /// The variant does not validate for these features (see [`crate::validate`]).
    #[error("{0}")]
    Invalid(String),
    /// Resolving the override constants failed.
    #[error("override constants: {0}")]
    Overrides(String),
    /// The backend writer failed.
    #[error("{backend} ({target}) writer: {message}")]
    Writer {
        /// Which writer.
        backend: &'static str,
        /// For which version.
        target: Target,
        /// naga's message.
        message: String,
    },
    /// The WGSL written back does not parse or validate.
    #[error("WGSL written back does not {stage}: {message}")]
    WgslRoundTrip {
        /// "parse" or "validate".
        stage: &'static str,
        /// naga's message.
        message: String,
    },
}

fn parse_and_validate(
    kernel: &Kernel,
    features: Features,
) -> Result<(Module, ModuleInfo), TranslateError> {
    let module = naga::front::wgsl::parse_str(kernel.source)
        .map_err(|e| TranslateError::Invalid(e.emit_to_string(kernel.source)))?;
    let info = Validator::new(ValidationFlags::all(), capabilities(features))
        .validate(&module)
        .map_err(|e| TranslateError::Invalid(e.emit_to_string(kernel.source)))?;
    Ok((module, info))
}

/// Translates `kernel` for an adapter with `features` with the target [`target_for`] picks.
pub fn translate(
    kernel: &'static Kernel,
    features: Features,
    backend: Backend,
) -> Result<Translation, TranslateError> {
    translate_for(kernel, features, target_for(backend, features))
}

/// Translates `kernel`, validated for `features`, to `target` with the kernel's default override
/// values (the pipeline constants the runtime passes unless a constructor changes one).
pub fn translate_for(
    kernel: &'static Kernel,
    features: Features,
    target: Target,
) -> Result<Translation, TranslateError> {
    use naga::back::hlsl::ShaderModel;
    if let Some(reason) = exclusion(kernel, target) {
        return Ok(Translation::Excluded { target, reason });
    }
    let (module, info) = parse_and_validate(kernel, features)?;
    let writer_error = |backend: &'static str, message: String| TranslateError::Writer {
        backend,
        target,
        message,
    };

    let mut constants = PipelineConstants::default();
    for (name, value) in kernel.default_constants().pairs(kernel) {
        constants.insert(name.to_string(), value);
    }
    let entry = (ShaderStage::Compute, kernel.entry_point);
    let (module, info) =
        naga::back::pipeline_constants::process_overrides(&module, &info, Some(entry), &constants)
            .map_err(|e| TranslateError::Overrides(e.to_string()))?;

    if target == Target::Wgsl {
        // Written after the overrides are resolved, with override-sized arrays given their
        // resolved length: naga 30's WGSL writer panics on the anonymous override behind
        // `array<f32, CHUNK_SIZE * COLUMNS>` and writes a pending-size array without its element
        // type (`array<N>`), both naga bugs that do not affect the shaders themselves.
        let module = with_array_sizes_resolved(&module)?;
        let text =
            naga::back::wgsl::write_string(&module, &info, naga::back::wgsl::WriterFlags::empty())
                .map_err(|e| writer_error("wgsl", e.to_string()))?;
        let reparsed =
            naga::front::wgsl::parse_str(&text).map_err(|e| TranslateError::WgslRoundTrip {
                stage: "parse",
                message: e.emit_to_string(&text),
            })?;
        Validator::new(ValidationFlags::all(), capabilities(features))
            .validate(&reparsed)
            .map_err(|e| TranslateError::WgslRoundTrip {
                stage: "validate",
                message: e.emit_to_string(&text),
            })?;
        if !reparsed
            .entry_points
            .iter()
            .any(|ep| ep.name == kernel.entry_point)
        {
            return Err(TranslateError::WgslRoundTrip {
                stage: "keep the entry point",
                message: kernel.entry_point.to_string(),
            });
        }
        return Ok(Translation::Written {
            target,
            size: text.len(),
        });
    }

    let size = match target {
        Target::SpirV(major, minor) => {
            let options = naga::back::spv::Options {
                lang_version: (major, minor),
                flags: naga::back::spv::WriterFlags::empty(),
                ..Default::default()
            };
            let pipeline = naga::back::spv::PipelineOptions {
                shader_stage: ShaderStage::Compute,
                entry_point: kernel.entry_point.to_string(),
            };
            naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
                .map_err(|e| writer_error("spir-v", e.to_string()))?
                .len()
        }
        Target::Msl(..) => write_msl(kernel, &module, &info, target)?.len(),
        Target::Hlsl(shader_model) => {
            let options = naga::back::hlsl::Options {
                shader_model,
                ..Default::default()
            };
            let pipeline = naga::back::hlsl::PipelineOptions {
                entry_point: Some((ShaderStage::Compute, kernel.entry_point.to_string())),
            };
            let mut text = String::new();
            let reflection = naga::back::hlsl::Writer::new(&mut text, &options, &pipeline)
                .write(&module, &info, None)
                .map_err(|e| writer_error("hlsl", e.to_string()))?;
            for name in reflection.entry_point_names {
                name.map_err(|e| writer_error("hlsl", e.to_string()))?;
            }
            let half_types = ["half", "half2", "half3", "half4", "float16_t"];
            let uses_half = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .any(|token| half_types.contains(&token));
            if shader_model < ShaderModel::V6_2 && uses_half {
                return Err(writer_error(
                    "hlsl",
                    "16-bit types emitted below SM 6.2".to_string(),
                ));
            }
            text.len()
        }
        Target::Wgsl => 0,
    };
    Ok(Translation::Written { target, size })
}

/// A copy of `module` whose override-sized array types have their resolved constant length.
fn with_array_sizes_resolved(module: &Module) -> Result<Module, TranslateError> {
    let mut module = module.clone();
    let pending: Vec<_> = module
        .types
        .iter()
        .filter_map(|(handle, ty)| match ty.inner {
            naga::TypeInner::Array {
                base,
                size: size @ naga::ArraySize::Pending(_),
                stride,
            } => Some((handle, base, size, stride)),
            _ => None,
        })
        .collect();
    for (index, (handle, base, size, stride)) in pending.into_iter().enumerate() {
        let length = match size.resolve(module.to_ctx()) {
            Ok(naga::proc::IndexableLength::Known(length)) => length,
            other => return Err(TranslateError::Overrides(format!("array size {other:?}"))),
        };
        let size = std::num::NonZeroU32::new(length)
            .map(naga::ArraySize::Constant)
            .ok_or_else(|| TranslateError::Overrides("zero-sized array".into()))?;
        // A unique name keeps the type distinct from an identical one already in the arena
        // (the WGSL writer writes arrays inline, without their name).
        let resolved = naga::Type {
            name: Some(format!("resolved_array_{index}")),
            inner: naga::TypeInner::Array { base, size, stride },
        };
        module.types.replace(handle, resolved);
    }
    Ok(module)
}

/// The tile of a cooperative-matrix variant (the GEMM's, or the attention prefill's).
fn coop_tile(kernel: &Kernel) -> Option<CoopTile> {
    CoopTile::ALL.into_iter().find(|&tile| {
        std::ptr::eq(tile.kernel(), kernel)
            || std::ptr::eq(tile.direct_kernel(), kernel)
            || std::ptr::eq(crate::attention::prefill_coop_kernel(tile), kernel)
            || std::ptr::eq(crate::retention::chunk_outputs_coop_kernel(tile), kernel)
            || std::ptr::eq(crate::retention::chunk_updates_coop_kernel(tile), kernel)
    })
}

/// Why `target` cannot run `kernel`, if it cannot.
pub fn exclusion(kernel: &Kernel, target: Target) -> Option<&'static str> {
    use naga::back::hlsl::ShaderModel;
    let requires = kernel.requires;
    match target {
        Target::Hlsl(_) if requires.cooperative_matrix => Some(
            "naga's HLSL writer has no cooperative matrices; wgpu's DX12 backend never offers them",
        ),
        Target::Msl(..)
            if requires.cooperative_matrix
                && !coop_tile(kernel).is_some_and(|tile| tile.expressible_in(Language::Msl)) =>
        {
            Some(
                "Metal's simdgroup matrices are 8×8 only: naga writes a 16×16 tile as a type \
                 Metal lacks, and the runtime never selects one there",
            )
        }
        Target::Hlsl(model) if requires.shader_f16 && model < ShaderModel::V6_2 => {
            Some("16-bit types need SM 6.2 (DXC); wgpu's DX12 offers shader-f16 only there")
        }
        Target::Hlsl(model) if requires.subgroups && model < ShaderModel::V6_0 => {
            Some("wave intrinsics need SM 6.0 (DXC); wgpu's DX12 offers subgroups only there")
        }
        Target::SpirV(major, minor) if requires.subgroups && (major, minor) < (1, 3) => {
            Some("GroupNonUniform operations need SPIR-V 1.3 (Vulkan 1.1)")
        }
        Target::Msl(major, minor) if requires.subgroups && (major, minor) < (2, 1) => {
            Some("SIMD-group reductions need MSL 2.1")
        }
        _ => None,
    }
}

/// The MSL naga writes for `kernel` under `features` (MSL 2.3 where cooperative matrices are
/// asked for, as wgpu's Metal backend writes them), whether or not the runtime would select it.
pub fn msl_text(kernel: &'static Kernel, features: Features) -> Result<String, TranslateError> {
    let target = target_for(Backend::Msl, features);
    let (module, info) = parse_and_validate(kernel, features)?;
    let (module, info) = resolve_overrides(kernel, &module, &info)?;
    write_msl(kernel, &module, &info, target)
}

fn resolve_overrides(
    kernel: &'static Kernel,
    module: &Module,
    info: &ModuleInfo,
) -> Result<(Module, ModuleInfo), TranslateError> {
    let mut constants = PipelineConstants::default();
    for (name, value) in kernel.default_constants().pairs(kernel) {
        constants.insert(name.to_string(), value);
    }
    let entry = (ShaderStage::Compute, kernel.entry_point);
    naga::back::pipeline_constants::process_overrides(module, info, Some(entry), &constants)
        .map(|(module, info)| (module.into_owned(), info.into_owned()))
        .map_err(|e| TranslateError::Overrides(e.to_string()))
}

fn write_msl(
    kernel: &Kernel,
    module: &Module,
    info: &ModuleInfo,
    target: Target,
) -> Result<String, TranslateError> {
    let Target::Msl(major, minor) = target else {
        return Err(TranslateError::Overrides(format!("{target} is not MSL")));
    };
    let writer_error = |message: String| TranslateError::Writer {
        backend: "msl",
        target,
        message,
    };
    let options = naga::back::msl::Options {
        lang_version: (major, minor),
        ..Default::default()
    };
    let pipeline = naga::back::msl::PipelineOptions {
        entry_point: Some((ShaderStage::Compute, kernel.entry_point.to_string())),
        ..Default::default()
    };
    let (text, translation) = naga::back::msl::write_string(module, info, &options, &pipeline)
        .map_err(|e| writer_error(e.to_string()))?;
    for name in translation.entry_point_names {
        name.map_err(|e| writer_error(e.to_string()))?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{all_kernels, kernels_for};

    #[test]
    fn every_variant_translates_for_every_backend_under_every_feature_set() {
        let mut failures = Vec::new();
        let mut written = 0;
        let mut excluded = 0;
        for features in Features::combinations() {
            for kernel in kernels_for(features) {
                for backend in Backend::ALL {
                    match translate(kernel, features, backend) {
                        Ok(Translation::Written { .. }) => written += 1,
                        // The expected exclusions: cooperative matrices on DX12, and tiles
                        // Metal lacks (the runtime never selects them there).
                        Ok(Translation::Excluded { .. })
                            if kernel.requires.cooperative_matrix
                                && matches!(backend, Backend::Msl | Backend::Hlsl) =>
                        {
                            excluded += 1
                        }
                        Ok(Translation::Excluded { target, reason }) => failures.push(format!(
                            "{} under {features} excluded from {target}: {reason}",
                            kernel.name
                        )),
                        Err(e) => failures.push(format!(
                            "{} under {features} to {}: {e}",
                            kernel.name,
                            backend.name()
                        )),
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
        let coop: Vec<_> = all_kernels()
            .into_iter()
            .filter(|k| k.requires.cooperative_matrix)
            .collect();
        assert!(!coop.is_empty());
        // Per cooperative-matrix variant: HLSL always excluded, MSL unless its tile is 8×8.
        let expected_exclusions: usize = coop
            .iter()
            .map(|k| {
                let msl = coop_tile(k).is_some_and(|t| t.expressible_in(Language::Msl));
                1 + usize::from(!msl)
            })
            .sum();
        assert_eq!(excluded, expected_exclusions);
        assert!(
            written >= (all_kernels().len() - coop.len()) * Backend::ALL.len() + coop.len() * 2
        );
    }

    #[test]
    fn the_runtimes_tile_table_is_what_naga_writes() {
        // The runtime picks a device's tile with `CoopTile::expressible_in`; each claim is
        // checked here by translating the variant.
        for tile in CoopTile::ALL {
            let kernel = tile.kernel();
            for (backend, language) in [
                (Backend::SpirV, Language::SpirV),
                (Backend::Msl, Language::Msl),
                (Backend::Hlsl, Language::Hlsl),
            ] {
                let result = translate(kernel, Features::ALL, backend).expect("translation");
                let written = matches!(result, Translation::Written { .. });
                assert_eq!(
                    written,
                    tile.expressible_in(language),
                    "{} to {}: {result:?}",
                    kernel.name,
                    backend.name()
                );
            }
        }
    }

    #[test]
    fn eight_by_eight_tiles_become_metal_simdgroup_matrices() {
        let text = msl_text(CoopTile::Eight.kernel(), Features::ALL).expect("msl");
        for needed in [
            "simdgroup_half8x8",
            "simdgroup_float8x8",
            "simdgroup_load",
            "simdgroup_store",
            "simdgroup_multiply_accumulate",
        ] {
            assert!(text.contains(needed), "MSL lacks {needed}");
        }
        // Loads from threadgroup memory (the staged tiles) as well as from device memory.
        assert!(
            text.contains("const threadgroup half*"),
            "no threadgroup tile loads"
        );
        // A 16×16 tile would be written as a type Metal does not have: why it is excluded.
        let text = msl_text(CoopTile::Sixteen.kernel(), Features::ALL).expect("msl");
        assert!(text.contains("simdgroup_half16x16"));
    }

    #[test]
    fn targets_below_a_variants_needs_are_excluded_with_a_reason() {
        use naga::back::hlsl::ShaderModel;
        let f16 = &crate::linear::MATVEC[0][1];
        let subgroup = &crate::linear::MATVEC[1][0];
        for (kernel, target) in [
            (f16, Target::Hlsl(ShaderModel::V5_1)),
            (f16, Target::Hlsl(ShaderModel::V6_0)),
            (subgroup, Target::Hlsl(ShaderModel::V5_1)),
            (subgroup, Target::SpirV(1, 0)),
            (subgroup, Target::Msl(2, 0)),
        ] {
            let result = translate_for(kernel, Features::ALL, target).expect("translation");
            assert!(
                matches!(result, Translation::Excluded { .. }),
                "{} {target}: {result:?}",
                kernel.name
            );
        }
    }

    /// Bytes of workgroup memory `kernel` declares under `values`, as naga lays it out.
    fn workgroup_bytes(kernel: &'static Kernel, values: crate::ConstantValues) -> u32 {
        let (module, info) = parse_and_validate(kernel, kernel.requires).expect("valid");
        let mut constants = PipelineConstants::default();
        for (name, value) in values.pairs(kernel) {
            constants.insert(name.to_string(), value);
        }
        let entry = (ShaderStage::Compute, kernel.entry_point);
        let (module, _) = naga::back::pipeline_constants::process_overrides(
            &module,
            &info,
            Some(entry),
            &constants,
        )
        .expect("overrides");
        let module = with_array_sizes_resolved(&module).expect("sizes");
        module
            .global_variables
            .iter()
            .filter(|(_, v)| v.space == naga::AddressSpace::WorkGroup)
            .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
            .sum()
    }

    #[test]
    fn every_variant_fits_webgpu_default_workgroup_limits() {
        // A browser's WebGPU may offer no more than the spec's defaults: 16 KiB of workgroup
        // memory and 256 invocations (256 × 256 × 64). The chunked retention kernels' memory
        // depends on their chunk, which the runtime fits to the adapter (next test).
        let fitted = [
            &crate::retention::CHUNKWISE,
            &crate::retention::CHUNK_OUTPUTS,
        ];
        let mut over = Vec::new();
        for kernel in crate::all_kernels() {
            let values = kernel.default_constants();
            let [x, y, z] = kernel.workgroup_size(&values);
            if !(x * y * z <= 256 && x <= 256 && y <= 256 && z <= 64) {
                over.push(format!("{}: workgroup {x}×{y}×{z}", kernel.name));
            }
            // Cooperative matrices are never offered in a browser; the runtime fits the
            // GEMM's tile to the adapter (next tests).
            if fitted.iter().any(|f| std::ptr::eq(kernel, *f)) || kernel.requires.cooperative_matrix
            {
                continue;
            }
            let bytes = workgroup_bytes(kernel, values);
            if bytes > 16384 {
                over.push(format!(
                    "{}: {bytes} bytes of workgroup memory",
                    kernel.name
                ));
            }
        }
        assert!(over.is_empty(), "{}", over.join("\n"));
    }

    #[test]
    fn the_runtime_reads_every_variants_workgroup_memory_as_naga_lays_it_out() {
        // `crate::workgroup_bytes` evaluates override-sized arrays itself (the runtime has no
        // naga backend to run `process_overrides` with); here against naga's own resolution.
        for kernel in crate::all_kernels() {
            let values = kernel.default_constants();
            assert_eq!(
                crate::workgroup_bytes(kernel, &values).expect("readable"),
                workgroup_bytes(kernel, values),
                "{}",
                kernel.name
            );
        }
    }

    #[test]
    fn chunked_retention_workgroup_memory_is_what_the_runtime_budgets() {
        use crate::retention::{chunk_outputs_workgroup_bytes, chunkwise_workgroup_bytes};
        let budgets = [
            (
                &crate::retention::CHUNKWISE,
                chunkwise_workgroup_bytes as fn(u32) -> u32,
            ),
            (
                &crate::retention::CHUNK_OUTPUTS,
                chunk_outputs_workgroup_bytes,
            ),
        ];
        for (kernel, budget) in budgets {
            for chunk in [1u32, 7, 16, 32, 39, 40, 64] {
                let values = kernel.default_constants().with(kernel, "CHUNK_SIZE", chunk);
                assert_eq!(
                    workgroup_bytes(kernel, values),
                    budget(chunk),
                    "{} chunk {chunk}",
                    kernel.name
                );
            }
            // Some chunk fits WebGPU's default 16 KiB.
            assert!(budget(16) <= 16384, "{}", kernel.name);
        }
    }

    #[test]
    fn gemm_coop_workgroup_memory_is_what_the_runtime_budgets() {
        for tile in CoopTile::ALL {
            let kernel = tile.kernel();
            assert_eq!(
                workgroup_bytes(kernel, kernel.default_constants()),
                tile.workgroup_bytes(),
                "{}",
                kernel.name
            );
        }
        // The 8×8 variant fits WebGPU's default 16 KiB; the 16×16 one the 48 KiB of NVIDIA GPUs.
        assert!(CoopTile::Eight.workgroup_bytes() <= 16384);
        assert!(CoopTile::Sixteen.workgroup_bytes() <= 49152);
    }

    #[test]
    fn override_constants_chosen_by_constructors_translate_too() {
        // The chunk size is the one constant the runtime changes (it sizes workgroup arrays).
        let kernel = &crate::retention::CHUNKWISE;
        let (module, info) = parse_and_validate(kernel, Features::NONE).expect("valid");
        for chunk in [1u32, 7, 64] {
            let values = kernel.default_constants().with(kernel, "CHUNK_SIZE", chunk);
            let mut constants = PipelineConstants::default();
            for (name, value) in values.pairs(kernel) {
                constants.insert(name.to_string(), value);
            }
            let (module, info) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, kernel.entry_point)),
                &constants,
            )
            .expect("overrides");
            naga::back::spv::write_vec(&module, &info, &Default::default(), None).expect("spir-v");
        }
    }
}
