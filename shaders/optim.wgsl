// ---- optim.wgsl: parameter updates on the GPU ----
// Needs: WG. `sgd` takes one plain SGD step, param -= lr * grad, on f32 tensors: one element an
// invocation, over a grid that may be 2D (long tensors) and a `len` that need not fill it.

struct Params {
    len: u32,
    lr: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;

@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg) * WG + lid;
    if (i >= params.len) {
        return;
    }
    param[i] = param[i] - params.lr * grad[i];
}
