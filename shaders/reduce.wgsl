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
#unroll v NV
    {
        let s = subgroupAdd((*acc)[{v}]);
        if (lane.sg_lane == 0u) {
            red_part[lane.sg_id * NV + {v}] = s;
        }
    }
#endunroll
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

// Without subgroups: a shared-memory tree for each value in turn.
var<workgroup> red_part: array<f32, WG>;

fn block_reduce(lane: Lane, acc: ptr<function, array<f32, NV>>) {
#unroll v NV
    red_part[lane.lid] = (*acc)[{v}];
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
        if (lane.lid < stride) {
            red_part[lane.lid] += red_part[lane.lid + stride];
        }
        workgroupBarrier();
    }
    if (lane.lid == 0u) {
        red_total[{v}] = red_part[0];
    }
    workgroupBarrier();
#endunroll
}
#endif
