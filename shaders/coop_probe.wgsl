// ---- coop_probe.wgsl: a measurement probe, not an operator (examples/coop_probe.rs) ----
// mhc_pre forward's projection with f16 cooperative matrices: x [T, K] bf16 (converted to f16
// in shared memory) times phi^T, phi split into f16 hi + lo parts (pre-scaled so both are
// normal numbers), f32 accumulators; each workgroup takes TT = 64 tokens (one 16-row tile per
// subgroup of 32) and one of KS splits of K, and writes its partial sums. Needs K, KS, T
// substituted for KVAL, KSVAL, TVAL, subgroups of 32, and wgpu's experimental cooperative
// matrices.
enable f16;
enable wgpu_cooperative_matrix;

const K: u32 = KVAL;
const KS: u32 = KSVAL;
const T: u32 = TVAL;
const KC: u32 = 64u;
const TT: u32 = 64u;

@group(0) @binding(0) var<storage, read> x: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> phi_hi: array<f16>;
@group(0) @binding(2) var<storage, read> phi_lo: array<f16>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> sumsq: array<f32>;

var<workgroup> xs: array<f16, TT * KC>;
var<workgroup> ssp: array<f32, 512>;

fn lo4(q: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(q << vec4<u32>(16u)); }
fn hi4(q: vec4<u32>) -> vec4<f32> { return bitcast<vec4<f32>>(q & vec4<u32>(0xffff0000u)); }

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(subgroup_id) sg: u32) {
    let t0 = wid.x * TT;
    let kb = wid.y * (K / KS);
    var c0 = coop_mat16x16<f32, C>();
    var c1 = coop_mat16x16<f32, C>();
    var ss = vec4<f32>(0.0);
    for (var k0 = kb; k0 < kb + K / KS; k0 += KC) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + 128u * i;
            let row = e / 8u;
            let cw = e % 8u;
            let q = x[((t0 + row) * K + k0) / 8u + cw];
            let lo = lo4(q);
            let hi = hi4(q);
            ss[i] += dot(lo, lo) + dot(hi, hi);
            let b = row * KC + cw * 8u;
            xs[b] = f16(lo.x); xs[b + 1u] = f16(hi.x); xs[b + 2u] = f16(lo.y); xs[b + 3u] = f16(hi.y);
            xs[b + 4u] = f16(lo.z); xs[b + 5u] = f16(hi.z); xs[b + 6u] = f16(lo.w); xs[b + 7u] = f16(hi.w);
        }
        workgroupBarrier();
        for (var kk = 0u; kk < KC; kk += 16u) {
            let a = coopLoadT<coop_mat16x16<f16, A>>(&xs[sg * 16u * KC + kk], KC);
            let h0 = coopLoad<coop_mat16x16<f16, B>>(&phi_hi[k0 + kk], K);
            let l0 = coopLoad<coop_mat16x16<f16, B>>(&phi_lo[k0 + kk], K);
            let h1 = coopLoad<coop_mat16x16<f16, B>>(&phi_hi[16u * K + k0 + kk], K);
            let l1 = coopLoad<coop_mat16x16<f16, B>>(&phi_lo[16u * K + k0 + kk], K);
            c0 = coopMultiplyAdd(a, h0, c0);
            c0 = coopMultiplyAdd(a, l0, c0);
            c1 = coopMultiplyAdd(a, h1, c1);
            c1 = coopMultiplyAdd(a, l1, c1);
        }
        workgroupBarrier();
    }
    coopStoreT(c0, &out[(wid.y * T + t0 + sg * 16u) * 32u], 32u);
    coopStoreT(c1, &out[(wid.y * T + t0 + sg * 16u) * 32u + 16u], 32u);
    for (var i = 0u; i < 4u; i++) {
        ssp[(lid / 8u + 16u * i) * 8u + lid % 8u] = ss[i];
    }
    workgroupBarrier();
    if (lid < TT) {
        var s = 0.0;
        for (var j = 0u; j < 8u; j++) {
            s += ssp[lid * 8u + j];
        }
        sumsq[wid.y * T + t0 + lid] = s;
    }
}
