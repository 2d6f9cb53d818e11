//! mhc_pre forward and mhc_post forward on the GPU against the golden f64 reference.

mod common;

use common::*;
use mhc::core::golden::post_forward_f64;
use mhc::core::random::{PostInputs, PreInputs, TensorRng, seed_from_env};
use mhc::core::{DType, Dims, Error, HostTensor, PostForwardInputs, PreForwardInputs, PreParams, SinkhornParams};
use mhc::runtime::{Context, ContextOptions, GpuTensor, PreSplit, SplitTile, Tile, ops};

#[test]
fn pre_forward_matches_golden_over_shapes() {
    for n in [1, 2, 4, 8] {
        for d in [1, 3, 127, 256] {
            run_pre_forward(ctx(), 5, n, d, d % 2 == 1, None);
        }
    }
}

#[test]
fn pre_forward_single_token_and_gamma_variants() {
    for gamma in [false, true] {
        run_pre_forward(ctx(), 1, 4, 64, gamma, None);
        run_pre_forward(ctx(), 3, 4, 24, gamma, None);
        // `mhc check --quick`'s shape, with the default (unchecked) kernels: a partial tile
        // whose h_in pass leaves half the workgroup idle.
        run_pre_forward(ctx(), 7, 4, 64, gamma, None);
    }
    // Past `gamma_in_project`'s token count the default layout folds gamma into phi first.
    assert!(!mhc::wgsl::gamma_in_project(8200));
    run_pre_forward(ctx(), 8200, 2, 16, true, None);
}

#[test]
fn pre_forward_without_subgroups() {
    run_pre_forward(ctx_portable(), 7, 4, 64, true, None);
    run_pre_forward(ctx_portable(), 4, 3, 5, false, None);
}

/// mhc_pre forward's workgroup sums (D not a multiple of 8) with `block_reduce`'s clusters of
/// 2 and 4 lanes in lavapipe's subgroups of 8. Where the clusters' partials would pass the
/// device's workgroup memory (2 lanes at n = 3 and 4: about 50 KB), the kernel takes the
/// shared-memory tree instead; on an H200 such a kernel hung before it did. n = 1 and 4 lanes
/// keep the clusters.
#[test]
fn pre_forward_reductions_in_clusters_smaller_than_subgroups() {
    for lanes in [2, 4] {
        run_pre_forward(ctx_reduce_lanes(lanes), 4, 3, 5, false, None);
        run_pre_forward(ctx_reduce_lanes(lanes), 3, 4, 127, true, None);
        run_pre_forward(ctx_reduce_lanes(lanes), 5, 1, 7, true, None);
    }
}

/// The error mhc_pre forward returns on `ctx` for fresh random inputs of `t` tokens (it must
/// refuse them).
fn pre_forward_error(ctx: &Context, t: usize, n: usize, d: usize, gamma: bool) -> Error {
    let dims = Dims::new(t, n, d).unwrap();
    let host = PreInputs::random(&mut TensorRng::new(seed_from_env()), &dims, gamma);
    let (x, phi, alpha, bias) =
        (up(ctx, "x", &host.x), up(ctx, "phi", &host.phi), up(ctx, "alpha", &host.alpha), up(ctx, "bias", &host.bias));
    let g = host.gamma.as_ref().map(|g| up(ctx, "gamma", g));
    let inputs = PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: g.as_ref() };
    ops::pre_forward(ctx, &inputs, &PreParams::default(), None).expect_err("mhc_pre forward refuses these inputs")
}

/// Kernels held to 16 KB of workgroup memory (WebGPU's minimum: `project` stages phi in
/// smaller chunks), and below what any layout of mhc_pre forward needs: an error naming the
/// kernel instead of a run past the limit.
#[test]
fn forward_in_little_workgroup_memory() {
    run_pre_forward(ctx_small_workgroup_memory(), 300, 4, 256, true, None);
    run_pre_forward(ctx_small_workgroup_memory(), 33, 8, 127, false, Some(SinkhornParams::default()));
    run_post_forward(ctx_small_workgroup_memory(), 7, 4, 256);
    run_post_forward(ctx_small_workgroup_memory(), 5, 8, 3);

    let tiny =
        Context::with_options(ContextOptions { max_workgroup_storage: Some(256), ..Default::default() }).unwrap();
    let err = pre_forward_error(&tiny, 3, 4, 127, false);
    assert!(matches!(&err, Error::TooLarge { what, .. } if what.contains("pre_forward::main")), "{err}");
    assert!(err.to_string().contains("the device has 256"), "{err}");
}

/// A context whose mhc_pre forward takes `tile` for its projection.
fn ctx_split(tile: SplitTile) -> Context {
    Context::with_options(ContextOptions { pre_forward_split: Some(PreSplit::Tile(tile)), ..Default::default() })
        .unwrap()
}

/// Layouts of the f32 projection over splits of K: several chunks of phi a split (the
/// double-buffered loop), a last chunk past K, splits with no columns (zero partials), several
/// token blocks, token chunks and 2D grids.
#[test]
fn pre_forward_split_layouts() {
    let tiles = [
        SplitTile { splits: 3, chunk_words: 2, tokens_per_invocation: 2, invocations: 64, split_major: true },
        SplitTile { splits: 5, chunk_words: 4, tokens_per_invocation: 1, invocations: 32, split_major: false },
        SplitTile { splits: 2, chunk_words: 3, tokens_per_invocation: 3, invocations: 16, split_major: true },
        SplitTile { splits: 4, chunk_words: 16, tokens_per_invocation: 4, invocations: 32, split_major: false },
    ];
    for tile in tiles {
        let ctx = ctx_split(tile);
        run_pre_forward(&ctx, 300, 4, 256, true, None);
        run_pre_forward(&ctx, 1001, 2, 40, false, Some(SinkhornParams::default()));
        // gamma is applied as `project` stages phi, except with chunks of 3 words, which 16
        // invocations do not cover in whole rows: then `fold_gamma` runs first.
        run_pre_forward(&ctx, 1100, 3, 16, true, None);
        run_pre_forward(&ctx, 77, 1, 24, true, None);
        let small = Context::with_options(ContextOptions {
            pre_forward_split: Some(PreSplit::Tile(tile)),
            max_binding_size: Some(64 << 10),
            max_workgroups_per_dimension: Some(7),
            ..Default::default()
        })
        .unwrap();
        run_pre_forward(&small, 700, 4, 64, true, None);
    }
    let too_big =
        SplitTile { splits: 1, chunk_words: 4096, tokens_per_invocation: 1, invocations: 64, split_major: true };
    let ctx = ctx_split(too_big);
    let err = pre_forward_error(&ctx, 8, 4, 64, true);
    assert!(matches!(&err, Error::Param { name, .. } if name == "pre_forward_split"), "{err}");
}

/// Two tokens an invocation at n >= 5 (M > 24, up to 162 sums an invocation): the default
/// layout past the decoding layout's 64 tokens, and forced layouts of 128 invocations with a
/// short last block of tokens, a short last chunk of K at n = 5 and 6, and chunks that fit
/// 32 KB of workgroup memory.
#[test]
fn pre_forward_split_several_tokens_at_many_streams() {
    run_pre_forward(ctx(), 300, 6, 40, true, None);
    for (n, chunk_words) in [(5, 8), (6, 8), (8, 4)] {
        let tile = SplitTile { splits: 3, chunk_words, tokens_per_invocation: 2, invocations: 128, split_major: true };
        let ctx = ctx_split(tile);
        run_pre_forward(&ctx, 700, n, 48, true, None);
    }
}

/// `main`'s walk of h_in newest chunk first, where each split starts a row of x and a slice
/// of h_in holds whole splits, on a few tokens (a short last tile): the layouts of two bench
/// shapes (4096 x 4 x 2560: splits of 5 chunks of 16 words, two splits a slice; 16384 x 4 x
/// 4096: one split a slice) and three splits of 12 chunks of 4 words a slice.
#[test]
fn pre_forward_newest_chunks_first() {
    let layouts = [
        (
            Tile { tb: 8, tpl: 2, slices: 2, newest_first: true },
            SplitTile { splits: 16, chunk_words: 16, tokens_per_invocation: 2, invocations: 128, split_major: true },
            2560,
        ),
        (
            Tile { tb: 32, tpl: 2, slices: 2, newest_first: true },
            SplitTile { splits: 8, chunk_words: 16, tokens_per_invocation: 4, invocations: 128, split_major: true },
            4096,
        ),
        (
            Tile { tb: 4, tpl: 2, slices: 1, newest_first: true },
            SplitTile { splits: 12, chunk_words: 4, tokens_per_invocation: 2, invocations: 64, split_major: true },
            1152,
        ),
    ];
    for (tile, split, d) in layouts {
        let ctx = Context::with_options(ContextOptions {
            pre_forward_tile: Some(tile),
            pre_forward_split: Some(PreSplit::Tile(split)),
            ..Default::default()
        })
        .unwrap();
        run_pre_forward(&ctx, 37, 4, d, true, None);
    }
}

/// Decoding shapes take the default layout for few tokens: `project` over up to 256 splits of
/// K, and each tile's h_in split over several workgroups (D >= 512), also over token chunks
/// and 2D grids; past 64 tiles, 2 workgroups a tile.
#[test]
fn pre_forward_decoding() {
    run_pre_forward(ctx(), 1030, 4, 512, true, None);
    run_pre_forward(ctx(), 1, 4, 1024, true, None);
    run_pre_forward(ctx(), 5, 4, 2048, true, Some(SinkhornParams::default()));
    run_pre_forward(ctx(), 64, 4, 1024, false, None);
    run_pre_forward(ctx(), 17, 2, 520, true, None);
    // x in 2 token chunks (phi, 196 KB, must fit one binding), 2 slices a tile.
    let small = Context::with_options(ContextOptions {
        max_binding_size: Some(256 << 10),
        max_workgroups_per_dimension: Some(7),
        ..Default::default()
    })
    .unwrap();
    run_pre_forward(&small, 100, 4, 512, true, Some(SinkhornParams::default()));
}

/// The kernels compiled with wgpu's runtime checks (`MHC_SHADER_CHECKS=1`, off by default).
#[test]
fn pre_forward_with_shader_checks() {
    let ctx = Context::with_options(ContextOptions { shader_checks: true, ..Default::default() }).unwrap();
    run_pre_forward(&ctx, 7, 4, 64, true, Some(SinkhornParams::default()));
    run_pre_forward(&ctx, 4, 3, 5, false, None);
}

/// Every token layout of the vector path gives the same answers, over many workgroups, with
/// the projection over splits of K (the default) and in `main` (the tensor-core path's
/// fallback, which an adapter without cooperative matrices reaches only this way).
#[test]
fn pre_forward_tiles() {
    for split in [None, Some(PreSplit::Off)] {
        for (tb, tpl, slices, newest_first) in [(8, 1, 1, true), (16, 2, 3, false), (32, 2, 1, false), (4, 3, 7, true)]
        {
            let opts = ContextOptions {
                pre_forward_tile: Some(Tile { tb, tpl, slices, newest_first }),
                pre_forward_split: split,
                ..Default::default()
            };
            let ctx = Context::with_options(opts).unwrap();
            run_pre_forward(&ctx, 301, 4, 64, true, None);
            run_pre_forward(&ctx, 97, 2, 40, false, Some(SinkhornParams::default()));
            run_pre_forward(&ctx, 150, 6, 64, true, None);
        }
    }
    // Layouts `main` cannot take are refused when the context is made, naming the option.
    for (tb, tpl, slices) in [(0, 2, 1), (12, 2, 1), (512, 1, 1), (8, 0, 1), (8, 9, 1), (8, 2, 0), (8, 2, 1025)] {
        let tile = Some(Tile { tb, tpl, slices, newest_first: true });
        assert_option_refused(ContextOptions { pre_forward_tile: tile, ..Default::default() }, "pre_forward_tile");
    }
    let in_main = ContextOptions {
        pre_forward_split: Some(PreSplit::Off),
        max_binding_size: Some(64 << 10),
        max_workgroups_per_dimension: Some(7),
        ..Default::default()
    };
    run_pre_forward(&Context::with_options(in_main).unwrap(), 700, 4, 64, true, None);
}

/// Tokens of every magnitude in one tile, from 2^-120 to 2^120 times the usual, with the
/// default norm_eps and with none: a token whose sum of squares leaves f32's range (above:
/// |x| over about 2^64 / sqrt(K); below: mean(x^2) + norm_eps under 2^-100) has its sums
/// taken again from scaled x, instead of gates from inv_rms = 0 or infinite. On the split
/// projection (with gamma in `project` and folded), the scalar path, a decoded token and the
/// projection in `main`.
#[test]
fn pre_forward_extreme_magnitudes() {
    let exps = [0, 100, -60, 70, 120, -120, 20, 64, -100];
    let in_main =
        Context::with_options(ContextOptions { pre_forward_split: Some(PreSplit::Off), ..Default::default() }).unwrap();
    for p in [PRE_PARAMS, PreParams { norm_eps: 0.0, ..PRE_PARAMS }] {
        run_pre_forward_scaled(ctx(), 45, 4, 64, true, &exps, &p);
        run_pre_forward_scaled(ctx(), 300, 2, 256, false, &exps, &p);
        run_pre_forward_scaled(ctx(), 8200, 1, 8, true, &exps, &p);
        run_pre_forward_scaled(ctx(), 13, 3, 7, true, &exps, &p);
        run_pre_forward_scaled(ctx(), 1, 8, 40, true, &[90], &p);
        run_pre_forward_scaled(ctx(), 1, 8, 40, true, &[-90], &p);
        run_pre_forward_scaled(&in_main, 37, 4, 64, true, &exps, &p);
    }
}

#[test]
fn pre_forward_with_fused_sinkhorn() {
    for n in [1, 4, 8] {
        run_pre_forward(ctx(), 6, n, 32, true, Some(SinkhornParams::default()));
    }
    run_pre_forward(ctx(), 1, 4, 64, true, Some(SinkhornParams::default()));
    run_pre_forward(ctx(), 3, 2, 3, false, Some(SinkhornParams { iters: 3, eps: 1e-3 }));
}

/// 530,000 tokens at 8 a workgroup need 66,250 workgroups: more than one grid dimension holds.
#[test]
fn pre_forward_beyond_one_dispatch_dimension() {
    run_pre_forward(ctx(), 530_000, 1, 1, true, None);
}

/// Tokens split into chunks of at most 64 KiB bindings, with 2D grids of at most 7 columns.
#[test]
fn pre_forward_token_chunks() {
    run_pre_forward(ctx_small_limits(), 700, 4, 64, true, None);
    run_pre_forward(ctx_small_limits(), 1001, 2, 9, false, Some(SinkhornParams::default()));
}

fn run_post_forward(ctx: &Context, t: usize, n: usize, d: usize) {
    let seed = seed_from_env();
    let dims = Dims::new(t, n, d).unwrap();
    let host = PostInputs::random(&mut TensorRng::new(seed), &dims);
    let (x, res, plm, comb) = (
        up(ctx, "x", &host.x),
        up(ctx, "residual", &host.residual),
        up(ctx, "plm", &host.post_layer_mix),
        up(ctx, "comb", &host.comb_res_mix),
    );
    let inputs = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
    let out = GpuTensor::zeros(ctx, "out", &[t, n, d], DType::BF16).unwrap();
    poison(ctx, &[&out]);
    ops::post_forward_into(ctx, &inputs, &out).unwrap();
    let r = post_forward_f64(
        &dims,
        &host.x.to_f64(),
        &host.residual.to_f64(),
        &host.post_layer_mix.to_f64(),
        &host.comb_res_mix.to_f64(),
    );
    check(ctx, &format!("post_forward T={t} n={n} D={d} out"), &out, &r, None, seed);
}

#[test]
fn post_forward_matches_golden_over_shapes() {
    for n in [1, 2, 4, 8] {
        for d in [1, 3, 127, 256] {
            run_post_forward(ctx(), 5, n, d);
        }
    }
    run_post_forward(ctx(), 1, 4, 64);
}

/// Both word widths of the vector path, whichever the shape would choose; other widths are
/// refused when the context is made.
#[test]
fn post_forward_word_widths() {
    for columns in [4, 8] {
        for (t, n, d) in [(7, 1, 8), (7, 4, 256), (3, 3, 2056)] {
            run_post_forward(ctx_post_columns(columns), t, n, d);
        }
    }
    assert_option_refused(
        ContextOptions { post_forward_columns: Some(16), ..Default::default() },
        "post_forward_columns",
    );
}

/// One column an invocation (odd D), 128 a workgroup: 1,000,000 tokens of 9 columns need
/// 70,313 workgroups.
#[test]
fn post_forward_beyond_one_dispatch_dimension() {
    run_post_forward(ctx(), 1_000_000, 2, 9);
}

#[test]
fn post_forward_token_chunks_and_wide_grids() {
    run_post_forward(ctx_small_limits(), 900, 4, 64);
    run_post_forward(ctx_small_limits(), 1500, 3, 7);
}

/// bf16 stores round to nearest, ties to even, overflow to infinity and keep NaN a NaN: with
/// x = 1, residual = 0 and comb_res_mix = 0, mhc_post forward writes post_layer_mix itself,
/// rounded, on the vector path (D = 16: `pack2` in words of 4 columns, `pack4` in words of 8)
/// and the scalar one (D = 3: `half_bits`).
#[test]
fn bf16_stores_round_to_nearest_even() {
    let tie = 2f32.powi(-8);
    let specials = [
        1.0 + tie,       // a tie: down to the even 1.0
        1.0 + 3.0 * tie, // a tie: up to the even 1 + 2^-6
        -(1.0 + tie),
        1.0 + tie + 2f32.powi(-20), // just above a tie: up
        1.0 + tie - 2f32.powi(-20), // just below: down
        f32::MAX,                   // past bf16's largest finite value: infinity
        -f32::MAX,
        f32::from_bits(0x7f7f_7fff), // just under that: bf16's largest
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7f80_0001), // NaNs, one with its payload in the low half only
        f32::from_bits(0xffff_ffff),
        f32::NAN,
        -0.0,
        3.0e-38,
        1.234_567_9e10,
    ];
    let t = specials.len();
    for (ctx, d) in [(ctx_post_columns(4), 16), (ctx_post_columns(8), 16), (ctx(), 3)] {
        let x = HostTensor::bf16_from_f32(vec![t, d], &vec![1.0; t * d]).unwrap();
        let res = HostTensor::bf16_from_f32(vec![t, 1, d], &vec![0.0; t * d]).unwrap();
        let plm = HostTensor::from_f32(vec![t, 1], specials.to_vec()).unwrap();
        let comb = HostTensor::from_f32(vec![t, 1, 1], vec![0.0; t]).unwrap();
        let (x, res, plm, comb) =
            (up(ctx, "x", &x), up(ctx, "residual", &res), up(ctx, "plm", &plm), up(ctx, "comb", &comb));
        let inputs = PostForwardInputs { x: &x, residual: &res, post_layer_mix: &plm, comb_res_mix: &comb };
        let out = GpuTensor::zeros(ctx, "out", &[t, 1, d], DType::BF16).unwrap();
        poison(ctx, &[&out]);
        ops::post_forward_into(ctx, &inputs, &out).unwrap();
        let got = out.read(ctx).unwrap();
        let got = got.as_bf16().unwrap();
        for (i, &p) in specials.iter().enumerate() {
            let want = half::bf16::from_f32(p * 1.0 + 0.0 * 0.0);
            for (k, g) in got[i * d..(i + 1) * d].iter().enumerate() {
                let ok = if want.is_nan() { g.is_nan() } else { g.to_bits() == want.to_bits() };
                assert!(
                    ok,
                    "D={d}: {p:e} ({:#010x}) column {k} stored {:#06x}, expected {:#06x}",
                    p.to_bits(),
                    g.to_bits(),
                    want.to_bits()
                );
            }
        }
    }
}

#[test]
fn forward_runs_are_bitwise_identical() {
    let ctx = ctx();
    let dims = Dims::new(37, 4, 40).unwrap();
    let host = PreInputs::random(&mut TensorRng::new(seed_from_env()), &dims, true);
    let (x, phi, alpha, bias, g) = (
        up(ctx, "x", &host.x),
        up(ctx, "phi", &host.phi),
        up(ctx, "alpha", &host.alpha),
        up(ctx, "bias", &host.bias),
        up(ctx, "gamma", host.gamma.as_ref().unwrap()),
    );
    let inputs = PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: Some(&g) };
    let a = ops::pre_forward(ctx, &inputs, &PreParams::default(), Some(&SinkhornParams::default())).unwrap();
    let b = ops::pre_forward(ctx, &inputs, &PreParams::default(), Some(&SinkhornParams::default())).unwrap();
    for (name, p, q) in [
        ("h_in", &a.h_in, &b.h_in),
        ("h_mix", &a.h_mix, &b.h_mix),
        ("h_res", &a.h_res, &b.h_res),
        ("inv_rms", &a.inv_rms, &b.inv_rms),
    ] {
        same_bits(ctx, name, p, q);
    }
    let post = PostInputs::random(&mut TensorRng::new(seed_from_env()), &dims);
    let (px, pr, pl, pc) = (
        up(ctx, "x", &post.x),
        up(ctx, "residual", &post.residual),
        up(ctx, "plm", &post.post_layer_mix),
        up(ctx, "comb", &post.comb_res_mix),
    );
    let pin = PostForwardInputs { x: &px, residual: &pr, post_layer_mix: &pl, comb_res_mix: &pc };
    same_bits(ctx, "post out", &ops::post_forward(ctx, &pin).unwrap(), &ops::post_forward(ctx, &pin).unwrap());
}

#[test]
fn bad_inputs_are_errors_naming_the_tensor() {
    let ctx = ctx();
    let dims = Dims::new(4, 4, 16).unwrap();
    let host = PreInputs::random(&mut TensorRng::new(1), &dims, false);
    let (x, phi, alpha, bias) =
        (up(ctx, "x", &host.x), up(ctx, "phi", &host.phi), up(ctx, "alpha", &host.alpha), up(ctx, "bias", &host.bias));
    let p = PreParams::default();
    let msg = |e: Error| e.to_string();

    // phi of the wrong width.
    let bad_phi = GpuTensor::zeros(ctx, "phi", &[24, 63], DType::F32).unwrap();
    let e = ops::pre_forward(
        ctx,
        &PreForwardInputs { x: &x, phi: &bad_phi, alpha: &alpha, bias: &bias, gamma: None },
        &p,
        None,
    )
    .unwrap_err();
    assert!(msg(e.clone()).starts_with("phi:") && msg(e).contains("[24, 64]"));

    // x in f32.
    let x32 = GpuTensor::zeros(ctx, "x", &[4, 4, 16], DType::F32).unwrap();
    let e = ops::pre_forward(
        ctx,
        &PreForwardInputs { x: &x32, phi: &phi, alpha: &alpha, bias: &bias, gamma: None },
        &p,
        None,
    )
    .unwrap_err();
    assert!(msg(e).starts_with("x: expected dtype bf16"));

    // An output of the wrong token count.
    let mut out = ops::PreForwardOutputs::zeros(ctx, &dims, false).unwrap();
    out.h_mix = GpuTensor::zeros(ctx, "h_mix", &[5, 24], DType::F32).unwrap();
    let e = ops::pre_forward_into(
        ctx,
        &PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: None },
        &out,
        &p,
        None,
    )
    .unwrap_err();
    assert!(msg(e).starts_with("h_mix:"));

    // A caller's buffer too small for the shape it claims.
    let small = ctx.device().create_buffer(&mhc::runtime::wgpu::BufferDescriptor {
        label: None,
        size: 64,
        usage: mhc::runtime::wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = GpuTensor::from_buffer("residual", small, &[4, 4, 16], DType::BF16).unwrap_err();
    assert!(msg(e).starts_with("residual:"));

    // Post forward with comb_res_mix of the wrong shape.
    let post = PostInputs::random(&mut TensorRng::new(2), &dims);
    let (px, pr, pl) =
        (up(ctx, "x", &post.x), up(ctx, "residual", &post.residual), up(ctx, "plm", &post.post_layer_mix));
    let bad_comb = GpuTensor::zeros(ctx, "comb", &[4, 4, 3], DType::F32).unwrap();
    let e = ops::post_forward(
        ctx,
        &PostForwardInputs { x: &px, residual: &pr, post_layer_mix: &pl, comb_res_mix: &bad_comb },
    )
    .unwrap_err();
    assert!(msg(e).starts_with("comb_res_mix:"));

    // A fused Sinkhorn without somewhere to put the logits.
    let out = ops::PreForwardOutputs::zeros(ctx, &dims, false).unwrap();
    let e = ops::pre_forward_into(
        ctx,
        &PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: None },
        &out,
        &p,
        Some(&SinkhornParams::default()),
    )
    .unwrap_err();
    assert!(msg(e).starts_with("h_res_logits"));
}

/// Tensors wrapped in a caller's larger buffers: phi (bound whole) and h_mix, each followed by
/// 256 bytes the call must neither read as part of the tensor nor write. Poisoning, the
/// kernels and the readback touch only the tensors' bytes.
#[test]
fn tensors_in_larger_caller_buffers() {
    use mhc::runtime::wgpu::{BufferDescriptor, BufferUsages};
    let ctx = ctx();
    let seed = seed_from_env();
    let (dims, p) = (Dims::new(9, 4, 24).unwrap(), PreParams::default());
    let host = PreInputs::random(&mut TensorRng::new(seed), &dims, true);
    let tail = [0x7Fu8; 256]; // NaNs in f32, were they read as phi
    let wrapped = |name: &str, shape: &[usize], bytes: &[u8]| {
        let buffer = ctx.device().create_buffer(&BufferDescriptor {
            label: Some(name),
            size: (bytes.len() + tail.len()) as u64,
            usage: BufferUsages::STORAGE | BufferUsages::COPY_SRC | BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        ctx.queue().write_buffer(&buffer, 0, &[bytes, &tail[..]].concat());
        GpuTensor::from_buffer(name, buffer, shape, DType::F32).unwrap()
    };
    let phi = wrapped("phi", &[24, 96], host.phi.as_le_bytes());
    let (x, alpha, bias) = (up(ctx, "x", &host.x), up(ctx, "alpha", &host.alpha), up(ctx, "bias", &host.bias));
    let gamma = up(ctx, "gamma", host.gamma.as_ref().unwrap());
    let mut out = ops::PreForwardOutputs::zeros(ctx, &dims, false).unwrap();
    out.h_mix = wrapped("h_mix", &[9, 24], &[0u8; 9 * 24 * 4]);
    poison(ctx, &[&out.h_in, &out.h_post, &out.h_res, &out.inv_rms, &out.h_mix, &out.h_pre]);
    let inputs = PreForwardInputs { x: &x, phi: &phi, alpha: &alpha, bias: &bias, gamma: Some(&gamma) };
    ops::pre_forward_into(ctx, &inputs, &out, &p, None).unwrap();
    let r = pre_forward_reference(&dims, &host, &p);
    check(ctx, "h_mix in a larger buffer", &out.h_mix, &r.h_mix, None, seed);
    check(ctx, "h_in with phi in a larger buffer", &out.h_in, &r.h_in, None, seed);
    let whole =
        GpuTensor::from_buffer("h_mix's buffer", out.h_mix.buffer().clone(), &[9 * 24 + 64], DType::F32).unwrap();
    let host_whole = whole.read(ctx).unwrap();
    let bytes = host_whole.as_le_bytes();
    assert_eq!(&bytes[9 * 24 * 4..], &tail[..], "h_mix's call wrote past its tensor");
}

/// Scratch buffers (the gamma-folded phi) are kept between calls and reused by smaller ones,
/// replaced by larger ones, and made again after `release_scratch`.
#[test]
fn pre_forward_reuses_scratch_across_shapes() {
    let ctx = Context::new().unwrap();
    run_pre_forward(&ctx, 40, 4, 256, true, None);
    run_pre_forward(&ctx, 9, 2, 24, true, None);
    run_pre_forward(&ctx, 17, 8, 300, true, None);
    ctx.release_scratch();
    run_pre_forward(&ctx, 40, 4, 256, true, Some(SinkhornParams::default()));
}

/// Contexts made and dropped on several threads while others run operators: on an H200
/// (NVIDIA 580) a context's drop that destroyed its own device, beside other threads'
/// submits and pipeline builds, deadlocked the driver, and threads enumerating the shared
/// instance's adapters at once crashed it (docs/perf-history.md, sixteenth and seventeenth
/// sessions). The threads start together, so their first contexts are asked for at once.
/// Every result is still checked against the golden math.
#[test]
fn contexts_come_and_go_on_threads_beside_running_work() {
    let start = std::sync::Barrier::new(4);
    std::thread::scope(|s| {
        for i in 0..4u32 {
            let start = &start;
            s.spawn(move || {
                start.wait();
                for j in 0..3u32 {
                    let opts =
                        ContextOptions { max_workgroup_storage: Some((16 + 4 * i + j) << 10), ..Default::default() };
                    let ctx = Context::with_options(opts).expect("a wgpu adapter");
                    run_pre_forward(&ctx, 33 + j as usize, 4, 64, i % 2 == 0, None);
                }
            });
        }
        for t in [40, 7, 300] {
            run_pre_forward(ctx(), t, 2, 24, true, Some(SinkhornParams::default()));
        }
    });
}
