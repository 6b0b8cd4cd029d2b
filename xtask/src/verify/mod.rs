//! `cargo xtask verify`: GPU results against f64 CPU computations, one [`Row`] per comparison.
//!
//! - [`kernels`]: every kernel over a matrix of shapes, forms, weight formats and reductions;
//! - [`model`]: the whole model, GPU vs CPU reference (filled in by the model's owner).
//!
//! Errors are measured relative to the largest |reference| value of the output (a norm-wise
//! measure: elementwise relative error is meaningless for outputs that cancel to near zero).

pub mod attention;
pub mod fused;
pub mod kernels;
pub mod model;
/// The f64 references (one copy, shared with the tests).
pub use retnet_testkit::reference;

use retnet_runtime::{Device, DeviceOptions};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Command-line options of `cargo xtask verify`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Options {
    /// A representative subset, for CI.
    #[arg(long)]
    pub quick: bool,
    /// Also write the rows as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<String>,
}

/// The verdict of one row.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Within tolerance.
    Pass,
    /// Over tolerance, non-finite output, or an error (the reason).
    Fail(String),
    /// Not run on this device (the reason).
    Skip(String),
}

/// One comparison: a case (what ran), its shape, the errors, the tolerance and the verdict.
#[derive(Clone, Debug)]
pub struct Row {
    /// Kernel or model path and variant, e.g. `matvec/f16/subgroup`.
    pub case: String,
    /// Sizes and parameters, e.g. `T=4096 H=4/2 K=12 V=20 γ<1`.
    pub shape: String,
    /// max |gpu − ref|.
    pub max_abs: Option<f64>,
    /// max |gpu − ref| / max |ref|.
    pub max_rel: Option<f64>,
    /// Bound on `max_rel`.
    pub tolerance: Option<f64>,
    /// Verdict.
    pub outcome: Outcome,
    /// Time spent on the GPU side and the reference, if measured.
    pub elapsed: Option<Duration>,
}

impl Row {
    /// Compares `gpu` with `reference`: PASS when every value is finite and
    /// max |gpu − ref| / max |ref| ≤ `tolerance`.
    pub fn compare(
        case: impl Into<String>,
        shape: impl Into<String>,
        gpu: &[f32],
        reference: &[f64],
        tolerance: f64,
    ) -> Row {
        let (case, shape) = (case.into(), shape.into());
        if gpu.len() != reference.len() {
            let message = format!("{} values, reference has {}", gpu.len(), reference.len());
            return Row::fail(case, shape, message);
        }
        let (max_abs, max_rel) = match retnet_testkit::errors(gpu, reference) {
            Ok(errors) => errors,
            // Non-finite values on either side, or an all-zero reference with another output.
            Err(why) => return Row::fail(case, shape, why),
        };
        let outcome = if max_rel <= tolerance {
            Outcome::Pass
        } else {
            Outcome::Fail("over tolerance".into())
        };
        Row {
            case,
            shape,
            max_abs: Some(max_abs),
            max_rel: Some(max_rel),
            tolerance: Some(tolerance),
            outcome,
            elapsed: None,
        }
    }

    /// A row that could not be computed (a runtime error, a panic).
    pub fn fail(case: impl Into<String>, shape: impl Into<String>, reason: String) -> Row {
        Row {
            case: case.into(),
            shape: shape.into(),
            max_abs: None,
            max_rel: None,
            tolerance: None,
            outcome: Outcome::Fail(reason),
            elapsed: None,
        }
    }

    /// A row this device cannot run.
    pub fn skip(
        case: impl Into<String>,
        shape: impl Into<String>,
        reason: impl Into<String>,
    ) -> Row {
        Row {
            case: case.into(),
            shape: shape.into(),
            max_abs: None,
            max_rel: None,
            tolerance: None,
            outcome: Outcome::Skip(reason.into()),
            elapsed: None,
        }
    }

    /// The same row with its time.
    pub fn timed(mut self, elapsed: Duration) -> Row {
        self.elapsed = Some(elapsed);
        self
    }

    fn result(&self) -> String {
        match &self.outcome {
            Outcome::Pass => "PASS".into(),
            Outcome::Fail(reason) => format!("FAIL ({reason})"),
            Outcome::Skip(reason) => format!("SKIP ({reason})"),
        }
    }

    fn json(&self) -> serde_json::Value {
        let (result, reason) = match &self.outcome {
            Outcome::Pass => ("PASS", None),
            Outcome::Fail(reason) => ("FAIL", Some(reason)),
            Outcome::Skip(reason) => ("SKIP", Some(reason)),
        };
        serde_json::json!({
            "case": self.case,
            "shape": self.shape,
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "tolerance": self.tolerance,
            "result": result,
            "reason": reason,
            "seconds": self.elapsed.map(|d| d.as_secs_f64()),
        })
    }
}

fn number(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{v:.2e}"))
}

fn print_table(rows: &[Row]) {
    let case_width = rows
        .iter()
        .map(|r| r.case.chars().count())
        .max()
        .unwrap_or(4);
    let shape_width = rows
        .iter()
        .map(|r| r.shape.chars().count())
        .max()
        .unwrap_or(5);
    println!(
        "{:case_width$}  {:shape_width$}  {:>9}  {:>9}  {:>9}  {:>7}  result",
        "case", "shape", "max abs", "max rel", "tolerance", "seconds"
    );
    for row in rows {
        println!(
            "{:case_width$}  {:shape_width$}  {:>9}  {:>9}  {:>9}  {:>7}  {}",
            row.case,
            row.shape,
            number(row.max_abs),
            number(row.max_rel),
            number(row.tolerance),
            row.elapsed
                .map_or_else(|| "-".into(), |d| format!("{:.2}", d.as_secs_f64())),
            row.result()
        );
    }
}

/// Runs the verification and prints the table; non-zero exit on any FAIL.
pub fn run(options: &Options) -> ExitCode {
    let start = Instant::now();
    let device_options = match DeviceOptions::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let device = match pollster::block_on(Device::new(&device_options)) {
        Ok(device) => std::sync::Arc::new(device),
        Err(e) => {
            eprintln!("no GPU device: {e}");
            return ExitCode::FAILURE;
        }
    };
    // CI's run on a device with cooperative matrices: their rows must run, not skip.
    if std::env::var("RETNET_REQUIRE_COOP").is_ok_and(|v| v == "1") && device.coop_shape().is_none()
    {
        eprintln!("RETNET_REQUIRE_COOP=1, but the adapter offers no usable cooperative matrices");
        return ExitCode::FAILURE;
    }
    let info = device.adapter_info();
    let limits = device.limits();
    println!(
        "device: {} ({:?}, {:?}, driver {} {}); features {}; tensor cores {}; f16 weights {}; \
         workgroup memory {} bytes; storage binding {} MiB",
        info.name,
        info.backend,
        info.device_type,
        info.driver,
        info.driver_info,
        device.features(),
        device.coop_shape().map_or("none".to_string(), |s| format!(
            "{} in subgroups of {}",
            s.tile.kernel().name,
            s.subgroup_size
        )),
        if device.supports_half_weights() {
            "yes"
        } else {
            "no"
        },
        limits.max_compute_workgroup_storage_size,
        limits.max_storage_buffer_binding_size >> 20,
    );
    println!("mode: {}\n", if options.quick { "quick" } else { "full" });

    let mut rows = kernels::rows(&device, options.quick);
    rows.extend(fused::rows(&device, options.quick));
    rows.extend(attention::rows(&device, options.quick));
    rows.extend(model::rows(&device, options.quick));
    print_table(&rows);

    let count = |f: fn(&Outcome) -> bool| rows.iter().filter(|r| f(&r.outcome)).count();
    let passed = count(|o| matches!(o, Outcome::Pass));
    let failed = count(|o| matches!(o, Outcome::Fail(_)));
    let skipped = count(|o| matches!(o, Outcome::Skip(_)));
    let total = start.elapsed();
    println!(
        "\n{} rows: {passed} passed, {failed} failed, {skipped} skipped; total time {:.1} s ({})",
        rows.len(),
        total.as_secs_f64(),
        if options.quick { "quick" } else { "full" }
    );

    if let Some(path) = &options.json {
        let document = serde_json::json!({
            "device": {
                "name": info.name,
                "backend": format!("{:?}", info.backend),
                "type": format!("{:?}", info.device_type),
                "driver": format!("{} {}", info.driver, info.driver_info),
                "features": device.features().to_string(),
            },
            "mode": if options.quick { "quick" } else { "full" },
            "seconds": total.as_secs_f64(),
            "rows": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&document).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::FAILURE;
        }
        println!("rows written to {path}");
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
