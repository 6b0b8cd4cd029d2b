//! Error measures and assertions. The measure everywhere is norm-wise:
//! max |got − want| / max |want| (elementwise relative error is meaningless for outputs that
//! cancel to near zero). Every comparison fails on a non-finite value on either side: a fold
//! with `f64::max` from 0.0 silently drops NaN (`0.0f64.max(NAN) == 0.0`), so all-NaN outputs
//! would score 0.

/// (max |got − want|, max |got − want| / max |want|), or why it cannot be measured: different
/// lengths, a non-finite value on either side, or an all-zero reference.
pub fn errors(got: &[f32], want: &[f64]) -> Result<(f64, f64), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{} values, reference has {}",
            got.len(),
            want.len()
        ));
    }
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        return Err(format!("non-finite output {} at {i}", got[i]));
    }
    if let Some(i) = want.iter().position(|v| !v.is_finite()) {
        return Err(format!("non-finite reference {} at {i}", want[i]));
    }
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(&g, &r)| (f64::from(g) - r).abs())
        .fold(0.0f64, f64::max);
    if scale == 0.0 {
        // An all-zero reference: only an exact answer is right.
        return if max_abs == 0.0 {
            Ok((0.0, 0.0))
        } else {
            Err(format!(
                "reference is all zeros, output differs by {max_abs:.3e}"
            ))
        };
    }
    Ok((max_abs, max_abs / scale))
}

/// max |got − want| / max |want|; +∞ when [`errors`] refuses to measure (non-finite values,
/// lengths, an all-zero reference with a non-zero output), so that every `err <= tolerance`
/// fails.
pub fn max_relative_error(got: &[f32], want: &[f64]) -> f64 {
    errors(got, want).map_or(f64::INFINITY, |(_, rel)| rel)
}

/// [`max_relative_error`] against an f32 reference (the peers' logits, another backend).
pub fn rel_max_err(got: &[f32], want: &[f32]) -> f64 {
    max_relative_error(got, &to_f64(want))
}

/// Asserts `max_relative_error(got, want) <= tolerance`, finite on both sides; prints the
/// measured error (visible with `--nocapture`).
#[track_caller]
pub fn assert_close(what: &str, got: &[f32], want: &[f64], tolerance: f64) {
    match errors(got, want) {
        Ok((_, error)) => {
            eprintln!("{what}: {error:.2e} (tolerance {tolerance:.1e})");
            assert!(
                error <= tolerance,
                "{what}: max error {error:.3e} (relative to max |ref|) over tolerance {tolerance:.1e}"
            );
        }
        Err(why) => panic!("{what}: {why}"),
    }
}

/// [`assert_close`] against an f32 reference.
#[track_caller]
pub fn assert_close_f32(what: &str, got: &[f32], want: &[f32], tolerance: f64) {
    assert_close(what, got, &to_f64(want), tolerance);
}

/// Asserts that `a` and `b` are finite, of one length, and differ by more than `min_difference`
/// relative to max |b| — the guard "the comparison is not vacuous". (`assert_ne!` on float
/// vectors passes on NaN, which differs from everything, itself included.)
#[track_caller]
pub fn assert_finite_and_differ(what: &str, a: &[f32], b: &[f32], min_difference: f64) {
    match errors(a, &to_f64(b)) {
        Ok((_, difference)) => assert!(
            difference > min_difference,
            "{what}: the values differ by only {difference:.3e} (relative), at most {min_difference:.1e}"
        ),
        Err(why) => panic!("{what}: {why}"),
    }
}

pub fn to_f64(values: &[f32]) -> Vec<f64> {
    values.iter().map(|&v| f64::from(v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_never_pass() {
        let want = [1.0f32, 2.0];
        assert!(rel_max_err(&[f32::NAN, f32::NAN], &want).is_infinite());
        assert!(rel_max_err(&[1.0, f32::INFINITY], &want).is_infinite());
        assert!(rel_max_err(&want, &[1.0, f32::NAN]).is_infinite());
        assert!(rel_max_err(&want, &[f32::NEG_INFINITY, 1.0]).is_infinite());
        assert!(rel_max_err(&[1.0], &want).is_infinite(), "lengths");
        assert!(rel_max_err(&[0.0, 1e-30], &[0.0, 0.0]).is_infinite());
        assert_eq!(rel_max_err(&[0.0, 0.0], &[0.0, 0.0]), 0.0);
        assert_eq!(rel_max_err(&want, &want), 0.0);
        assert!((rel_max_err(&[1.0, 2.5], &want) - 0.25).abs() < 1e-12);
    }

    #[test]
    #[should_panic(expected = "non-finite")]
    fn nan_never_differs() {
        assert_finite_and_differ("nan", &[f32::NAN], &[f32::NAN], 0.0);
    }

    #[test]
    #[should_panic(expected = "non-finite output")]
    fn assert_close_rejects_nan() {
        assert_close("nan", &[f32::NAN], &[1.0], 1.0);
    }
}
