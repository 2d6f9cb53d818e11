// ---- post.wgsl: mhc_post forward and backward (SPEC.md section 4) ----
// Needs: N, D, NN = N * N, WG, NV = N + NN (and reduce.wgsl's RG, CL, RPL), CPI columns an
// invocation of the forward takes (8, or 4 with NARROW; 1 without VEC4); flags VEC4
// (D % 8 == 0), NARROW (forward only), SUBGROUP and SC4 (N == 4: a token's mixes are read as
// vec4s). Forward: one invocation per (token, CPI columns), all N output rows: x, residual and
// out each cross memory once. Backward: one workgroup per token; dx and dresidual are written
// in the same pass that accumulates dpost_layer_mix and dcomb_res_mix, reduced by block_reduce.

struct Params {
    t: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
#if SC4
@group(0) @binding(3) var<storage, read> plm4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> comb4: array<vec4<f32>>;
#else
@group(0) @binding(3) var<storage, read> plm: array<f32>;
@group(0) @binding(4) var<storage, read> comb: array<f32>;
#endif
#if VEC4
@group(0) @binding(1) var<storage, read> x: array<Word>;
@group(0) @binding(2) var<storage, read> residual: array<Word>;
@group(0) @binding(5) var<storage, read_write> out: array<Word>;
@group(0) @binding(6) var<storage, read> d_out: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read_write> dx: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read_write> dresidual: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> residual: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<atomic<u32>>;
@group(0) @binding(6) var<storage, read> d_out: array<u32>;
@group(0) @binding(7) var<storage, read_write> dx: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read_write> dresidual: array<atomic<u32>>;
#endif
@group(0) @binding(9) var<storage, read_write> dplm: array<f32>;
@group(0) @binding(10) var<storage, read_write> dcomb: array<f32>;

// A token's mixes: post_layer_mix [N] and comb_res_mix [N, N] (row j, column i at j * N + i).
struct Mixes {
    plm: array<f32, N>,
    comb: array<f32, NN>,
}

fn mixes(tok: u32) -> Mixes {
    var m: Mixes;
#if SC4
    // N == 4: one 16-byte load a row.
    let p = plm4[tok];
#unroll i N
    m.plm[{i}] = p[{i}];
#endunroll
#unroll j N
    {
        let c = comb4[tok * N + {j}];
#unroll i N
        m.comb[{j} * N + {i}] = c[{i}];
#endunroll
    }
#endunroll
#else
#unroll i N
    m.plm[{i}] = plm[tok * N + {i}];
#endunroll
#unroll e NN
    m.comb[{e}] = comb[tok * NN + {e}];
#endunroll
#endif
    return m;
}

// Writes the workgroup's reduced sums: dpost_layer_mix and dcomb_res_mix of its token.
fn store_token_sums(lid: u32, tok: u32) {
    for (var r = lid; r < NV; r += WG) {
        if (r < N) {
            dplm[tok * N + r] = red_total[r];
        } else {
            dcomb[tok * NN + r - N] = red_total[r];
        }
    }
}

#if VEC4
// Words of x, residual and out per row: CPI columns a word.
const W: u32 = D / CPI;

// A word's even (lo) or odd (hi) columns as f32: `Floats`.
#if NARROW
// The forward's words of 4 columns (its backward is not built with these).
alias Word = vec2<u32>;
alias Floats = vec2<f32>;

fn lo_w(q: Word) -> Floats {
    return bitcast<Floats>(q << Word(16u));
}

fn hi_w(q: Word) -> Floats {
    return bitcast<Floats>(q & Word(0xffff0000u));
}

fn pack_w(lo: Floats, hi: Floats) -> Word {
    return Word(pack2(lo.x, hi.x), pack2(lo.y, hi.y));
}
#else
alias Word = vec4<u32>;
alias Floats = vec4<f32>;

fn lo_w(q: Word) -> Floats {
    return lo4(q);
}

fn hi_w(q: Word) -> Floats {
    return hi4(q);
}

fn pack_w(lo: Floats, hi: Floats) -> Word {
    return pack4(lo, hi);
}
#endif

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wid, nwg) * WG + lid;
    if (e >= params.t * W) {
        return;
    }
    let tok = e / W;
    let w = e % W;
    let xq = x[tok * W + w];
    var rlo: array<Floats, N>;
    var rhi: array<Floats, N>;
#unroll j N
    {
        let q = residual[(tok * N + {j}) * W + w];
        rlo[{j}] = lo_w(q);
        rhi[{j}] = hi_w(q);
    }
#endunroll
    let mx = mixes(tok);
#unroll i N
    {
        var lo = mx.plm[{i}] * lo_w(xq);
        var hi = mx.plm[{i}] * hi_w(xq);
#unroll j N
        lo += mx.comb[{j} * N + {i}] * rlo[{j}];
        hi += mx.comb[{j} * N + {i}] * rhi[{j}];
#endunroll
        out[(tok * N + {i}) * W + w] = pack_w(lo, hi);
    }
#endunroll
}
#if !NARROW

// One column block of a token: d_out and residual of every row, and x.
struct Block {
    g: array<vec4<u32>, N>,
    r: array<vec4<u32>, N>,
    x: vec4<u32>,
}

fn load_block(tok: u32, w: u32) -> Block {
    var b: Block;
#unroll i N
    b.g[{i}] = d_out[(tok * N + {i}) * W + w];
    b.r[{i}] = residual[(tok * N + {i}) * W + w];
#endunroll
    b.x = x[tok * W + w];
    return b;
}

@compute @workgroup_size(WG)
fn backward(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tok = group_index(wid, nwg);
    if (tok >= params.t) {
        return;
    }
    let mx = mixes(tok);
    // acc[i]: dplm of row i; acc[N + j * N + i]: dcomb[j, i].
    var acc: array<f32, NVP>;
    // Each step loads the next column block before its own arithmetic, so an invocation's
    // loads for two blocks are in flight at once.
    var next: Block;
    if (lane.lid < W) {
        next = load_block(tok, lane.lid);
    }
    for (var w = lane.lid; w < W; w += WG) {
        let b = next;
        if (w + WG < W) {
            next = load_block(tok, w + WG);
        }
        var glo: array<vec4<f32>, N>;
        var ghi: array<vec4<f32>, N>;
#unroll i N
        glo[{i}] = lo4(b.g[{i}]);
        ghi[{i}] = hi4(b.g[{i}]);
#endunroll
        var dlo = vec4<f32>(0.0);
        var dhi = vec4<f32>(0.0);
#unroll i N
        dlo += mx.plm[{i}] * glo[{i}];
        dhi += mx.plm[{i}] * ghi[{i}];
        acc[{i}] += dot(glo[{i}], lo4(b.x)) + dot(ghi[{i}], hi4(b.x));
#endunroll
        dx[tok * W + w] = pack4(dlo, dhi);
#unroll j N
        {
            let rq = b.r[{j}];
            var rl = vec4<f32>(0.0);
            var rh = vec4<f32>(0.0);
#unroll i N
            rl += mx.comb[{j} * N + {i}] * glo[{i}];
            rh += mx.comb[{j} * N + {i}] * ghi[{i}];
            acc[N + {j} * N + {i}] += dot(glo[{i}], lo4(rq)) + dot(ghi[{i}], hi4(rq));
#endunroll
            dresidual[(tok * N + {j}) * W + w] = pack4(rl, rh);
        }
#endunroll
    }
    block_reduce(lane, &acc);
    store_token_sums(lane.lid, tok);
}
#endif
#else
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wid, nwg) * WG + lid;
    if (e >= params.t * D) {
        return;
    }
    let tok = e / D;
    let d = e % D;
    let xv = bf16_at(x[e >> 1u], e);
    let mx = mixes(tok);
    for (var i = 0u; i < N; i++) {
        var s = mx.plm[i] * xv;
        for (var j = 0u; j < N; j++) {
            let r = (tok * N + j) * D + d;
            s += mx.comb[j * N + i] * bf16_at(residual[r >> 1u], r);
        }
        let o = (tok * N + i) * D + d;
        atomicAnd(&out[o >> 1u], half_keep(o));
        atomicOr(&out[o >> 1u], half_bits(o, s));
    }
}

@compute @workgroup_size(WG)
fn backward(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let tok = group_index(wid, nwg);
    if (tok >= params.t) {
        return;
    }
    let mx = mixes(tok);
    var acc: array<f32, NVP>;
    for (var d = lane.lid; d < D; d += WG) {
        var g: array<f32, N>;
#unroll i N
        {
            let o = (tok * N + {i}) * D + d;
            g[{i}] = bf16_at(d_out[o >> 1u], o);
        }
#endunroll
        let xe = tok * D + d;
        let xv = bf16_at(x[xe >> 1u], xe);
        var s = 0.0;
#unroll i N
        s += mx.plm[{i}] * g[{i}];
        acc[{i}] += g[{i}] * xv;
#endunroll
        atomicAnd(&dx[xe >> 1u], half_keep(xe));
        atomicOr(&dx[xe >> 1u], half_bits(xe, s));
#unroll j N
        {
            let r = (tok * N + {j}) * D + d;
            let rv = bf16_at(residual[r >> 1u], r);
            var sr = 0.0;
#unroll i N
            sr += mx.comb[{j} * N + {i}] * g[{i}];
            acc[N + {j} * N + {i}] += g[{i}] * rv;
#endunroll
            atomicAnd(&dresidual[r >> 1u], half_keep(r));
            atomicOr(&dresidual[r >> 1u], half_bits(r, sr));
        }
#endunroll
    }
    block_reduce(lane, &acc);
    store_token_sums(lane.lid, tok);
}
#endif
