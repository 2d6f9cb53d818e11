//! mhc_pre forward's cooperative-matrix path (`ContextOptions::cooperative_matrix`). On an
//! adapter without f16 cooperative matrices (lavapipe in CI) the option must be refused with
//! an error that names them; on one with them (an NVIDIA GPU through Vulkan) every output is
//! checked against the golden math over shapes that exercise the splits of K, partial tiles
//! of tokens, token chunks, shapes the path does not take, and tokens it must hand to the
//! exact f32 projection. Each test prints which of the two it checked (libtest shows a passing
//! test's output with `--nocapture`). `MHC_REQUIRE_COOP=1` makes a refusal fail instead, for
//! runs on hardware that has the path, where a pass must mean it was checked.

mod common;

use common::*;
use mhc::core::random::{PreInputs, TensorRng, seed_from_env};
use mhc::core::{DType, Dims, HostTensor, SinkhornParams};
use mhc::runtime::{Context, ContextOptions};

/// The cooperative-matrix context, or `None` after checking that the refusal names what is
/// missing.
fn coop_ctx(opts: ContextOptions) -> Option<Context> {
    match Context::with_options(ContextOptions { cooperative_matrix: true, ..opts }) {
        Ok(ctx) => {
            assert!(ctx.capabilities().cooperative_matrix);
            eprintln!("checking the cooperative-matrix path on {}", ctx.adapter_info().name);
            Some(ctx)
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(std::env::var("MHC_REQUIRE_COOP").as_deref() != Ok("1"), "MHC_REQUIRE_COOP=1: {msg}");
            assert!(msg.contains("cooperative matri"), "unexpected refusal: {msg}");
            eprintln!("cooperative matrices refused, as they must be here: {msg}");
            None
        }
    }
}

#[test]
fn coop_pre_forward_matches_golden_or_is_refused() {
    let Some(ctx) = coop_ctx(ContextOptions::default()) else { return };
    // (T, n, D): one token; splits of K with 1, 2 and 4 chunks in flight; T not a multiple of
    // the 128-token tile; M = 15 and 3; K not a multiple of 32 and D odd (exact path).
    for (t, n, d) in [(1, 4, 8), (301, 4, 64), (130, 3, 32), (1000, 4, 1024), (77, 1, 96), (513, 4, 200), (5, 4, 3)] {
        for gamma in [false, true] {
            run_pre_forward(&ctx, t, n, d, gamma, None);
        }
    }
    run_pre_forward(&ctx, 257, 4, 128, true, Some(SinkhornParams::default()));
}

/// Token chunks (64 KiB bindings) and 2D grids (7 workgroups a dimension).
#[test]
fn coop_pre_forward_in_token_chunks_or_is_refused() {
    let opts = ContextOptions {
        max_binding_size: Some(64 << 10),
        max_workgroups_per_dimension: Some(7),
        ..Default::default()
    };
    let Some(ctx) = coop_ctx(opts) else { return };
    run_pre_forward(&ctx, 700, 4, 64, true, None);
    run_pre_forward(&ctx, 1001, 4, 32, false, Some(SinkhornParams::default()));
}

/// Tokens whose largest |x| is above f16's range, or so small that the f16 conversion could
/// lose bits that matter, must come out exact: the kernel sends them to the f32 projection.
#[test]
fn coop_pre_forward_sends_out_of_range_tokens_to_the_exact_path_or_is_refused() {
    let Some(ctx) = coop_ctx(ContextOptions::default()) else { return };
    let seed = seed_from_env();
    let dims = Dims::new(300, 4, 256).unwrap();
    let mut host = PreInputs::random(&mut TensorRng::new(seed), &dims, true);
    let k = dims.k();
    let mut x = host.x.to_f64();
    for (tok, scale) in [(0, 1e5), (5, 1e-3), (131, 3e4), (299, 1e-6)] {
        for v in &mut x[tok * k..(tok + 1) * k] {
            *v *= scale;
        }
    }
    host.x = HostTensor::from_f64(host.x.shape_vec(), DType::BF16, &x).unwrap();
    check_pre_forward(&ctx, &dims, &host, &PRE_PARAMS, None, true, seed);
}
