// ---- pre_forward.wgsl: mhc_pre forward (SPEC.md section 1), fused ----
// Needs: N, D, K = N * D, M = N * N + 2N, NN = N * N, WG invocations, NV (and reduce.wgsl's
// RG, CL, RPL); flags VEC4 (D % 8 == 0), SINKHORN (h_res is the Sinkhorn projection, the raw logits go to
// h_res_logits), SUBGROUP, PARTS (VEC4 only: the sums come from partials over CS splits of K,
// PW floats a token), with COOP (pre_forward_coop.wgsl's partials, scaled and range-checked) or
// SPLIT (this file's `project`: f32 partials, M + 1 floats a split; it also needs SC words a
// chunk, SPT tokens an invocation, PWG invocations a workgroup and PHL = ceil(M * SC * 2 /
// PWG), the vec4s of phi an invocation stages a chunk). The VEC4 path also needs TB (tokens a row of
// invocations), TPL (tokens an invocation) and DS (workgroups a tile's h_in is split over, each
// a slice of D; the first writes the small outputs; 1 unless SPLIT) and flag NEWEST (with
// SPLIT, `main` may walk h_in newest chunk first); the scalar path TB tokens a workgroup, NV =
// TB * (M + 1) and DS = 1.
//
// gamma is folded into phi beforehand (`fold_gamma`), so the projection reads one matrix; with
// flag GAMMA (SPLIT only, with PWG a multiple of SC * 2) `project` multiplies phi's chunks by
// gamma as it stores them to shared memory instead (and `main`, where it sums a token again,
// multiplies by gamma too), and no fold runs.
// Pass 1 reads x once: the RMS and the M dot products with phi. The gates follow, one
// invocation per (token, output). Pass 2 reads x again for h_in = sum_i h_pre[i] * x[i, :].

struct Params {
    // Tokens of this dispatch (fold_gamma: elements of phi).
    t: u32,
    norm_eps: f32,
    hc_eps: f32,
    post_mult: f32,
    sinkhorn_iters: u32,
    sinkhorn_eps: f32,
    // norm_eps * 2^192 (infinite past f32), for a token summed again from x * 2^96.
    norm_eps_up: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
#if VEC4
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> phi: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> h_in: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> phi: array<f32>;
@group(0) @binding(6) var<storage, read_write> h_in: array<atomic<u32>>;
#endif
@group(0) @binding(3) var<storage, read> alpha: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(7) var<storage, read_write> h_post: array<f32>;
@group(0) @binding(8) var<storage, read_write> h_res: array<f32>;
@group(0) @binding(9) var<storage, read_write> inv_rms: array<f32>;
@group(0) @binding(10) var<storage, read_write> h_mix: array<f32>;
@group(0) @binding(11) var<storage, read_write> h_pre: array<f32>;
#if SINKHORN
@group(0) @binding(12) var<storage, read_write> h_res_logits: array<f32>;
#endif
// fold_gamma: phi_g = phi * gamma (broadcast over rows), the matrix `main` reads as `phi`.
@group(0) @binding(13) var<storage, read> phi_src: array<f32>;
@group(0) @binding(14) var<storage, read> gamma: array<f32>;
@group(0) @binding(15) var<storage, read_write> phi_g: array<f32>;
#if PARTS
@group(0) @binding(16) var<storage, read> part: array<f32>;
#endif
#if COOP
@group(0) @binding(17) var<storage, read> unscale: array<f32>;
#endif
#if SPLIT
@group(0) @binding(18) var<storage, read_write> part_out: array<f32>;
#endif

@compute @workgroup_size(WG)
fn fold_gamma(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wid, nwg) * WG + lid;
    if (e < params.t) {
        phi_g[e] = phi_src[e] * gamma[e % K];
    }
}

#if VEC4
// Tokens a workgroup, and K splits: invocation lid takes tokens (lid % TB) + u * TB for
// u < TPL, over the split lid / TB of each row. Within a subgroup many invocations share a
// split, so their phi loads are the same address (one broadcast), while each keeps TPL * M
// sums in registers.
const TW: u32 = TB * TPL;
const KS: u32 = WG / TB;
const W8: u32 = K / 8u;
const WPS: u32 = (W8 + KS - 1u) / KS;
// Words of a row of h_in a slice takes.
const WS: u32 = (D / 8u + DS - 1u) / DS;
var<workgroup> sums: array<f32, TW * (M + 1u)>;
#else
const TW: u32 = TB;
#endif

var<workgroup> gate_pre: array<f32, TW * N>;
#if SINKHORN
var<workgroup> res_logits: array<f32, TW * NN>;
#endif

#if !VEC4
fn x_at(e: u32) -> f32 {
    return bf16_at(x_pair(e), e);
}

fn store_h_in(e: u32, v: f32) {
    atomicAnd(&h_in[e >> 1u], half_keep(e));
    atomicOr(&h_in[e >> 1u], half_bits(e, v));
}
#endif

// The RMS and the M dot products of the workgroup's tokens, summed over the workgroup:
// sum(b, m) for token b of the tile and output m (m == M: the sum of squares).
#if VEC4
// a + xa . pa + xb . pb as one chain of fused multiply-adds: no separate products or adds.
fn fma8(a: f32, xa: vec4<f32>, xb: vec4<f32>, pa: vec4<f32>, pb: vec4<f32>) -> f32 {
    var s = fma(xa.x, pa.x, a);
    s = fma(xa.y, pa.y, s);
    s = fma(xa.z, pa.z, s);
    s = fma(xa.w, pa.w, s);
    s = fma(xb.x, pb.x, s);
    s = fma(xb.y, pb.y, s);
    s = fma(xb.z, pb.z, s);
    return fma(xb.w, pb.w, s);
}

// A word of x (8 bf16) as its 8 columns in order, two vec4s: lo4 and hi4 hold the even and
// the odd columns.
fn columns(q: vec4<u32>) -> array<vec4<f32>, 2> {
    let lo = lo4(q);
    let hi = hi4(q);
    return array<vec4<f32>, 2>(vec4<f32>(lo.x, hi.x, lo.y, hi.y), vec4<f32>(lo.z, hi.z, lo.w, hi.w));
}

// Word w of token t's x; zeros from w_end on and past the last token.
fn x_word(t: u32, w: u32, w_end: u32) -> vec4<u32> {
    if (w < w_end && t < params.t) {
        return x[t * W8 + w];
    }
    return vec4<u32>(0u);
}

// Word w of the invocation's TPL tokens (tok, tok + TB, ...).
fn load_x(q: ptr<function, array<vec4<u32>, TPL>>, tok: u32, w: u32, w_end: u32) {
#unroll u TPL
    (*q)[{u}] = x_word(tok + {u} * TB, w, w_end);
#endunroll
}

fn projections(lane: Lane, tok0: u32) {
    let j = lane.lid % TB;
    let split = lane.lid / TB;
    var acc: array<f32, TPL * (M + 1u)>;
    let w_end = min(W8, (split + 1u) * WPS);
    // x of the next step is loaded before this one's FMAs, so a load is always in flight.
    var next: array<vec4<u32>, TPL>;
    load_x(&next, tok0 + j, split * WPS, w_end);
    for (var w = split * WPS; w < w_end; w++) {
        let cur = next;
        load_x(&next, tok0 + j, w + 1u, w_end);
        var xa: array<vec4<f32>, TPL>;
        var xb: array<vec4<f32>, TPL>;
#unroll u TPL
        {
            let v = columns(cur[{u}]);
            xa[{u}] = v[0];
            xb[{u}] = v[1];
            acc[{u} * (M + 1u) + M] = fma8(acc[{u} * (M + 1u) + M], xa[{u}], xb[{u}], xa[{u}], xb[{u}]);
        }
#endunroll
#unroll m M
        {
            let pa = phi[{m} * (K / 4u) + 2u * w];
            let pb = phi[{m} * (K / 4u) + 2u * w + 1u];
#unroll u TPL
            acc[{u} * (M + 1u) + {m}] = fma8(acc[{u} * (M + 1u) + {m}], xa[{u}], xb[{u}], pa, pb);
#endunroll
        }
#endunroll
    }
    // The splits add their sums in a fixed order: reruns give the same bits.
    for (var r = 0u; r < KS; r++) {
        if (split == r) {
#unroll u TPL
            {
                let base = ({u} * TB + j) * (M + 1u);
#unroll m M
                sums[base + {m}] = select(sums[base + {m}] + acc[{u} * (M + 1u) + {m}], acc[{u} * (M + 1u) + {m}], r == 0u);
#endunroll
                sums[base + M] = select(sums[base + M] + acc[{u} * (M + 1u) + M], acc[{u} * (M + 1u) + M], r == 0u);
            }
#endunroll
        }
        workgroupBarrier();
    }
}

fn sum_at(b: u32, m: u32) -> f32 {
    return sums[b * (M + 1u) + m];
}

fn set_sum(b: u32, m: u32, v: f32) {
    sums[b * (M + 1u) + m] = v;
}

// The u32 of x that holds element e.
fn x_pair(e: u32) -> u32 {
    return x[e / 8u][(e / 2u) % 4u];
}

fn phi_at(e: u32) -> f32 {
    return phi[e / 4u][e % 4u];
}

#if COOP
var<workgroup> inexact: atomic<u32>;
var<workgroup> redo: u32;

// The tile's sums from the cooperative-matrix partials, added in a fixed order. A token
// whose max |x| lies outside [2^-4, 65504] (where the f16 conversion may lose or overflow) or
// whose sums are not finite sends the whole tile through the exact f32 projection.
fn coop_sums(lane: Lane, tok0: u32) {
    for (var e = lane.lid; e < TW * (M + 1u); e += WG) {
        let b = e / (M + 1u);
        let m = e % (M + 1u);
        let tok = tok0 + b;
        if (tok < params.t) {
            let base = tok * PW;
            var s = 0.0;
            var bad = false;
            if (m < M) {
                for (var k = 0u; k < CS; k++) {
                    s += part[base + k * 32u + m];
                }
                s *= unscale[m];
            } else {
                var top = 0.0;
                for (var k = 0u; k < CS; k++) {
                    s += part[base + CS * 32u + k];
                    top = max(top, part[base + CS * 33u + k]);
                }
                bad = !(top >= 0.0625 && top <= 65504.0);
            }
            if (bad || !finite(s)) {
                atomicOr(&inexact, 1u);
            }
            sums[b * (M + 1u) + m] = s;
        }
    }
    workgroupBarrier();
    if (lane.lid == 0u) {
        redo = atomicLoad(&inexact);
    }
    if (workgroupUniformLoad(&redo) != 0u) {
        projections(lane, tok0);
    }
}
#endif
#if SPLIT
// The tile's sums from `project`'s f32 partials, added in split order. Split-major:
// consecutive invocations take consecutive tokens of one output, whose partials are
// adjacent, over the tile's live tokens only (a short last tile still takes one pass).
// Token-major: a token's partials are its row, each split's M + 1 a constant offset apart.
fn split_sums(lane: Lane, tok0: u32) {
#if SPLIT_MAJOR
    let live = min(TW, params.t - tok0);
    for (var e = lane.lid; e < live * (M + 1u); e += WG) {
        let b = e % live;
        let m = e / live;
        var v: array<f32, CS>;
#unroll k CS
        v[{k}] = part[({k} * (M + 1u) + m) * params.t + tok0 + b];
#endunroll
#else
    for (var e = lane.lid; e < TW * (M + 1u); e += WG) {
        let b = e / (M + 1u);
        let m = e % (M + 1u);
        if (tok0 + b >= params.t) {
            continue;
        }
        var v: array<f32, CS>;
#unroll k CS
        v[{k}] = part[(tok0 + b) * PW + {k} * (M + 1u) + m];
#endunroll
#endif
        var s = 0.0;
#unroll k CS
        s += v[{k}];
#endunroll
        sums[b * (M + 1u) + m] = s;
    }
    workgroupBarrier();
}

// project: the M dot products and the sum of squares of PT = PWG * SPT tokens over one of CS
// splits of K, as f32 partials (`main` adds them). An invocation takes tokens lid + PWG * u,
// so a subgroup's phi reads are one shared-memory address (a broadcast) while each keeps SPT
// * (M + 1) sums. phi comes through shared memory SC words (8 columns each) at a time, double
// buffered: the next chunk's loads are in flight while this one is used, one barrier a chunk.
const PT: u32 = PWG * SPT;
const PCH: u32 = (W8 + SC - 1u) / SC;
const CPS: u32 = (PCH + CS - 1u) / CS;
const PHV: u32 = M * SC * 2u;
var<workgroup> phi_s: array<vec4<f32>, 2u * PHV>;

#if GAMMA
// gamma at the 4 columns of the vec4s this invocation stages from the chunk in flight: the
// same columns for all of them, since PWG is a multiple of SC * 2 (the spec's condition for
// GAMMA). Applied as the chunk is stored, after the chunk before it has been used, so its
// loads are not waited on any earlier than phi's.
var<private> gamma_q: vec4<f32>;
#endif

// This invocation's share of chunk ch of phi (vec4 q of row m: word ch * SC + q / 2, half
// q % 2); zeros past K.
fn phi_chunk(lid: u32, ch: u32, regs: ptr<function, array<vec4<f32>, PHL>>) {
#if GAMMA
    {
        let q = lid % (SC * 2u);
        gamma_q = vec4<f32>(0.0);
        if (ch * SC + q / 2u < W8) {
            let k = (ch * SC * 2u + q) * 4u;
            gamma_q = vec4<f32>(gamma[k], gamma[k + 1u], gamma[k + 2u], gamma[k + 3u]);
        }
    }
#endif
#unroll i PHL
    {
        let e = lid + {i} * PWG;
        var v = vec4<f32>(0.0);
        let m = e / (SC * 2u);
        let q = e % (SC * 2u);
        if (e < PHV && ch * SC + q / 2u < W8) {
            v = phi[m * (K / 4u) + ch * SC * 2u + q];
        }
        (*regs)[{i}] = v;
    }
#endunroll
}

fn store_phi_chunk(lid: u32, buf: u32, regs: ptr<function, array<vec4<f32>, PHL>>) {
#unroll i PHL
    {
        let e = lid + {i} * PWG;
        if (e < PHV) {
#if GAMMA
            phi_s[buf * PHV + e] = (*regs)[{i}] * gamma_q;
#else
            phi_s[buf * PHV + e] = (*regs)[{i}];
#endif
        }
    }
#endunroll
}

// Word w of the invocation's SPT tokens (tok, tok + PWG, ...).
fn load_x_split(q: ptr<function, array<vec4<u32>, SPT>>, tok: u32, w: u32, w_end: u32) {
#unroll u SPT
    (*q)[{u}] = x_word(tok + {u} * PWG, w, w_end);
#endunroll
}

@compute @workgroup_size(PWG)
fn project(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let split = g % CS;
    let t0 = (g / CS) * PT;
    if (t0 >= params.t) {
        return;
    }
    let c_begin = min(PCH, split * CPS);
    let c_end = min(PCH, c_begin + CPS);
    let w_end = min(W8, c_end * SC);
    var acc: array<f32, SPT * (M + 1u)>;
    var pr: array<vec4<f32>, PHL>;
    // x's words are loaded two steps ahead (0-1.5% less time for `project` than one ahead on an
    // H100, docs/perf-history.md, twenty-eighth session). Not for a longer wait: NVIDIA's
    // driver copies the words just loaded into the next step's registers at the end of each
    // step, so a load has until then to land, either way (twenty-ninth session).
    var next: array<vec4<u32>, SPT>;
    var after_next: array<vec4<u32>, SPT>;
    if (c_begin < c_end) {
        phi_chunk(lid, c_begin, &pr);
        store_phi_chunk(lid, 0u, &pr);
        load_x_split(&next, t0 + lid, c_begin * SC, w_end);
        load_x_split(&after_next, t0 + lid, c_begin * SC + 1u, w_end);
    }
    workgroupBarrier();
    for (var c = c_begin; c < c_end; c++) {
        let buf = (c - c_begin) & 1u;
        if (c + 1u < c_end) {
            phi_chunk(lid, c + 1u, &pr);
        }
        for (var j = 0u; j < SC; j++) {
            let w = c * SC + j;
            let cur = next;
            next = after_next;
            load_x_split(&after_next, t0 + lid, w + 2u, w_end);
            var xa: array<vec4<f32>, SPT>;
            var xb: array<vec4<f32>, SPT>;
#unroll u SPT
            {
                let v = columns(cur[{u}]);
                xa[{u}] = v[0];
                xb[{u}] = v[1];
                acc[{u} * (M + 1u) + M] = fma8(acc[{u} * (M + 1u) + M], xa[{u}], xb[{u}], xa[{u}], xb[{u}]);
            }
#endunroll
#unroll m M
            {
                let pa = phi_s[buf * PHV + {m} * SC * 2u + 2u * j];
                let pb = phi_s[buf * PHV + {m} * SC * 2u + 2u * j + 1u];
#unroll u SPT
                acc[{u} * (M + 1u) + {m}] = fma8(acc[{u} * (M + 1u) + {m}], xa[{u}], xb[{u}], pa, pb);
#endunroll
            }
#endunroll
        }
        if (c + 1u < c_end) {
            store_phi_chunk(lid, buf ^ 1u, &pr);
        }
        workgroupBarrier();
    }
    // Every split writes its partials, zeros where it has no columns: `main` adds all CS.
    // Split-major ([split][M + 1][token] within the dispatch's rows), each store of a subgroup
    // is one contiguous run; token-major ([token][split][M + 1]), every lane's store hits its
    // own cache sector, which cost `project` 21-41 us at the bench shapes on an H200
    // (docs/perf-history.md, the thirteenth session's changes).
#unroll u SPT
    {
        let tok = t0 + lid + {u} * PWG;
        if (tok < params.t) {
#if SPLIT_MAJOR
            let base = split * (M + 1u) * params.t + tok;
            let stride = params.t;
#else
            let base = tok * PW + split * (M + 1u);
            let stride = 1u;
#endif
#unroll m M
            part_out[base + {m} * stride] = acc[{u} * (M + 1u) + {m}];
#endunroll
            part_out[base + M * stride] = acc[{u} * (M + 1u) + M];
        }
    }
#endunroll
}
#endif
#else
fn projections(lane: Lane, tok0: u32) {
    var acc: array<f32, NVP>;
    for (var k = lane.lid; k < K; k += WG) {
        var xs: array<f32, TB>;
#unroll b TB
        {
            var v = 0.0;
            if (tok0 + {b} < params.t) {
                v = x_at((tok0 + {b}) * K + k);
            }
            acc[{b} * (M + 1u) + M] += v * v;
            xs[{b}] = v;
        }
#endunroll
#unroll m M
        {
            let p = phi[{m} * K + k];
#unroll b TB
            acc[{b} * (M + 1u) + {m}] += xs[{b}] * p;
#endunroll
        }
#endunroll
    }
    block_reduce(lane, &acc);
}

fn sum_at(b: u32, m: u32) -> f32 {
    return red_total[b * (M + 1u) + m];
}

fn set_sum(b: u32, m: u32, v: f32) {
    red_total[b * (M + 1u) + m] = v;
}

fn phi_at(e: u32) -> f32 {
    return phi[e];
}

fn x_pair(e: u32) -> u32 {
    return x[e >> 1u];
}
#endif

// A token whose sum of squares leaves f32's range would get wrong gates: above it (|x| over
// about 2^64 / sqrt(K)) inv_rms = 0 and gates from the bias alone; below it, where norm_eps
// does not cover the loss (mean(x^2) + norm_eps under 2^-100, so only with norm_eps near 0),
// squares flushed to zero or an infinite inv_rms. Such a token's sums are taken again from x
// * 2^x_exp, x_exp = -96 above and 96 below: |x * 2^-96| < 2^32 for any finite bf16, so its
// scaled sum of squares is at least 2^-64 and the squares that flush to zero (each under
// 2^-126) add less than K * 2^-62 of it; below, |x * 2^96| >= 2^-37 for any nonzero bf16.
// The gates use the scaled sums, with norm_eps scaled alike; h_mix and inv_rms are scaled
// back as they are stored. Each scaling is one exact power of two (an ldexp of x, one product
// for h_mix and inv_rms, norm_eps * 2^192 from the host), so no reordering of products can
// form 2^+-192; a token with x_exp = 0 takes none of them, and none of its bits change.
// Rare by nature, so the rescue favours little workgroup memory over speed.
const RESCALE_EXP: i32 = 96;
var<workgroup> x_exp: array<i32, TW>;
var<workgroup> out_of_range: atomic<u32>;
var<workgroup> resum_part: array<f32, 32>;

// Element e of x as f32 bits.
fn x_bits(e: u32) -> u32 {
    let w = x_pair(e);
    return select(w << 16u, w & 0xffff0000u, (e & 1u) == 1u);
}

// Sum m of token b: every invocation's v added over the workgroup in a fixed order. The
// invocations with the same lid % 32 add into one of 32 floats in turn, then a tree: 32
// floats, since a tree through WG floats (1 KB more of workgroup memory) made mhc_pre forward
// with the fused Sinkhorn 3.6% slower at 16384 x 4 x 4096 on an H100 (docs/perf-history.md,
// thirty-first session).
const_assert WG % 32u == 0u;
fn store_resum(lid: u32, b: u32, m: u32, v: f32) {
    for (var r = 0u; r < WG / 32u; r++) {
        if (lid / 32u == r) {
            resum_part[lid % 32u] = select(resum_part[lid % 32u] + v, v, r == 0u);
        }
        workgroupBarrier();
    }
    for (var stride = 16u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            resum_part[lid] += resum_part[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        set_sum(b, m, resum_part[0]);
    }
}

// Element e of x times 2^s, exact. A subnormal x (under 2^-126), which a GPU that flushes
// subnormals reads as zero, is rebuilt from its 7 significand bits: at x_exp = 96 it is
// what the token's sums are made of.
fn x_pow2(e: u32, s: i32) -> f32 {
    let b = x_bits(e);
    if ((b & 0x7f800000u) == 0u) {
        let m = f32((b >> 16u) & 0x7fu);
        return ldexp(select(m, -m, (b >> 31u) != 0u), s - 133);
    }
    return ldexp(bitcast<f32>(b), s);
}

fn gamma_phi(m: u32, k: u32) -> f32 {
#if GAMMA
    return phi_at(m * K + k) * gamma[k];
#else
    return phi_at(m * K + k);
#endif
}

fn rescale_out_of_range(lid: u32, tok0: u32) {
    for (var b = lid; b < TW; b += WG) {
        var e = 0;
        if (tok0 + b < params.t) {
            let ss = sum_at(b, M);
            if (!finite(ss)) {
                e = -RESCALE_EXP;
            } else if (ss / f32(K) + params.norm_eps < 0x1p-100f) {
                e = RESCALE_EXP;
            }
        }
        x_exp[b] = e;
        if (e != 0) {
            atomicOr(&out_of_range, 1u);
        }
    }
    if (workgroupUniformLoad(&out_of_range) == 0u) {
        return;
    }
    for (var b = 0u; b < TW; b++) {
        let e = workgroupUniformLoad(&x_exp[b]);
        if (e == 0) {
            continue;
        }
        let row = (tok0 + b) * K;
        for (var m = 0u; m <= M; m++) {
            var s = 0.0;
            for (var k = lid; k < K; k += WG) {
                let v = x_pow2(row + k, e);
                if (m < M) {
                    s = fma(v, gamma_phi(m, k), s);
                } else {
                    s = fma(v, v, s);
                }
            }
            store_resum(lid, b, m, s);
        }
    }
    workgroupBarrier();
}

#if VEC4
#if SPLIT
// `project` reads each split's chunks in order, all splits at once, so the chunks it read
// last may still be in the L2 when `main` starts. With flag NEWEST, where splits start at
// rows of x and a slice holds whole splits' columns (the bench shapes), the walk takes the
// chunks newest first, a chunk (SC words) of every token at a time, so its first reads find
// them.
const SPLIT_WORDS: u32 = SC * CPS;
const NEWEST_FIRST: bool = NEWEST && (D / 8u) % SPLIT_WORDS == 0u && WS % SPLIT_WORDS == 0u;
// Whole splits' columns a slice holds (at least 1, so the walk not taken still compiles).
const SLICE_SPLITS: u32 = max(WS / SPLIT_WORDS, 1u);
#endif

// Element e of a slice's walk over its tokens' words of h_in: (token of the tile, word of D).
fn slice_word(e: u32, slice: u32) -> vec2<u32> {
#if SPLIT
    if (NEWEST_FIRST) {
        let word = e % SC;
        let token = (e / SC) % TW;
        // The slice's chunks in turn: the last chunk of each of its splits, then the ones
        // before them.
        let turn = e / (SC * TW);
        let chunk = (turn % SLICE_SPLITS) * CPS + CPS - 1u - turn / SLICE_SPLITS;
        return vec2<u32>(token, slice * WS + chunk * SC + word);
    }
#endif
    return vec2<u32>(e / WS, slice * WS + e % WS);
}
#endif

@compute @workgroup_size(WG)
fn main(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = group_index(wid, nwg);
    let tok0 = (g / DS) * TW;
    let slice = g % DS;
    if (tok0 >= params.t) {
        return;
    }
    // Every slice needs the gates; one writes the small outputs.
    let writes = slice == 0u;
    let lid = lane.lid;
#if COOP
    coop_sums(lane, tok0);
#else
#if SPLIT
    split_sums(lane, tok0);
#else
    projections(lane, tok0);
#endif
#endif
    rescale_out_of_range(lid, tok0);

    // Gates, one invocation per (token, output). For a token summed again from x * 2^x_exp,
    // norm_eps is scaled by 2^(2 x_exp) (norm_eps * 2^-192 is 0 in f32) and h_mix and inv_rms
    // are scaled back, with factors chosen by selects rather than an ldexp an element (1.6 us
    // more for `main` at 8192 x 4 x 2560 on an H100, call 139).
    for (var e = lid; e < TW * M; e += WG) {
        let b = e / M;
        let m = e % M;
        let tok = tok0 + b;
        if (tok < params.t) {
            let xe = x_exp[b];
            let up = xe > 0;
            let eps = select(select(0.0, params.norm_eps_up, up), params.norm_eps, xe == 0);
            let inv = 1.0 / sqrt(sum_at(b, M) / f32(K) + eps);
            let hm = sum_at(b, m);
            let tv = hm * inv;
            if (m < N) {
                let hp = sigmoid(alpha[0] * tv + bias[m]) + params.hc_eps;
                gate_pre[b * N + m] = hp;
                if (writes) {
                    h_pre[tok * N + m] = hp;
                }
            }
            if (writes) {
                h_mix[tok * M + m] = select(hm * select(0x1p96f, 0x1p-96f, up), hm, xe == 0);
                if (m == 0u) {
                    inv_rms[tok] = select(inv * select(0x1p-96f, 0x1p96f, up), inv, xe == 0);
                }
                if (m >= N && m < 2u * N) {
                    h_post[tok * N + m - N] = params.post_mult * sigmoid(alpha[1] * tv + bias[m]);
                } else if (m >= 2u * N) {
                    let logit = alpha[2] * tv + bias[m];
#if SINKHORN
                    h_res_logits[tok * NN + m - 2u * N] = logit;
                    res_logits[b * NN + m - 2u * N] = logit;
#else
                    h_res[tok * NN + m - 2u * N] = logit;
#endif
                }
            }
        }
    }
    workgroupBarrier();

#if SINKHORN
    for (var b = lid; b < TW; b += WG) {
        if (writes && tok0 + b < params.t) {
            var l: array<f32, NN>;
#unroll e NN
            l[{e}] = res_logits[b * NN + {e}];
#endunroll
            let p = sk_forward(&l, params.sinkhorn_iters, params.sinkhorn_eps);
#unroll e NN
            h_res[(tok0 + b) * NN + {e}] = p[{e}];
#endunroll
        }
    }
#endif

    // Pass 2: h_in = sum_i h_pre[i] * x[i, :], this slice's words of it.
#if VEC4
    for (var e = lid; e < TW * WS; e += WG) {
        let bw = slice_word(e, slice);
        let b = bw.x;
        let w = bw.y;
        let tok = tok0 + b;
        if (tok < params.t && w < D / 8u) {
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
#unroll i N
            {
                let q = x[tok * W8 + {i} * (D / 8u) + w];
                lo += gate_pre[b * N + {i}] * lo4(q);
                hi += gate_pre[b * N + {i}] * hi4(q);
            }
#endunroll
            h_in[tok * (D / 8u) + w] = pack4(lo, hi);
        }
    }
#else
    for (var e = lid; e < TW * D; e += WG) {
        let b = e / D;
        let d = e % D;
        let tok = tok0 + b;
        if (tok < params.t) {
            var s = 0.0;
            for (var i = 0u; i < N; i++) {
                s += gate_pre[b * N + i] * x_at(tok * K + i * D + d);
            }
            store_h_in(tok * D + d, s);
        }
    }
#endif
}
