//! The CPU reference against the real peers: logits of every committed fixture (made by
//! torchscale 0.3.0 and fla 0.6.0, see tools/fixtures), in every retention form.

mod common;

use common::*;
use retnet::{CpuModel, Family, RetentionForm};

/// The bar: relative max error ≤ 1e-4 against the peer. torchscale's references are
/// float64; fla's come from its accurate fused_recurrent kernel (~1e-6), so 1e-4 leaves room
/// only for f32 rounding in our accumulations, not for any modelling difference.
const PEER_TOLERANCE: f64 = 1e-4;
/// The three forms compute the same sum in different orders; f32 storage of the state and of
/// intermediate activations bounds their disagreement well below this.
const FORMS_TOLERANCE: f64 = 1e-5;

fn forms(default_chunk: usize) -> Vec<RetentionForm> {
    let mut forms = vec![RetentionForm::Parallel, RetentionForm::Recurrent];
    for chunk_size in [1, 7, 16, 32, default_chunk] {
        forms.push(RetentionForm::Chunkwise { chunk_size });
    }
    forms
}

#[test]
fn fixtures_cover_both_families() {
    let dirs = all_fixtures();
    assert!(
        dirs.len() >= 6,
        "expected at least 6 fixtures, found {}",
        dirs.len()
    );
    let families: Vec<Family> = dirs
        .iter()
        .map(|d| CpuModel::load(d).expect("fixture loads").config().family)
        .collect();
    assert!(families.contains(&Family::Torchscale));
    assert!(families.contains(&Family::Fla));
}

#[test]
fn every_fixture_matches_its_peer_in_every_form() {
    let mut failures = Vec::new();
    for dir in all_fixtures() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let model = CpuModel::load(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let tokens = fixture_tokens(&dir);
        let (shape, want) = read_logits(&dir.join("logits.safetensors"));
        assert_eq!(
            shape,
            vec![tokens.len(), model.config().vocab_size],
            "{name}"
        );
        let parallel = model.logits(&tokens, RetentionForm::Parallel).unwrap();
        for form in forms(model.config().default_chunk_size) {
            let got = model.logits(&tokens, form).unwrap();
            let vs_peer = rel_max_err(&got, &want);
            let vs_parallel = rel_max_err(&got, &parallel);
            println!("{name:32} {form:?}: vs peer {vs_peer:.2e}, vs parallel {vs_parallel:.2e}");
            if vs_peer > PEER_TOLERANCE || vs_parallel > FORMS_TOLERANCE {
                failures.push(format!(
                    "{name} {form:?}: vs peer {vs_peer:.2e}, vs parallel {vs_parallel:.2e}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn prefill_then_steps_equals_one_pass() {
    for dir in all_fixtures() {
        let model = CpuModel::load(&dir).unwrap();
        let tokens = fixture_tokens(&dir);
        let whole = model.logits(&tokens, RetentionForm::Parallel).unwrap();
        let split = tokens.len() / 3;
        let mut state = model.new_state();
        let mut got = model
            .forward(
                &tokens[..split],
                &mut state,
                RetentionForm::Chunkwise { chunk_size: 5 },
            )
            .unwrap();
        for &t in &tokens[split..] {
            got.extend(
                model
                    .forward(&[t], &mut state, RetentionForm::Recurrent)
                    .unwrap(),
            );
        }
        assert_eq!(state.position, tokens.len());
        let err = rel_max_err(&got, &whole);
        assert!(err <= FORMS_TOLERANCE, "{}: {err:.2e}", dir.display());
    }
}
