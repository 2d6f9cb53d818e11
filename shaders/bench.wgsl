// ---- bench.wgsl: the two ceilings `mhc bench` measures every operator against ----
// Needs: WG. `copy` moves 16 bytes an invocation a step (grid-stride); `fma` runs 8
// independent vec4 FMA chains so the result is bound by the FMA rate, not latency.

struct Params {
    len: u32,
    iters: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> sink: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let stride = nwg.x * WG;
    for (var i = gid.x; i < params.len; i += stride) {
        dst[i] = src[i];
    }
}

@compute @workgroup_size(WG)
fn fma_rate(@builtin(global_invocation_id) gid: vec3<u32>) {
    // Eight named chains rather than an array: an array indexed in a loop may live in memory.
    let s = f32(gid.x) * 1e-9;
    var a0 = vec4<f32>(s, s + 1.0, s + 2.0, s + 3.0);
    var a1 = a0 + 4.0;
    var a2 = a0 + 8.0;
    var a3 = a0 + 12.0;
    var a4 = a0 + 16.0;
    var a5 = a0 + 20.0;
    var a6 = a0 + 24.0;
    var a7 = a0 + 28.0;
    let m = vec4<f32>(0.9999);
    let k = vec4<f32>(1e-4);
    for (var it = 0u; it < params.iters; it++) {
        a0 = fma(a0, m, k);
        a1 = fma(a1, m, k);
        a2 = fma(a2, m, k);
        a3 = fma(a3, m, k);
        a4 = fma(a4, m, k);
        a5 = fma(a5, m, k);
        a6 = fma(a6, m, k);
        a7 = fma(a7, m, k);
    }
    let r = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
    // Written only when impossible in practice, so the chains are not optimised away.
    if (r.x == 1234.5678) {
        sink[gid.x] = r;
    }
}
