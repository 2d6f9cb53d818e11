use std::process::ExitCode;

use super::{CliResult, context};

pub fn info() -> CliResult<ExitCode> {
    println!("adapters:");
    for a in mhc::runtime::adapters() {
        println!("  {} ({:?}, {:?}), driver {} {}", a.name, a.backend, a.device_type, a.driver, a.driver_info);
    }
    let ctx = context()?;
    let a = ctx.adapter_info();
    let c = ctx.capabilities();
    let l = ctx.device().limits();
    println!("mhc uses: {} ({:?}, {:?})", a.name, a.backend, a.device_type);
    println!(
        "  subgroups: {}{}",
        if c.subgroups { "yes" } else { "no" },
        if c.subgroups { format!(", size {}..={}", c.subgroup_min_size, c.subgroup_max_size) } else { String::new() }
    );
    println!(
        "  timestamp queries: {}",
        match (c.timestamps, c.stage_timestamps) {
            (true, true) => "yes, also inside passes (bench --stages)",
            (true, false) => "yes, not inside passes (no bench --stages)",
            _ => "no (bench falls back to host timing)",
        }
    );
    println!("  shader f16: {}", if c.f16 { "yes" } else { "no" });
    println!(
        "  cooperative matrices for mhc_pre forward: {}",
        if c.cooperative_matrix {
            "on (MHC_COOP=1)"
        } else {
            "off (MHC_COOP=1 turns them on where the adapter has them)"
        }
    );
    println!("  max storage binding: {} bytes (larger tensors are split over tokens)", ctx.max_binding_size());
    println!("  max buffer: {} bytes", l.max_buffer_size);
    println!("  workgroup storage: {} bytes", l.max_compute_workgroup_storage_size);
    println!("  invocations per workgroup: {}", l.max_compute_invocations_per_workgroup);
    println!("  workgroups per dimension: {}", l.max_compute_workgroups_per_dimension);
    Ok(ExitCode::SUCCESS)
}
