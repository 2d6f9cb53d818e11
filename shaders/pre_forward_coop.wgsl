// ---- pre_forward_coop.wgsl: mhc_pre forward's projection on f16 cooperative matrices ----
// The opt-in tensor-core path of mhc_pre forward (ContextOptions::cooperative_matrix): the M
// dot products of each token with phi (gamma folded in) and its sum of squares, as partial
// sums over KS splits of K that pre_forward.wgsl's `main` (flag COOP) adds up, gates and
// uses for h_in. Needs `enable f16; enable wgpu_cooperative_matrix;` (Family::source puts
// them first), the f16 16x16x16 configuration with f32 accumulators, subgroups of 32.
// Constants (mhc_wgsl::pre_forward_coop): K, M (at most 32), NB = ceil(K / 2048) blocks of a
// row for its maximum, KS splits of K, S subgroups a
// workgroup, KC columns a chunk (K / KS a multiple of it), KSTEPS = KC / 16, PF chunks in
// flight (dividing a split's chunks), XL words of x and PL halves of phi an invocation loads
// a chunk.
//
// Accuracy: x is converted to f16 exactly where 2^-14 <= |x| <= 65504 (bf16 has fewer
// significand bits than f16); smaller values lose bits (absolute error at most 2^-25). phi is
// scaled per output row by a power of two and split into f16 hi + lo parts, about 22
// significand bits. The tensor cores' accumulation chains restart every CH columns and are
// summed in f32. Each split also records max |x| over its columns, so `main` can send tokens
// outside [2^-4, 65504] (where the conversion error could matter) or with a non-finite
// result to the exact f32 projection.

struct Params {
    // Tokens of this dispatch (phi_top: blocks of phi; split_phi: elements of the 32 x K tiles).
    t: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
// phi_top, split_phi
@group(0) @binding(1) var<storage, read> phi_g: array<f32>;
// The largest |phi| of each block of 2048 columns of each output row: [32][NB].
@group(0) @binding(2) var<storage, read_write> tops: array<f32>;
@group(0) @binding(3) var<storage, read_write> tiles_out: array<f16>;
@group(0) @binding(7) var<storage, read_write> unscale: array<f32>;
// project
@group(0) @binding(4) var<storage, read> x: array<u32>;
@group(0) @binding(5) var<storage, read> tiles: array<f16>;
// Per token: [KS][32] partial sums, [KS] sums of squares, [KS] max |x|.
@group(0) @binding(6) var<storage, read_write> part: array<f32>;

// phi's tiles: 16 columns of K at a time, [K / 16][hi, lo][outputs 0-15, 16-31][16 x 16],
// each 16 x 16 tile column-major (an output's 16 columns contiguous): every B tile is 512
// contiguous bytes.
fn tile_at(m: u32, k: u32) -> u32 {
    return (k / 16u) * 1024u + (m / 16u) * 256u + (m % 16u) * 16u + k % 16u;
}

var<workgroup> block_top: array<f32, 8>;

// One block of 2048 columns of one output row a workgroup (NB blocks a row; rows from M on
// are zeros), 8 columns an invocation. Every block is written, so the buffer needs no
// clearing between calls.
@compute @workgroup_size(256)
fn phi_top(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) sl: u32) {
    let g = group_index(wid, nwg);
    if (g >= params.t) {
        return;
    }
    let m = g / NB;
    var v = 0.0;
    for (var k = (g % NB) * 2048u + lid; k < min(K, (g % NB + 1u) * 2048u); k += 256u) {
        if (m < M) {
            v = max(v, abs(phi_g[m * K + k]));
        }
    }
    v = subgroupMax(v);
    if (sl == 0u) {
        block_top[sg] = v;
    }
    workgroupBarrier();
    if (lid == 0u) {
        for (var i = 0u; i < 8u; i++) {
            v = max(v, block_top[i]);
        }
        tops[g] = v;
    }
}

// One element of the tiles an invocation (rows from M on are zeros): phi's row is scaled by a
// power of two that puts its largest magnitude in [2^13, 2^14), so that both f16 parts are
// normal numbers down to 2^-17 of it.
@compute @workgroup_size(256)
fn split_phi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wid, nwg) * 256u + lid;
    if (e >= params.t) {
        return;
    }
    let m = e / K;
    let k = e % K;
    // From the exponent bits, so the scale is exact: 2^(13 - e) for a top in [2^e, 2^(e+1)).
    // A zero row gets 2^126 (its parts stay zero; 1 / scale stays a normal number); an
    // infinite or NaN one a tiny scale that keeps it non-finite, which `main` sends to the
    // exact path.
    var top = 0.0;
    for (var b = 0u; b < NB; b++) {
        top = max(top, tops[m * NB + b]);
    }
    let biased = i32((bitcast<u32>(top) >> 23u) & 0xffu);
    let scale_bits = u32(clamp(127 + 13 + 127 - biased, 1, 253)) << 23u;
    if (k == 0u) {
        unscale[m] = bitcast<f32>((254u << 23u) - scale_bits);
    }
    var v = 0.0;
    if (m < M) {
        v = phi_g[e] * bitcast<f32>(scale_bits);
    }
    // hi keeps f16's 11 significand bits, cut with a mask: `v - f32(f16(v))` may be
    // simplified to zero by a driver's compiler, which would silently drop lo.
    let hi = bitcast<f32>(bitcast<u32>(v) & 0xffffe000u);
    tiles_out[tile_at(m, k)] = f16(hi);
    tiles_out[tile_at(m, k) + 512u] = f16(v - hi);
}

// project: a workgroup of S subgroups takes TT = 16 * S tokens (a 16-row A tile a subgroup)
// and one split of K. Per chunk of KC columns it converts its x chunk to f16 in shared memory
// and copies the phi chunk there (two buffers, one barrier a chunk; the loads run PF chunks
// ahead), then each subgroup runs 4 MMAs a 16 columns: hi and lo for outputs 0-15 and 16-31.
// An invocation converts one u32 (two columns) at a time, so a subgroup's stores hit
// consecutive banks; rows of x in shared memory are padded to XST halves.
const WG: u32 = 32u * S;
const TT: u32 = 16u * S;
const XW: u32 = KC / 2u;
const XST: u32 = KC + 8u;
const KR: u32 = K / KS;
const NCH: u32 = KR / KC;
const PH: u32 = 64u * KC;
// Columns an accumulation chain runs before it is added into f32 registers.
const CH: u32 = 1024u;
const PW: u32 = KS * 34u;

var<workgroup> xs: array<f16, 2u * TT * XST>;
var<workgroup> bs: array<f16, 2u * PH>;
var<workgroup> cs: array<f32, S * 512u>;

@compute @workgroup_size(WG)
fn project(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32, @builtin(subgroup_invocation_id) sl: u32) {
    let g = group_index(wid, nwg);
    let split = g % KS;
    // No early return for workgroups past the last token (a 2D grid's rounding): the
    // cooperative operations need uniform control flow. Their rows are simply not live.
    let t0 = (g / KS) * TT;
    let kb = split * KR;
    var c0 = coop_mat16x16<f32, C>();
    var c1 = coop_mat16x16<f32, C>();
    var acc: array<f32, 16>;
    var ss: array<f32, XL>;
    var mx: array<f32, XL>;
    // Ring of PF chunks in flight: slot u holds chunk c with c % PF == u.
    var q: array<u32, XL * PF>;
    var pq: array<f16, PL * PF>;
    // Where invocation lid's words of x come from (at the split's first column) and go to.
    var xin: array<u32, XL>;
    var xoff: array<u32, XL>;
    var live: array<bool, XL>;
#unroll i XL
    {
        let w = lid + WG * {i};
        live[{i}] = t0 + w / XW < params.t;
        xin[{i}] = ((t0 + w / XW) * K + kb) / 2u + w % XW;
        xoff[{i}] = (w / XW) * XST + 2u * (w % XW);
    }
#endunroll
#unroll u PF
    {
#unroll i XL
        if (live[{i}]) {
            q[{u} * XL + {i}] = x[xin[{i}] + {u} * XW];
        }
#endunroll
#unroll j PL
        pq[{u} * PL + {j}] = tiles[(kb / 16u + {u} * KSTEPS) * 1024u + lid + WG * {j}];
#endunroll
    }
#endunroll
    for (var cp = 0u; cp < NCH; cp += PF) {
#unroll u PF
        {
            let c = cp + {u};
            let buf = c & 1u;
#unroll i XL
            {
                let v = q[{u} * XL + {i}];
                let lo = bitcast<f32>(v << 16u);
                let hi = bitcast<f32>(v & 0xffff0000u);
                ss[{i}] += lo * lo + hi * hi;
                mx[{i}] = max(mx[{i}], max(abs(lo), abs(hi)));
                let h = vec2<f16>(vec2<f32>(lo, hi));
                xs[buf * TT * XST + xoff[{i}]] = h.x;
                xs[buf * TT * XST + xoff[{i}] + 1u] = h.y;
            }
#endunroll
#unroll j PL
            bs[buf * PH + lid + WG * {j}] = pq[{u} * PL + {j}];
#endunroll
            workgroupBarrier();
            if (c + PF < NCH) {
#unroll i XL
                if (live[{i}]) {
                    q[{u} * XL + {i}] = x[xin[{i}] + (c + PF) * XW];
                }
#endunroll
#unroll j PL
                pq[{u} * PL + {j}] = tiles[(kb / 16u + (c + PF) * KSTEPS) * 1024u + lid + WG * {j}];
#endunroll
            }
#unroll s KSTEPS
            {
                let a = coopLoadT<coop_mat16x16<f16, A>>(&xs[buf * TT * XST + sg * 16u * XST + {s} * 16u], XST);
                let b = buf * PH + {s} * 1024u;
                c0 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&bs[b], 16u), c0);
                c1 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&bs[b + 256u], 16u), c1);
                c0 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&bs[b + 512u], 16u), c0);
                c1 = coopMultiplyAdd(a, coopLoad<coop_mat16x16<f16, B>>(&bs[b + 768u], 16u), c1);
            }
#endunroll
            if ((c + 1u) % (CH / KC) == 0u || c + 1u == NCH) {
                coopStoreT(c0, &cs[sg * 512u], 32u);
                coopStoreT(c1, &cs[sg * 512u + 16u], 32u);
                c0 = coop_mat16x16<f32, C>();
                c1 = coop_mat16x16<f32, C>();
                workgroupBarrier();
                // Lane sl holds row sl / 2, columns (sl % 2) * 16 + j.
#unroll j 16
                acc[{j}] += cs[sg * 512u + sl * 16u + {j}];
#endunroll
            }
        }
#endunroll
    }
    let tok = t0 + sg * 16u + sl / 2u;
    if (tok < params.t) {
#unroll j 16
        part[tok * PW + split * 32u + (sl % 2u) * 16u + {j}] = acc[{j}];
#endunroll
    }
    // A row's XW words are XW consecutive lanes of one subgroup (XW divides 32).
#unroll i XL
    {
        var sq = ss[{i}];
        var top = mx[{i}];
        for (var off = 1u; off < XW; off <<= 1u) {
            sq += subgroupShuffleXor(sq, off);
            top = max(top, subgroupShuffleXor(top, off));
        }
        let w = lid + WG * {i};
        if (w % XW == 0u && live[{i}]) {
            part[(t0 + w / XW) * PW + KS * 32u + split] = sq;
            part[(t0 + w / XW) * PW + KS * 33u + split] = top;
        }
    }
#endunroll
}
