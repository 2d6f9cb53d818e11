// ---- sinkhorn.wgsl: Sinkhorn-Knopp projection forward and backward, one token an invocation ----
// Needs: N, NN, WG.

struct Params {
    t: u32,
    iters: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> d_out: array<f32>;
@group(0) @binding(3) var<storage, read_write> result: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tok = group_index(wid, nwg) * WG + lid;
    if (tok >= params.t) {
        return;
    }
    var l: array<f32, NN>;
#unroll e NN
    l[{e}] = logits[tok * NN + {e}];
#endunroll
    let p = sk_forward(&l, params.iters, params.eps);
#unroll e NN
    result[tok * NN + {e}] = p[{e}];
#endunroll
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let tok = group_index(wid, nwg) * WG + lid;
    if (tok >= params.t) {
        return;
    }
    var l: array<f32, NN>;
    var g: array<f32, NN>;
#unroll e NN
    l[{e}] = logits[tok * NN + {e}];
    g[{e}] = d_out[tok * NN + {e}];
#endunroll
    let dl = sk_backward(&l, &g, params.iters, params.eps);
#unroll e NN
    result[tok * NN + {e}] = dl[{e}];
#endunroll
}
