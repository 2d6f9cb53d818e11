//! Every kernel, in every code path, must parse, validate and translate to SPIR-V (Vulkan),
//! MSL (Metal) and HLSL (DX12): a shader that would not build on one backend fails here. The
//! cooperative-matrix family is built for SPIR-V only, the one backend it is enabled on.

use mhc_wgsl::{Family, Projection, Spec, Target};
use naga::back::{hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};

fn specs(family: Family) -> Vec<Spec> {
    let targets = [Target::PORTABLE, Target { subgroup: true, sg_min: 8 }, Target { subgroup: true, sg_min: 32 }];
    let mut out = Vec::new();
    for n in [1, 2, 4, 6, 8] {
        for d in [1, 8, 130] {
            for t in targets {
                out.extend(match family {
                    Family::PreForward => {
                        let split = |tokens| mhc_wgsl::SplitTile::for_shape(n, d, tokens, 16384).map(Projection::Split);
                        [
                            (false, true, 8, 1, Some(Projection::InMain)),
                            (true, false, 32, 2, Some(Projection::InMain)),
                            (true, true, 16, 1, Some(Projection::Coop(4))),
                            (false, false, 8, 2, Some(Projection::Coop(1))),
                            (true, true, 8, 2, split(1)),
                            (false, false, 16, 2, split(16384)),
                            (false, true, 16, 2, split(16384)),
                        ]
                        .into_iter()
                        .filter_map(|(s, g, tb, tpl, p)| {
                            Some(mhc_wgsl::pre_forward(
                                n,
                                d,
                                s,
                                g,
                                t,
                                // Both of `main`'s walks, on the rows with and without gamma.
                                mhc_wgsl::Tile { tb, tpl, slices: 3, newest_first: g },
                                p?,
                            ))
                        })
                        .collect()
                    }
                    Family::PreForwardCoop => [(n, d, 1), (n, d, 16384), (4, 2560, 4096), (4, 4096, 16384)]
                        .into_iter()
                        .filter_map(|(n, d, tokens)| {
                            Some(mhc_wgsl::pre_forward_coop(n, d, mhc_wgsl::CoopTile::for_shape(n, d, tokens)?))
                        })
                        .collect(),
                    Family::PreBackward => [(false, false), (true, false), (true, true)]
                        .map(|(g, big)| mhc_wgsl::pre_backward(n, d, g, big, t))
                        .to_vec(),
                    Family::Post => vec![
                        mhc_wgsl::post_forward(n, d, 4, t),
                        mhc_wgsl::post_forward(n, d, 8, t),
                        mhc_wgsl::post_backward(n, d, t),
                    ],
                    Family::Sinkhorn => vec![mhc_wgsl::sinkhorn(n)],
                    Family::Bench => vec![mhc_wgsl::bench()],
                    Family::Optim => vec![mhc_wgsl::optim()],
                });
            }
        }
    }
    out.dedup();
    out
}

/// Builds the kernel for every backend; returns the most storage buffers an entry point binds.
fn check(family: Family, spec: &Spec) -> u32 {
    let src = family.source(spec).unwrap_or_else(|e| panic!("{e}"));
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{} {spec:?}:\n{}", family.name(), e.emit_to_string(&src)));
    let coop = family == Family::PreForwardCoop;
    let caps = if coop {
        Capabilities::SUBGROUP | Capabilities::SHADER_FLOAT16 | Capabilities::COOPERATIVE_MATRIX
    } else if spec.flag_value("SUBGROUP") == Some(true) {
        Capabilities::SUBGROUP
    } else {
        Capabilities::empty()
    };
    let info = Validator::new(ValidationFlags::all(), caps)
        .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
        .subgroup_operations(naga::valid::SubgroupOperationSet::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{} {spec:?}:\n{}", family.name(), e.emit_to_string(&src)));

    let storage = (0..module.entry_points.len())
        .map(|i| {
            let used = info.get_entry_point(i);
            let bound = module
                .global_variables
                .iter()
                .filter(|(h, g)| matches!(g.space, naga::AddressSpace::Storage { .. }) && !used[*h].is_empty());
            bound.count() as u32
        })
        .max()
        .unwrap_or(0);

    let spv_opts = spv::Options { lang_version: (1, 3), ..Default::default() };
    spv::write_vec(&module, &info, &spv_opts, None).unwrap_or_else(|e| panic!("{} SPIR-V: {e}", family.name()));
    if coop {
        return storage;
    }

    let msl_opts = msl::Options { lang_version: (2, 4), ..Default::default() };
    // A family's entry points exist in the code paths that use them (`project` only where
    // mhc_pre forward's projection is split over K).
    for entry in family.entry_points().iter().filter(|e| module.entry_points.iter().any(|p| p.name == **e)) {
        let pipeline = msl::PipelineOptions {
            entry_point: Some((naga::ShaderStage::Compute, entry.to_string())),
            ..Default::default()
        };
        msl::write_string(&module, &info, &msl_opts, &pipeline)
            .unwrap_or_else(|e| panic!("{} MSL {entry}: {e}", family.name()));
    }

    let hlsl_opts = hlsl::Options { shader_model: hlsl::ShaderModel::V6_0, ..Default::default() };
    let mut hlsl_src = String::new();
    hlsl::Writer::new(&mut hlsl_src, &hlsl_opts, &hlsl::PipelineOptions::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{} HLSL: {e}", family.name()));
    storage
}

/// Also: no entry point binds more storage buffers than `MAX_STORAGE_BUFFERS`, the count a
/// context requires of its device, and one binds exactly that many, so the bound is not loose.
#[test]
fn every_kernel_builds_for_every_backend() {
    let mut most = 0;
    for family in Family::ALL {
        let specs = specs(family);
        assert!(!specs.is_empty());
        for spec in &specs {
            let storage = check(family, spec);
            assert!(storage <= mhc_wgsl::MAX_STORAGE_BUFFERS, "{} {spec:?} binds {storage}", family.name());
            most = most.max(storage);
        }
    }
    assert_eq!(most, mhc_wgsl::MAX_STORAGE_BUFFERS);
}

/// `Family::parse` counts the workgroup memory each entry point uses: mhc_pre backward's `cols`
/// at n = 4 stages 64 tokens' scalars, 8192 bytes (what NVIDIA's driver reported for it through
/// `examples/kernel_stats.rs`); `rows` its token sums and `block_reduce`'s partials; `finish` a
/// tree of WG floats.
#[test]
fn workgroup_bytes_per_entry_point() {
    let spec = mhc_wgsl::pre_backward(4, 2560, true, false, Target { subgroup: true, sg_min: 32 });
    let bytes = Family::PreBackward.parse(&spec).unwrap().workgroup_bytes;
    assert_eq!(bytes["cols"], 8192);
    assert_eq!(bytes["rows"], 8 * 27 * 4 + 32 * 4 * 4 + 32 * 4);
    assert_eq!(bytes["finish"], 128 * 4);
    assert_eq!(bytes.len(), 3);
}
