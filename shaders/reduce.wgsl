// ---- reduce.wgsl: sums NV values per invocation over the workgroup, deterministically ----
// Needs: WG (a power of two), NV, SG_MIN (the adapter's smallest subgroup size), flag SUBGROUP.
// After block_reduce, red_total[v] holds the workgroup's sum of every invocation's acc[v],
// added in an order fixed by the hardware's lane layout, so reruns give the same bits.

var<workgroup> red_total: array<f32, NV>;

#if SUBGROUP
struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) n_sg: u32,
}

var<workgroup> red_part: array<f32, NV * (WG / SG_MIN)>;

fn block_reduce(lane: Lane, acc: ptr<function, array<f32, NV>>) {
    for (var v = 0u; v < NV; v++) {
        let s = subgroupAdd((*acc)[v]);
        if (lane.sg_lane == 0u) {
            red_part[lane.sg_id * NV + v] = s;
        }
    }
    workgroupBarrier();
    for (var v = lane.lid; v < NV; v += WG) {
        var total = 0.0;
        for (var g = 0u; g < lane.n_sg; g++) {
            total += red_part[g * NV + v];
        }
        red_total[v] = total;
    }
    workgroupBarrier();
}
#else
struct Lane {
    @builtin(local_invocation_index) lid: u32,
}

// Without subgroups: a shared-memory tree over RC values at a time.
const RC: u32 = 8u;
var<workgroup> red_part: array<f32, RC * WG>;

fn block_reduce(lane: Lane, acc: ptr<function, array<f32, NV>>) {
    for (var base = 0u; base < NV; base += RC) {
        for (var c = 0u; c < RC; c++) {
            if (base + c < NV) {
                red_part[c * WG + lane.lid] = (*acc)[base + c];
            }
        }
        workgroupBarrier();
        for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
            if (lane.lid < stride) {
                for (var c = 0u; c < RC; c++) {
                    red_part[c * WG + lane.lid] += red_part[c * WG + lane.lid + stride];
                }
            }
            workgroupBarrier();
        }
        if (lane.lid < RC && base + lane.lid < NV) {
            red_total[base + lane.lid] = red_part[lane.lid * WG];
        }
        workgroupBarrier();
    }
}
#endif
