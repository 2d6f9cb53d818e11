//! What the Vulkan driver reports about each of mhc's kernels once it has compiled them for
//! the GPU (`VK_KHR_pipeline_executable_properties`): on NVIDIA, registers an invocation and
//! the shared and local (spilled) memory, which decide how many workgroups a multiprocessor
//! holds. wgpu does not expose these, so this builds each kernel as `mhc bench` runs it (at its
//! four default shapes, n = 4, or at those given; subgroups of 32), translates it to SPIR-V
//! with naga as wgpu's Vulkan backend does with mhc's settings (no runtime checks, native
//! workgroup-memory zeroing, SPIR-V 1.6), and compiles it through ash. Each line also gives
//! mhc's own count of the kernel's workgroup memory (`Family::parse`'s count, which the
//! runtime holds to the device's limit), to set beside the driver's.
//!
//! ```sh
//! cargo run --release -p mhc-wgsl --example kernel_stats
//! cargo run --release -p mhc-wgsl --example kernel_stats -- --microcode DIR
//! cargo run --release -p mhc-wgsl --example kernel_stats -- --shape 8192,7,2560
//! ```
//!
//! `--shape T,n,D` (repeatable) builds the kernels of those shapes instead of the bench's.
//!
//! With `--microcode DIR` it also writes the machine code the driver compiled each kernel to,
//! one `DIR/<shape>-<family>-<entry>.nvuc` a kernel, for `nvdisasm FILE.nvuc` (CUDA's
//! disassembler; also in the `nvidia-cuda-nvdisasm` wheel) to print as SASS. NVIDIA's driver
//! keeps that code zstd-compressed in the data of a Vulkan pipeline cache, as an "NVuc" object
//! that `nvdisasm` reads; the layout around it is the driver's own and undocumented, so the
//! example searches the data for it and says so where it finds none.
//!
//! Needs a Vulkan 1.3 device with the extension (NVIDIA's driver has it; lavapipe has not, and
//! the example says so). The tensor-core kernels are included where the device has
//! `VK_KHR_cooperative_matrix`.

use std::collections::BTreeMap;
use std::error::Error;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::path::{Path, PathBuf};

use ash::vk;
use mhc_wgsl::{CoopTile, Family, Projection, Spec, SplitTile, Target, Tile};
use naga::back::spv;
use naga::valid::{Capabilities, ValidationFlags, Validator};

type Res<T> = Result<T, Box<dyn Error>>;

/// Workgroup memory an H200 allows a workgroup through wgpu (`../shared/GPU-FACTS.md`), which
/// sizes `project`'s chunks of phi.
const WORKGROUP_STORAGE: u32 = 49152;

/// A kernel to compile: a label for its shape, its family, entry point and specialisation.
struct Kernel {
    shape: String,
    family: Family,
    entry: &'static str,
    spec: Spec,
}

impl Kernel {
    /// `<shape>-<family>-<entry>`, with the shape's commas as `x` and only letters, digits and
    /// `_` besides, so that the name travels as a file name anywhere.
    fn file_stem(&self) -> String {
        let mut shape = String::new();
        for c in self.shape.chars() {
            match c {
                ',' => shape.push('x'),
                ' ' if !shape.ends_with('_') => shape.push('_'),
                c if c.is_ascii_alphanumeric() => shape.push(c),
                _ => {}
            }
        }
        let shape = if shape.is_empty() { "any" } else { &shape };
        format!("{shape}-{}-{}", self.family.name(), self.entry)
    }
}

/// `mhc bench`'s default shapes (T, n, D).
const BENCH_SHAPES: [(usize, u32, u32); 4] = [(4096, 4, 2560), (8192, 4, 2560), (16384, 4, 4096), (8192, 4, 7168)];

/// Every kernel `mhc bench` runs at these shapes, specialised as the runtime does there.
fn kernels(shapes: &[(usize, u32, u32)]) -> Vec<Kernel> {
    let target = Target { subgroup: true, sg_min: 32 };
    let mut out = Vec::new();
    let mut add = |shape: &str, family, entries: &[&'static str], spec: Spec| {
        for &entry in entries {
            out.push(Kernel { shape: shape.to_string(), family, entry, spec: spec.clone() });
        }
    };
    for &(t, n, d) in shapes {
        let shape = format!("{t},{n},{d}");
        let tile = Tile::for_tokens(n, d, t);
        let (projection, entries): (_, &[&'static str]) = match SplitTile::for_shape(n, d, t, WORKGROUP_STORAGE) {
            Some(split) => (Projection::Split(split), &["fold_gamma", "project", "main"]),
            None => (Projection::InMain, &["fold_gamma", "main"]),
        };
        let gamma = mhc_wgsl::gamma_in_project(t);
        let pre = mhc_wgsl::pre_forward(n, d, false, gamma, target, tile, projection);
        add(&shape, Family::PreForward, entries, pre);
        let fused = mhc_wgsl::pre_forward(n, d, true, gamma, target, tile, projection);
        add(&format!("{shape} sinkhorn"), Family::PreForward, &["main"], fused);
        add(
            &shape,
            Family::PreBackward,
            &["rows", "cols", "finish"],
            mhc_wgsl::pre_backward(n, d, true, false, target),
        );
        add(
            &shape,
            Family::Post,
            &["forward"],
            mhc_wgsl::post_forward(n, d, mhc_wgsl::post_forward_columns(d, t), target),
        );
        add(&shape, Family::Post, &["backward"], mhc_wgsl::post_backward(n, d, target));
        if let Some(c) = CoopTile::for_shape(n, d, t) {
            let shape = format!("{shape} coop");
            add(&shape, Family::PreForwardCoop, &["project"], mhc_wgsl::pre_forward_coop(n, d, c));
            let main = mhc_wgsl::pre_forward(n, d, false, false, target, tile, Projection::Coop(c.splits));
            add(&shape, Family::PreForward, &["main"], main);
        }
    }
    let mut ns: Vec<u32> = shapes.iter().map(|s| s.1).collect();
    ns.sort_unstable();
    ns.dedup();
    for n in ns {
        add(&format!("n = {n}"), Family::Sinkhorn, &["forward", "backward"], mhc_wgsl::sinkhorn(n));
    }
    add("-", Family::Bench, &["copy", "fma_rate"], mhc_wgsl::bench());
    out
}

/// A kernel translated to SPIR-V, with the buffers of each bind group it declares.
struct Spirv {
    words: Vec<u32>,
    entry: &'static str,
    groups: BTreeMap<u32, Vec<vk::DescriptorSetLayoutBinding<'static>>>,
}

fn translate(k: &Kernel, module: &naga::Module) -> Res<Spirv> {
    let info = Validator::new(ValidationFlags::all(), Capabilities::all()).validate(module)?;
    let options = spv::Options {
        lang_version: (1, 6),
        bounds_check_policies: naga::proc::BoundsCheckPolicies::default(),
        zero_initialize_workgroup_memory: spv::ZeroInitializeWorkgroupMemoryMode::Native,
        force_loop_bounding: false,
        emit_int_div_checks: false,
        ..Default::default()
    };
    let stage = spv::PipelineOptions { shader_stage: naga::ShaderStage::Compute, entry_point: k.entry.into() };
    let words = spv::write_vec(module, &info, &options, Some(&stage))?;
    let mut groups: BTreeMap<u32, Vec<vk::DescriptorSetLayoutBinding>> = BTreeMap::new();
    for (_, var) in module.global_variables.iter() {
        let ty = match var.space {
            naga::AddressSpace::Uniform => vk::DescriptorType::UNIFORM_BUFFER,
            naga::AddressSpace::Storage { .. } => vk::DescriptorType::STORAGE_BUFFER,
            _ => continue,
        };
        if let Some(b) = &var.binding {
            groups.entry(b.group).or_default().push(
                vk::DescriptorSetLayoutBinding::default()
                    .binding(b.binding)
                    .descriptor_type(ty)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE),
            );
        }
    }
    Ok(Spirv { words, entry: k.entry, groups })
}

/// The Vulkan objects the kernels are compiled on.
struct Gpu {
    _entry: ash::Entry,
    instance: ash::Instance,
    device: ash::Device,
    stats: ash::khr::pipeline_executable_properties::Device,
    name: String,
    coop: bool,
}

impl Gpu {
    fn new() -> Res<Gpu> {
        // SAFETY: loading the system's Vulkan loader; every call below follows the Vulkan
        // spec's valid usage for the objects created here, which outlive their uses.
        let entry = unsafe { ash::Entry::load()? };
        let app = vk::ApplicationInfo::default().api_version(vk::API_VERSION_1_3);
        let instance =
            unsafe { entry.create_instance(&vk::InstanceCreateInfo::default().application_info(&app), None)? };
        let devices = unsafe { instance.enumerate_physical_devices()? };
        let props = |p| unsafe { instance.get_physical_device_properties(p) };
        let physical = devices
            .iter()
            .copied()
            .max_by_key(|&p| props(p).device_type == vk::PhysicalDeviceType::DISCRETE_GPU)
            .ok_or("no Vulkan device")?;
        let chosen = props(physical);
        let name = chosen.device_name_as_c_str()?.to_string_lossy().into_owned();
        if chosen.api_version < vk::API_VERSION_1_3 {
            return Err(format!("{name}: Vulkan 1.3 needed").into());
        }
        let extensions = unsafe { instance.enumerate_device_extension_properties(physical)? };
        let has = |want: &CStr| extensions.iter().any(|e| e.extension_name_as_c_str() == Ok(want));
        let stats_ext = ash::khr::pipeline_executable_properties::NAME;
        if !has(stats_ext) {
            return Err(format!("{name} does not report compiled kernels' statistics ({stats_ext:?})").into());
        }
        let coop = has(ash::khr::cooperative_matrix::NAME);
        let mut enabled = vec![stats_ext.as_ptr()];
        if coop {
            enabled.push(ash::khr::cooperative_matrix::NAME.as_ptr());
        }
        let family = unsafe { instance.get_physical_device_queue_family_properties(physical) }
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or("no compute queue")? as u32;
        let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&[1.0])];
        let mut stats_feature =
            vk::PhysicalDevicePipelineExecutablePropertiesFeaturesKHR::default().pipeline_executable_info(true);
        let mut v11 = vk::PhysicalDeviceVulkan11Features::default().storage_buffer16_bit_access(coop);
        let mut v12 = vk::PhysicalDeviceVulkan12Features::default().shader_float16(coop).vulkan_memory_model(coop);
        let mut v13 = vk::PhysicalDeviceVulkan13Features::default().shader_zero_initialize_workgroup_memory(true);
        let mut coop_feature = vk::PhysicalDeviceCooperativeMatrixFeaturesKHR::default().cooperative_matrix(true);
        let mut info = vk::DeviceCreateInfo::default()
            .queue_create_infos(&queues)
            .enabled_extension_names(&enabled)
            .push_next(&mut stats_feature)
            .push_next(&mut v11)
            .push_next(&mut v12)
            .push_next(&mut v13);
        if coop {
            info = info.push_next(&mut coop_feature);
        }
        let device = unsafe { instance.create_device(physical, &info, None)? };
        let stats = ash::khr::pipeline_executable_properties::Device::new(&instance, &device);
        Ok(Gpu { _entry: entry, instance, device, stats, name, coop })
    }

    /// The driver's statistics of `k`, one line per executable; with `microcode`, also its
    /// machine code written to that file, and a line that says so.
    fn compile(&self, k: &Spirv, microcode: Option<&Path>) -> Res<Vec<String>> {
        let d = &self.device;
        let last = k.groups.keys().max().map_or(0, |g| g + 1);
        let mut set_layouts = Vec::new();
        for g in 0..last {
            let bindings = k.groups.get(&g).map_or(&[][..], |b| &b[..]);
            let ci = vk::DescriptorSetLayoutCreateInfo::default().bindings(bindings);
            set_layouts.push(unsafe { d.create_descriptor_set_layout(&ci, None)? });
        }
        let layout = unsafe {
            d.create_pipeline_layout(&vk::PipelineLayoutCreateInfo::default().set_layouts(&set_layouts), None)?
        };
        let shader = unsafe { d.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&k.words), None)? };
        let entry = CString::new(k.entry)?;
        let ci = vk::ComputePipelineCreateInfo::default()
            .flags(vk::PipelineCreateFlags::CAPTURE_STATISTICS_KHR)
            .stage(
                vk::PipelineShaderStageCreateInfo::default()
                    .stage(vk::ShaderStageFlags::COMPUTE)
                    .module(shader)
                    .name(&entry),
            )
            .layout(layout);
        // A cache of its own, so that its data holds this kernel's code alone.
        let cache = match microcode {
            Some(_) => unsafe { d.create_pipeline_cache(&vk::PipelineCacheCreateInfo::default(), None)? },
            None => vk::PipelineCache::null(),
        };
        let pipelines = unsafe { d.create_compute_pipelines(cache, &[ci], None) };
        let lines = pipelines.map_err(|(_, e)| e.into()).and_then(|p| {
            let mut lines = self.statistics(p[0]);
            if let (Some(path), Ok(lines)) = (microcode, lines.as_mut()) {
                let data = unsafe { d.get_pipeline_cache_data(cache) };
                lines.push(
                    data.map_err(Into::into)
                        .and_then(|data| write_microcode(&data, path))
                        .unwrap_or_else(|e| format!("no microcode: {e}")),
                );
            }
            unsafe { d.destroy_pipeline(p[0], None) };
            lines
        });
        unsafe {
            d.destroy_pipeline_cache(cache, None);
            d.destroy_shader_module(shader, None);
            d.destroy_pipeline_layout(layout, None);
            for s in set_layouts {
                d.destroy_descriptor_set_layout(s, None);
            }
        }
        lines
    }

    fn statistics(&self, pipeline: vk::Pipeline) -> Res<Vec<String>> {
        let execs = unsafe {
            self.stats.get_pipeline_executable_properties(&vk::PipelineInfoKHR::default().pipeline(pipeline))?
        };
        let mut lines = Vec::new();
        for index in 0..execs.len() as u32 {
            let exec = vk::PipelineExecutableInfoKHR::default().pipeline(pipeline).executable_index(index);
            let stats = unsafe { self.stats.get_pipeline_executable_statistics(&exec)? };
            let fields: Vec<String> = stats
                .iter()
                .map(|s| {
                    // SAFETY: `format` says which member of the union the driver wrote.
                    let value = unsafe {
                        match s.format {
                            vk::PipelineExecutableStatisticFormatKHR::BOOL32 => (s.value.b32 != 0).to_string(),
                            vk::PipelineExecutableStatisticFormatKHR::INT64 => s.value.i64.to_string(),
                            vk::PipelineExecutableStatisticFormatKHR::UINT64 => s.value.u64.to_string(),
                            _ => format!("{:.1}", s.value.f64),
                        }
                    };
                    let name = s.name_as_c_str().map_or("?".into(), |n| n.to_string_lossy().into_owned());
                    format!("{name} {value}")
                })
                .collect();
            lines.push(fields.join(", "));
        }
        Ok(lines)
    }
}

/// Finds the NVuc object in a pipeline cache's data, writes it to `path` and says so.
fn write_microcode(data: &[u8], path: &Path) -> Res<String> {
    const ZSTD_FRAME: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    for start in (0..data.len().saturating_sub(3)).filter(|&i| data[i..i + 4] == ZSTD_FRAME) {
        let mut unpacked = Vec::new();
        let Ok(mut frame) = ruzstd::decoding::StreamingDecoder::new(&data[start..]) else { continue };
        if frame.read_to_end(&mut unpacked).is_err() {
            continue;
        }
        // The object follows a short prefix of the driver's ("NVDANVVM" on driver 580).
        if let Some(at) = unpacked.windows(4).take(16).position(|w| w == b"NVuc") {
            std::fs::write(path, &unpacked[at..])?;
            return Ok(format!("microcode {} ({} bytes)", path.display(), unpacked.len() - at));
        }
    }
    Err(format!("none of the {} bytes of the driver's pipeline cache data unpacked to an NVuc object", data.len())
        .into())
}

impl Drop for Gpu {
    fn drop(&mut self) {
        unsafe {
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

const USAGE: &str = "usage: kernel_stats [--microcode DIR] [--shape T,n,D]...";

/// `T,n,D` as the bench takes it.
fn parse_shape(text: &str) -> Res<(usize, u32, u32)> {
    let parts: Vec<&str> = text.split(',').collect();
    let [t, n, d] = parts[..] else { return Err(format!("--shape {text}: expected T,n,D").into()) };
    let shape = (t.parse()?, n.parse()?, d.parse()?);
    if shape.0 == 0 || !(1..=8).contains(&shape.1) || shape.2 == 0 {
        return Err(format!("--shape {text}: expected T >= 1, n in 1..=8 and D >= 1").into());
    }
    Ok(shape)
}

fn main() -> Res<()> {
    let (mut microcode, mut shapes) = (None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        match flag.as_str() {
            "--microcode" => {
                std::fs::create_dir_all(&value)?;
                microcode = Some(PathBuf::from(value));
            }
            "--shape" => shapes.push(parse_shape(&value)?),
            _ => return Err(USAGE.into()),
        }
    }
    if shapes.is_empty() {
        shapes.extend(BENCH_SHAPES);
    }
    // Translated first, so that a broken kernel shows up on any machine.
    let mut translated = Vec::new();
    for k in kernels(&shapes) {
        // mhc's own count of the workgroup memory, beside the driver's "Shared Memory Size".
        let parsed = k.family.parse(&k.spec)?;
        let shared = parsed.workgroup_bytes[k.entry];
        let label =
            format!("{:<17} {:<16} {:<10} workgroup bytes (naga) {shared:>5},", k.shape, k.family.name(), k.entry);
        let file = microcode.as_ref().map(|dir| dir.join(format!("{}.nvuc", k.file_stem())));
        translated.push((k.family, label, file, translate(&k, &parsed.module)?));
    }
    let gpu = Gpu::new()?;
    println!("{}: statistics of each kernel as its driver compiled it", gpu.name);
    for (family, label, file, spirv) in translated {
        if family == Family::PreForwardCoop && !gpu.coop {
            continue;
        }
        match gpu.compile(&spirv, file.as_deref()) {
            Ok(lines) => {
                for line in lines {
                    println!("{label} {line}");
                }
            }
            Err(e) => println!("{label} failed: {e}"),
        }
    }
    Ok(())
}
