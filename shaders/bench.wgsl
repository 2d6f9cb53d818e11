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
    let s = f32(gid.x) * 1e-9;
    var a: array<vec4<f32>, 8>;
    for (var c = 0u; c < 8u; c++) {
        a[c] = vec4<f32>(s + f32(c), s - f32(c), s * 0.5, s + 1.0);
    }
    let m = vec4<f32>(0.9999);
    let k = vec4<f32>(1e-4);
    for (var it = 0u; it < params.iters; it++) {
        for (var c = 0u; c < 8u; c++) {
            a[c] = fma(a[c], m, k);
        }
    }
    var r = vec4<f32>(0.0);
    for (var c = 0u; c < 8u; c++) {
        r += a[c];
    }
    // Written only when impossible in practice, so the chains are not optimised away.
    if (r.x == 1234.5678) {
        sink[gid.x] = r;
    }
}
