// ---- pre_backward.wgsl: mhc_pre backward (SPEC.md section 2) in three entry points ----
// Needs: N, D, K = N * D, M, NN, TB tokens a `rows` workgroup, WG, NV = TB * N (and
// reduce.wgsl's RG, CL, RPL), UT tokens a step of `cols`, CHT tokens it stages at a time (a
// multiple of UT), TV = (M + 4) / 4,
// SL = ceil(CHT * (M + 1) / WG) and HL = ceil(CHT * N / WG) (scalars an invocation stages);
// flags VEC4 (D % 8 == 0), WORDS (D % 2 == 0: `cols` writes dx in whole words), PAIR (WORDS,
// two columns an invocation), HAS_GAMMA, SUBGROUP, BIG_COEF (norm_eps near 0: see
// `dx_big_coef`).
//
// Passes over the large tensors: x and dh_in are each read twice, dx written once.
//   rows   (pass 1) per token: dh_pre = <dh_in, x_i> reduced over D, then the token's scalars:
//          dh_mix [M] and coef = dinv_rms * inv_rms^3 / K into tok_data, and per-workgroup
//          partial sums of dbias and dalpha (no float atomics: reruns give the same bits).
//   cols   (pass 2) per column k of x over a segment of tokens: dv_mm = dh_mix @ phi, dx, and
//          segment partials of dphi and dgamma; with BIG_COEF, dx again for a token whose coef
//          is past f32's range (see `dx_big_coef`).
//   finish sums the partials in a fixed order.
// dx needs dinv_rms, a reduction over the whole token, so it cannot be written in pass 1.

struct Params {
    t: u32,
    hc_eps: f32,
    post_mult: f32,
    // rows: index of this dispatch's first workgroup among all partials of dalpha / dbias.
    wg_base: u32,
    // cols: tokens a segment; whether to add to the partials of an earlier token chunk.
    seg_tokens: u32,
    accumulate: u32,
    // finish: how many partials there are.
    n_small: u32,
    n_segs: u32,
}

const SMALL: u32 = M + 3u;

@group(0) @binding(0) var<uniform> params: Params;
#if VEC4
@group(0) @binding(1) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> dh_in: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read> dh_in: array<u32>;
#endif
@group(0) @binding(3) var<storage, read> alpha: array<f32>;
@group(0) @binding(4) var<storage, read> inv_rms: array<f32>;
@group(0) @binding(5) var<storage, read> h_mix: array<f32>;
@group(0) @binding(6) var<storage, read> h_pre: array<f32>;
@group(0) @binding(7) var<storage, read> h_post: array<f32>;
@group(0) @binding(8) var<storage, read> dh_post: array<f32>;
@group(0) @binding(9) var<storage, read> dh_res: array<f32>;
@group(0) @binding(10) var<storage, read_write> tok_data: array<f32>;
@group(0) @binding(11) var<storage, read_write> part_small: array<f32>;
@group(0) @binding(12) var<storage, read> phi: array<f32>;
#if HAS_GAMMA
@group(0) @binding(13) var<storage, read> gamma: array<f32>;
#endif
#if WORDS
@group(0) @binding(14) var<storage, read_write> dx: array<u32>;
#else
@group(0) @binding(14) var<storage, read_write> dx: array<atomic<u32>>;
#endif
@group(0) @binding(15) var<storage, read_write> part_phi: array<f32>;
@group(0) @binding(16) var<storage, read_write> part_gamma: array<f32>;
@group(0) @binding(17) var<storage, read_write> dphi: array<f32>;
@group(0) @binding(18) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(19) var<storage, read_write> dalpha: array<f32>;
@group(0) @binding(20) var<storage, read_write> dbias: array<f32>;
// `cols` reads x and dh_in as words whatever the vector width of `rows`.
@group(0) @binding(21) var<storage, read> xw: array<u32>;
@group(0) @binding(22) var<storage, read> dhw: array<u32>;

var<workgroup> contrib: array<f32, TB * SMALL>;

@compute @workgroup_size(WG)
fn rows(lane: Lane, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let group = group_index(wid, nwg);
    let tok0 = group * TB;
    if (tok0 >= params.t) {
        return;
    }
    let lid = lane.lid;
    // acc[b * N + i]: dh_pre of token b, stream i.
    var acc: array<f32, NVP>;
#unroll b TB
    if (tok0 + {b} < params.t) {
        let tok = tok0 + {b};
#if VEC4
        for (var w = lid; w < D / 8u; w += WG) {
            let g = dh_in[tok * (D / 8u) + w];
#unroll i N
            {
                let q = x[tok * (K / 8u) + {i} * (D / 8u) + w];
                acc[{b} * N + {i}] += dot(lo4(g), lo4(q)) + dot(hi4(g), hi4(q));
            }
#endunroll
        }
#else
        for (var d = lid; d < D; d += WG) {
            let ge = tok * D + d;
            let g = bf16_at(dh_in[ge >> 1u], ge);
#unroll i N
            {
                let xe = tok * K + {i} * D + d;
                acc[{b} * N + {i}] += g * bf16_at(x[xe >> 1u], xe);
            }
#endunroll
        }
#endif
    }
#endunroll
    block_reduce(lane, &acc);

    for (var b = lid; b < TB; b += WG) {
        let tok = tok0 + b;
        let c = b * SMALL;
        if (tok >= params.t) {
            for (var r = 0u; r < SMALL; r++) {
                contrib[c + r] = 0.0;
            }
            continue;
        }
        // Every input of the token is loaded before the first store: for all the compiler
        // knows, tok_data may alias them, so a load after a store would wait for it, and the
        // token's 3N + M + NN loads would each take a memory latency in turn.
        let inv = inv_rms[tok];
        let al = vec3<f32>(alpha[0], alpha[1], alpha[2]);
        var hpre: array<f32, N>;
        var hpost: array<f32, N>;
        var dpost: array<f32, N>;
        var hm: array<f32, M>;
        var dres: array<f32, NN>;
#unroll i N
        {
            hpre[{i}] = h_pre[tok * N + {i}];
            hpost[{i}] = h_post[tok * N + {i}];
            dpost[{i}] = dh_post[tok * N + {i}];
        }
#endunroll
#unroll m M
        hm[{m}] = h_mix[tok * M + {m}];
#endunroll
#unroll r NN
        dres[{r}] = dh_res[tok * NN + {r}];
#endunroll
        // Every product below pairs a factor that grows with x's scale with one that shrinks
        // with it, or two near 1: g and h_mix grow with x, inv_rms shrinks, and t = h_mix *
        // inv_rms and dh_mix = g * inv_rms stay near 1. g * h_mix passed f32's range from |x|
        // of about 2^64; inv_rms^2, which NVIDIA's compiler formed from `d * inv * inv`, fell
        // under it at 2^90. dinv_n = dinv_rms * inv_rms^2 = the sum of dh_mix * t.
        var dinv_n = 0.0;
        var da = vec3<f32>(0.0);
#unroll i N
        {
            let s = hpre[{i}] - params.hc_eps;
            let dpre2 = red_total[b * N + {i}] * s * ((1.0 - hpre[{i}]) + params.hc_eps);
            let hp = hpost[{i}];
            let dpost2 = dpost[{i}] * hp * (1.0 - hp / params.post_mult);
            let dm_pre = al.x * dpre2 * inv;
            let dm_post = al.y * dpost2 * inv;
            let t_pre = hm[{i}] * inv;
            let t_post = hm[N + {i}] * inv;
            tok_data[tok * (M + 1u) + {i}] = dm_pre;
            tok_data[tok * (M + 1u) + N + {i}] = dm_post;
            dinv_n += dm_pre * t_pre + dm_post * t_post;
            da.x += dpre2 * t_pre;
            da.y += dpost2 * t_post;
            contrib[c + {i}] = dpre2;
            contrib[c + N + {i}] = dpost2;
        }
#endunroll
        // dalpha's NN terms are summed a row of h_res at a time: in one chain of 64 (n = 8)
        // the sum was off by up to 10 roundings of the terms' root-sum-square (lavapipe).
#unroll j N
        {
            var row = 0.0;
#unroll i N
            {
                let dr = dres[{j} * N + {i}];
                let dm = al.z * dr * inv;
                let t_res = hm[2u * N + {j} * N + {i}] * inv;
                tok_data[tok * (M + 1u) + 2u * N + {j} * N + {i}] = dm;
                dinv_n += dm * t_res;
                row += dr * t_res;
                contrib[c + 2u * N + {j} * N + {i}] = dr;
            }
#endunroll
            da.z += row;
        }
#endunroll
        // coef = dinv_rms * inv_rms^3 / K, stored even when it passes f32's range: `cols` then
        // forms the token's dx again (`dx_big_coef`, with BIG_COEF).
        tok_data[tok * (M + 1u) + M] = dinv_n * inv / f32(K);
        contrib[c + M] = da.x;
        contrib[c + M + 1u] = da.y;
        contrib[c + M + 2u] = da.z;
    }
    workgroupBarrier();
    for (var r = lid; r < SMALL; r += WG) {
        var s = 0.0;
        for (var b = 0u; b < TB; b++) {
            s += contrib[b * SMALL + r];
        }
        part_small[(params.wg_base + group) * SMALL + r] = s;
    }
}

// A token's M + 1 scalars as TV vec4s: `cols` reads 4 with one shared-memory load, since
// one load per FMA-pair would make the load pipe, not the FMA pipe, the limit.
var<workgroup> tok_s: array<vec4<f32>, CHT * TV>;
var<workgroup> hpre_s: array<f32, CHT * N>;
#if BIG_COEF
// 1 + the first token of the last chunk staged with a coef past f32's range (0: none yet).
// Set between the barriers of `stage_tokens`, after every invocation has read it for the
// chunk before, so it needs no reset.
var<workgroup> big_coef_chunk: atomic<u32>;
#endif

// Stages the scalars of tokens [tc, tc + cnt) for the whole workgroup. Each invocation loads
// its (up to) SL scalars and HL h_pre values into registers before the first barrier, so the
// loads are in flight together, and while slower invocations finish the previous stage,
// instead of one load's latency after another.
fn stage_tokens(lid: u32, tc: u32, cnt: u32) {
    var sv: array<f32, SL>;
    var hp: array<f32, HL>;
#unroll s SL
    {
        let e = lid + {s} * WG;
        if (e < cnt * (M + 1u)) {
            sv[{s}] = tok_data[tc * (M + 1u) + e];
        }
    }
#endunroll
#unroll s HL
    {
        let e = lid + {s} * WG;
        if (e < cnt * N) {
            hp[{s}] = h_pre[tc * N + e];
        }
    }
#endunroll
    workgroupBarrier();
#unroll s SL
    {
        let e = lid + {s} * WG;
        if (e < cnt * (M + 1u)) {
            let u = e / (M + 1u);
            let r = e % (M + 1u);
            tok_s[u * TV + r / 4u][r % 4u] = sv[{s}];
#if BIG_COEF
            if (r == M && !finite(sv[{s}])) {
                atomicStore(&big_coef_chunk, tc + 1u);
            }
#endif
        }
    }
#endunroll
#unroll s HL
    {
        let e = lid + {s} * WG;
        if (e < cnt * N) {
            hpre_s[e] = hp[{s}];
        }
    }
#endunroll
    // Slots past the last token up to a multiple of UT: zeros, so the padded steps of `cols`
    // add nothing (a stale value could be infinite, and inf * 0 is NaN).
    for (var e = cnt * TV + lid; e < min(CHT, (cnt + UT - 1u) / UT * UT) * TV; e += WG) {
        tok_s[e] = vec4<f32>(0.0);
    }
    workgroupBarrier();
}

// The staged scalars of token u: dh_mix [M], then coef.
fn token_scalars(u: u32) -> array<vec4<f32>, TV> {
    var hv: array<vec4<f32>, TV>;
#unroll q TV
    hv[{q}] = tok_s[u * TV + {q}];
#endunroll
    return hv;
}

#if BIG_COEF
// Where `rows` found coef = dinv_rms * inv_rms^3 / K past f32's range, a token's dx is formed
// again after its chunk's steps (which wrote inf or NaN there). That takes inv_rms above about
// 2^64, so a norm_eps under about 3e-39; the runtime sets BIG_COEF below 1e-20 (above it,
// coef would also need output gradients of about 1e17). coef * x = (sum of dh_mix * h_mix) *
// inv_rms^2 * x / K: one inv_rms goes in with x (x * inv_rms is near 1), the other as its
// exponent through ldexp, so no reordering of the products can pair the two (NVIDIA's compiler
// formed inv_rms^2 from `d * inv * inv` in `rows`, docs/perf-history.md, thirty-first
// session). Only the tokens of a chunk with such a coef come here. Even so, the check and the
// redo cost `cols` 1.5-1.9% on an H100 (thirty-second session), hence the flag.
struct BigCoef {
    // The token's staged scalars (`token_scalars`).
    hv: array<vec4<f32>, TV>,
    // (sum of dh_mix * h_mix) * frexp(inv_rms).fract / K
    scale: f32,
    exp: i32,
    inv_rms: f32,
}

// The scalars and the factors of coef for token u of the staged chunk (tok in the dispatch),
// loaded and summed once for all of an invocation's columns.
fn big_coef_of(u: u32, tok: u32) -> BigCoef {
    let hv = token_scalars(u);
    var dinv = 0.0;
#unroll m M
    dinv += hv[{m} / 4u][{m} % 4u] * h_mix[tok * M + {m}];
#endunroll
    let inv = inv_rms[tok];
    let f = frexp(inv);
    return BigCoef(hv, dinv * f.fract / f32(K), f.exp, inv);
}

// dx of token u at a column with x value v, dh_in value dh, phi column p, gamma g and stream i.
fn dx_big_coef(u: u32, b: BigCoef, v: f32, dh: f32, p: array<f32, M>, g: f32, i: u32) -> f32 {
    var dv = 0.0;
#unroll m M
    dv += b.hv[{m} / 4u][{m} % 4u] * p[{m}];
#endunroll
    return dv * g - ldexp(b.scale * (v * b.inv_rms), b.exp) + hpre_s[u * N + i] * dh;
}

fn big_coef(u: u32) -> bool {
    return !finite(tok_s[u * TV + M / 4u][M % 4u]);
}
#endif

fn gamma_at(k: u32) -> f32 {
#if HAS_GAMMA
    return gamma[k];
#else
    return 1.0;
#endif
}

// The partial is read only when a later token chunk adds to it: a `select` reads both of its
// sides, and that read of partials never used made `cols` 33-54 us slower at the bench shapes
// on an H200 (docs/perf-history.md, fifteenth session).
fn add_partial(idx: u32, v: f32, is_phi: bool) {
    var s = v;
    if (params.accumulate != 0u) {
        s += seg_partial(is_phi, idx);
    }
    if (is_phi) {
        part_phi[idx] = s;
    } else {
        part_gamma[idx] = s;
    }
}

// Column k of phi.
fn phi_column(k: u32) -> array<f32, M> {
    var p: array<f32, M>;
#unroll m M
    p[{m}] = phi[{m} * K + k];
#endunroll
    return p;
}

// Column k's partials for segment seg: of dphi, its sums a times gamma g, and of dgamma, ga.
fn add_column_partials(seg: u32, k: u32, a: array<f32, M>, g: f32, ga: f32) {
#unroll m M
    add_partial(seg * M * K + {m} * K + k, a[{m}] * g, true);
#endunroll
    add_partial(seg * K + k, ga, false);
}

// A `cols` workgroup's segment of tokens, [t_begin, t_end), and its block of columns (CB
// blocks a segment, block fastest). Groups past the last segment return before using either.
struct ColsGroup {
    seg: u32,
    block: u32,
    t_begin: u32,
    t_end: u32,
}

fn cols_group(wid: vec3<u32>, nwg: vec3<u32>) -> ColsGroup {
    let group = group_index(wid, nwg);
    let seg = group / CB;
    let t_begin = seg * params.seg_tokens;
    return ColsGroup(seg, group % CB, t_begin, min(t_begin + params.seg_tokens, params.t));
}

// Invocation lid's column in the one-column layouts: stream i, element d, phi's column p and
// gamma g. Columns past K take K - 1's values: every invocation takes part in the barriers,
// and nothing is stored for them.
struct Column {
    valid: bool,
    k: u32,
    i: u32,
    d: u32,
    p: array<f32, M>,
    g: f32,
}

fn one_column(block: u32, lid: u32) -> Column {
    let kk = block * WG + lid;
    let k = min(kk, K - 1u);
    return Column(kk < K, k, k / D, k % D, phi_column(k), gamma_at(k));
}

#if WORDS
// Word c of x and the matching word of dh_in for UT tokens from tok0; zeros past t_end, so a
// padded step multiplies zeros by its zeroed scalars. A step whose tokens all exist, nearly
// every step, loads without a check a token (the branch is the same for the whole workgroup).
fn load_step(tok0: u32, t_end: u32, c: u32, d0: u32, xs: ptr<function, array<u32, UT>>, gs: ptr<function, array<u32, UT>>) {
    let xe = tok0 * (K / 2u) + c;
    let ge = (tok0 * D + d0) / 2u;
    if (tok0 + UT <= t_end) {
#unroll j UT
        {
            (*xs)[{j}] = xw[xe + {j} * (K / 2u)];
            (*gs)[{j}] = dhw[ge + {j} * (D / 2u)];
        }
#endunroll
        return;
    }
#unroll j UT
    {
        var xv = 0u;
        var gv = 0u;
        if (tok0 + {j} < t_end) {
            xv = xw[xe + {j} * (K / 2u)];
            gv = dhw[ge + {j} * (D / 2u)];
        }
        (*xs)[{j}] = xv;
        (*gs)[{j}] = gv;
    }
#endunroll
}

#if PAIR
// Each invocation owns one u32 word of a row of x: columns k0 and k0 + 1 of the same stream.
const CB: u32 = (K / 2u + WG - 1u) / WG;

@compute @workgroup_size(WG)
fn cols(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cg = cols_group(wid, nwg);
    if (cg.seg >= params.n_segs) {
        return;
    }
    let c = cg.block * WG + lid;
    let valid = c < K / 2u;
    let k0 = 2u * min(c, K / 2u - 1u);
    let i = k0 / D;
    let d0 = k0 % D;
    let p0 = phi_column(k0);
    let p1 = phi_column(k0 + 1u);
    let g0 = gamma_at(k0);
    let g1 = gamma_at(k0 + 1u);
    var a0: array<f32, M>;
    var a1: array<f32, M>;
    var ga0 = 0.0;
    var ga1 = 0.0;
    // Each step computes on the words loaded in the step before and loads those of the next
    // step first, so the next UT tokens' loads are in flight while this step's FMAs run.
    var next_x: array<u32, UT>;
    var next_g: array<u32, UT>;
    if (valid) {
        load_step(cg.t_begin, cg.t_end, c, d0, &next_x, &next_g);
    }
    for (var tc = cg.t_begin; tc < cg.t_end; tc += CHT) {
        let cnt = min(CHT, cg.t_end - tc);
        stage_tokens(lid, tc, cnt);
        if (valid) {
            for (var u0 = 0u; u0 < cnt; u0 += UT) {
                let words = next_x;
                let gws = next_g;
                load_step(tc + u0 + UT, cg.t_end, c, d0, &next_x, &next_g);
                var res: array<u32, UT>;
#unroll j UT
                {
                    let u = u0 + {j};
                    let v0 = bf16_lo(words[{j}]);
                    let v1 = bf16_hi(words[{j}]);
                    var dv0 = 0.0;
                    var dv1 = 0.0;
                    let hv = token_scalars(u);
#unroll m M
                    {
                        let h = hv[{m} / 4u][{m} % 4u];
                        dv0 += h * p0[{m}];
                        dv1 += h * p1[{m}];
                        a0[{m}] += h * v0;
                        a1[{m}] += h * v1;
                    }
#endunroll
                    let coef = hv[M / 4u][M % 4u];
                    let hp = hpre_s[u * N + i];
                    let r0 = dv0 * g0 - coef * v0 + hp * bf16_lo(gws[{j}]);
                    let r1 = dv1 * g1 - coef * v1 + hp * bf16_hi(gws[{j}]);
                    res[{j}] = pack2(r0, r1);
                    ga0 += v0 * dv0;
                    ga1 += v1 * dv1;
                }
#endunroll
                // The step's dx words stored together; only a chunk's last step can hold
                // tokens past its end, so the others store without a check a token.
                let out = (tc + u0) * (K / 2u) + c;
                if (u0 + UT <= cnt) {
#unroll j UT
                    dx[out + {j} * (K / 2u)] = res[{j}];
#endunroll
                } else {
#unroll j UT
                    if (u0 + {j} < cnt) {
                        dx[out + {j} * (K / 2u)] = res[{j}];
                    }
#endunroll
                }
            }
#if BIG_COEF
            if (atomicLoad(&big_coef_chunk) == tc + 1u) {
                for (var u = 0u; u < cnt; u++) {
                    if (big_coef(u)) {
                        let tok = tc + u;
                        let w = xw[tok * (K / 2u) + c];
                        let gw = dhw[(tok * D + d0) / 2u];
                        let b = big_coef_of(u, tok);
                        let r0 = dx_big_coef(u, b, bf16_lo(w), bf16_lo(gw), p0, g0, i);
                        let r1 = dx_big_coef(u, b, bf16_hi(w), bf16_hi(gw), p1, g1, i);
                        dx[tok * (K / 2u) + c] = pack2(r0, r1);
                    }
                }
            }
#endif
        }
    }
    if (valid) {
        add_column_partials(cg.seg, k0, a0, g0, ga0);
        add_column_partials(cg.seg, k0 + 1u, a1, g1, ga1);
    }
}
#else
// Even D at large M: one column an invocation (two would hold 4M sums and phi values), the
// steps of PAIR's layout, and each step's dx put together in workgroup memory and stored as
// whole words by every invocation, instead of one atomic replacement a bf16.
const CB: u32 = (K + WG - 1u) / WG;

var<workgroup> dx_s: array<f32, UT * WG>;
#if BIG_COEF
var<workgroup> redo_s: u32;
#endif

// Words [UT][WG / 2] of dx from dx_s, UT / 2 an invocation; `first` is the workgroup's first
// word of a row, `cnt` the tokens dx_s holds from tok0 (a step's, or the one token redone).
fn store_dx_words(lid: u32, first: u32, tok0: u32, cnt: u32) {
#unroll q UT>>1
    {
        let e = lid + {q} * WG;
        let j = e / (WG / 2u);
        let w = e % (WG / 2u);
        if (j < cnt && first + w < K / 2u) {
            dx[(tok0 + j) * (K / 2u) + first + w] = pack2(dx_s[j * WG + 2u * w], dx_s[j * WG + 2u * w + 1u]);
        }
    }
#endunroll
}

@compute @workgroup_size(WG)
fn cols(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cg = cols_group(wid, nwg);
    if (cg.seg >= params.n_segs) {
        return;
    }
    let col = one_column(cg.block, lid);
    let first = cg.block * (WG / 2u);
    var a: array<f32, M>;
    var ga = 0.0;
    var next_x: array<u32, UT>;
    var next_g: array<u32, UT>;
    load_step(cg.t_begin, cg.t_end, col.k / 2u, col.d & ~1u, &next_x, &next_g);
    for (var tc = cg.t_begin; tc < cg.t_end; tc += CHT) {
        let cnt = min(CHT, cg.t_end - tc);
        stage_tokens(lid, tc, cnt);
        for (var u0 = 0u; u0 < cnt; u0 += UT) {
            let words = next_x;
            let gws = next_g;
            load_step(tc + u0 + UT, cg.t_end, col.k / 2u, col.d & ~1u, &next_x, &next_g);
            // This token step is written out again in the odd-D layout: as one function for
            // both (given the Column or its fields) it took 22% longer at n = 7 on an H100.
#unroll j UT
            {
                let u = u0 + {j};
                let v = bf16_at(words[{j}], col.k);
                var dv = 0.0;
                let hv = token_scalars(u);
#unroll m M
                {
                    let h = hv[{m} / 4u][{m} % 4u];
                    dv += h * col.p[{m}];
                    a[{m}] += h * v;
                }
#endunroll
                dx_s[{j} * WG + lid] = dv * col.g - hv[M / 4u][M % 4u] * v + hpre_s[u * N + col.i] * bf16_at(gws[{j}], col.k);
                ga += v * dv;
            }
#endunroll
            workgroupBarrier();
            store_dx_words(lid, first, tc + u0, cnt - u0);
            workgroupBarrier();
        }
#if BIG_COEF
        if (lid == 0u) {
            redo_s = atomicLoad(&big_coef_chunk);
        }
        if (workgroupUniformLoad(&redo_s) == tc + 1u) {
            // The steps' stores of the words rewritten here come first.
            storageBarrier();
            for (var u = 0u; u < cnt; u++) {
                let tok = tc + u;
                let big = big_coef(u);
                if (big) {
                    let xe = tok * K + col.k;
                    let ge = tok * D + col.d;
                    dx_s[lid] = dx_big_coef(u, big_coef_of(u, tok), bf16_at(xw[xe >> 1u], xe), bf16_at(dhw[ge >> 1u], ge), col.p, col.g, col.i);
                }
                workgroupBarrier();
                if (big) {
                    store_dx_words(lid, first, tok, 1u);
                }
                workgroupBarrier();
            }
        }
#endif
    }
    if (col.valid) {
        add_column_partials(cg.seg, col.k, a, col.g, ga);
    }
}
#endif
#else
// Odd D: one column an invocation; dx rows share words, so halves are replaced atomically.
const CB: u32 = (K + WG - 1u) / WG;

@compute @workgroup_size(WG)
fn cols(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let cg = cols_group(wid, nwg);
    if (cg.seg >= params.n_segs) {
        return;
    }
    let col = one_column(cg.block, lid);
    var a: array<f32, M>;
    var ga = 0.0;
    for (var tc = cg.t_begin; tc < cg.t_end; tc += CHT) {
        let cnt = min(CHT, cg.t_end - tc);
        stage_tokens(lid, tc, cnt);
        if (col.valid) {
            for (var u = 0u; u < cnt; u++) {
                let tok = tc + u;
                let xe = tok * K + col.k;
                let v = bf16_at(xw[xe >> 1u], xe);
                let ge = tok * D + col.d;
                let dh = bf16_at(dhw[ge >> 1u], ge);
                var dv = 0.0;
                let hv = token_scalars(u);
#unroll m M
                {
                    let h = hv[{m} / 4u][{m} % 4u];
                    dv += h * col.p[{m}];
                    a[{m}] += h * v;
                }
#endunroll
                let r = dv * col.g - hv[M / 4u][M % 4u] * v + hpre_s[u * N + col.i] * dh;
                atomicAnd(&dx[xe >> 1u], half_keep(xe));
                atomicOr(&dx[xe >> 1u], half_bits(xe, r));
                ga += v * dv;
            }
#if BIG_COEF
            if (atomicLoad(&big_coef_chunk) == tc + 1u) {
                for (var u = 0u; u < cnt; u++) {
                    if (big_coef(u)) {
                        let tok = tc + u;
                        let xe = tok * K + col.k;
                        let ge = tok * D + col.d;
                        let r = dx_big_coef(u, big_coef_of(u, tok), bf16_at(xw[xe >> 1u], xe), bf16_at(dhw[ge >> 1u], ge), col.p, col.g, col.i);
                        atomicAnd(&dx[xe >> 1u], half_keep(xe));
                        atomicOr(&dx[xe >> 1u], half_bits(xe, r));
                    }
                }
            }
#endif
        }
    }
    if (col.valid) {
        add_column_partials(cg.seg, col.k, a, col.g, ga);
    }
}
#endif

fn seg_partial(is_phi: bool, idx: u32) -> f32 {
    if (is_phi) {
        return part_phi[idx];
    }
    return part_gamma[idx];
}

// A running sum and the rounding errors of its additions (Neumaier's variant of Kahan's).
struct Compensated {
    s: f32,
    c: f32,
}

fn compensated_add(a: Compensated, v: f32) -> Compensated {
    let t = a.s + v;
    let lost = select((v - t) + a.s, (a.s - t) + v, abs(a.s) >= abs(v));
    return Compensated(t, a.c + lost);
}

// Element e summed over the token segments in segment order (reruns give the same bits), the
// loads eight at a time: one at a time left `finish` waiting a memory latency per segment.
fn seg_total(is_phi: bool, e: u32, stride: u32) -> f32 {
    var sum = Compensated(0.0, 0.0);
    var g = 0u;
    for (; g + 8u <= params.n_segs; g += 8u) {
        var v: array<f32, 8>;
#unroll j 8
        v[{j}] = seg_partial(is_phi, (g + {j}) * stride + e);
#endunroll
#unroll j 8
        sum = compensated_add(sum, v[{j}]);
#endunroll
    }
    for (; g < params.n_segs; g++) {
        sum = compensated_add(sum, seg_partial(is_phi, g * stride + e));
    }
    return sum.s + sum.c;
}

// Workgroups of `finish` that sum dphi and dgamma; the SMALL after them sum one value of dbias
// or dalpha each. One dispatch, so the small sums run beside the large ones.
const FG: u32 = (M * K + WG - 1u) / WG;

var<workgroup> fin: array<f32, WG>;

@compute @workgroup_size(WG)
fn finish(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = group_index(wid, nwg);
    if (group < FG) {
        let e = group * WG + lid;
        if (e < M * K) {
            dphi[e] = seg_total(true, e, M * K);
        }
        if (e < K) {
            dgamma[e] = seg_total(false, e, K);
        }
        return;
    }
    let r = group - FG;
    if (r >= SMALL) {
        return;
    }
    // A fixed-shape tree over the partials of the `rows` workgroups. Each invocation's walk is
    // long (T / (8 * WG) partials: 518 at 530,000 tokens) and these sums cancel, so it carries
    // its rounding errors along (Neumaier): a plain f32 sum missed SPEC.md's 1e-5 once in
    // about 400 random inputs at 530,000 tokens.
    var sum = Compensated(0.0, 0.0);
    var p = lid;
    for (; p + 3u * WG < params.n_small; p += 4u * WG) {
        var v: array<f32, 4>;
#unroll j 4
        v[{j}] = part_small[(p + {j} * WG) * SMALL + r];
#endunroll
#unroll j 4
        sum = compensated_add(sum, v[{j}]);
#endunroll
    }
    for (; p < params.n_small; p += WG) {
        sum = compensated_add(sum, part_small[p * SMALL + r]);
    }
    fin[lid] = sum.s + sum.c;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            fin[lid] += fin[lid + stride];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        if (r < M) {
            dbias[r] = fin[0];
        } else {
            dalpha[r - M] = fin[0];
        }
    }
}
