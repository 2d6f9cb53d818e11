//! Adapter and device setup: which GPU mhc runs on and what it may use there.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use mhc_core::{Error, Result};
use mhc_wgsl::{SplitTile, Target, Tile};

use crate::pipeline::PipelineCache;

/// How [`Context::with_options`] picks and configures a device.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Which adapter to prefer where `WGPU_ADAPTER_NAME` does not name one.
    pub power_preference: wgpu::PowerPreference,
    /// Use subgroup operations where the adapter has them (the shared-memory path otherwise).
    pub use_subgroups: bool,
    /// Caps the bytes one tensor binding may span below the device's own limit; larger tensors
    /// are processed in token chunks. Mainly for testing the chunking on small inputs.
    pub max_binding_size: Option<u64>,
    /// Caps the workgroups of one grid dimension below the device's own limit (65535), so the
    /// 2D grids of wide dispatches can be tested on small inputs.
    pub max_workgroups_per_dimension: Option<u32>,
    /// Caps the bytes of workgroup memory a kernel may use below the device's own limit, so
    /// the layouts for adapters with little of it (16 KB is WebGPU's minimum) can be tested.
    pub max_workgroup_storage: Option<u32>,
    /// Caps the lanes that reduce values together in one subgroup (a power of two; by default
    /// the adapter's smallest subgroup size, at most 32). Below the size the adapter runs,
    /// several such clusters share a subgroup: the layout of adapters with a range of subgroup
    /// sizes (Intel 8-32, AMD 32-64), which this lets an adapter of one size test.
    pub max_reduce_lanes: Option<u32>,
    /// The token layout of mhc_pre forward's vector path, for tuning on a new GPU; by default
    /// chosen from the token count. `Context::new` reads `MHC_PRE_TILE=tb,tpl[,slices]`.
    pub pre_forward_tile: Option<Tile>,
    /// Where mhc_pre forward's vector path computes its f32 projection, for tuning and
    /// testing; by default over splits of K with a layout chosen from the shape and device.
    /// `Context::new` reads `MHC_PRE_SPLIT=splits,chunk_words,tokens_per_invocation,invocations`
    /// or `MHC_PRE_SPLIT=off`.
    pub pre_forward_split: Option<PreSplit>,
    /// Columns an invocation of mhc_post forward's vector path takes, 4 or 8, for tuning and
    /// testing; by default 4 up to `mhc_wgsl::POST_NARROW_ELEMENTS` elements of x (tokens x D)
    /// and 8 above. `Context::new` reads `MHC_POST_COLUMNS=4` (or 8).
    pub post_forward_columns: Option<u32>,
    /// Run mhc_pre forward's projection on f16 cooperative matrices (tensor cores) where the
    /// shape allows (K a multiple of 32, M at most 32, D a multiple of 8), with the accuracy
    /// docs/PERFORMANCE.md states (inside SPEC.md's tolerances; not bit-identical to the exact
    /// f32 path, which stays the default). On the NVIDIA H100 and H200 measured there it is
    /// 1.2-1.7x slower than the f32 path: an experiment, kept for GPUs where it may not be.
    /// Needs wgpu's experimental cooperative matrices with the f16 16x16x16 configuration and
    /// f32 accumulators, and subgroups of exactly 32; creating the context fails where they
    /// are missing. `Context::new` reads `MHC_COOP=1`.
    pub cooperative_matrix: bool,
    /// Compile the kernels with wgpu's runtime checks: indices into workgroup and private
    /// arrays clamped, loops bounded by a hidden counter, integer division guarded. Off by
    /// default: mhc's kernels are its own, every index in them is in range by construction
    /// (the tests run them on odd shapes against the golden math), every loop ends, and no
    /// divisor is zero; the checks cost instructions in the inner loops. On Vulkan, buffer
    /// accesses stay bounded by the driver's robust buffer access either way (elsewhere they
    /// rely, like the arrays, on the indices being in range). For debugging a kernel;
    /// `Context::new` reads `MHC_SHADER_CHECKS=1`.
    pub shader_checks: bool,
}

/// Where mhc_pre forward's vector path (D a multiple of 8) computes its f32 projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreSplit {
    /// In `main`, for its own tile of tokens: one dispatch, phi read by every invocation (the
    /// tensor-core path's fallback for tiles it cannot take).
    Off,
    /// In `project`, over splits of K with this layout, before `main`.
    Tile(SplitTile),
}

impl Default for ContextOptions {
    fn default() -> Self {
        Self {
            power_preference: wgpu::PowerPreference::HighPerformance,
            use_subgroups: true,
            max_binding_size: None,
            max_workgroups_per_dimension: None,
            max_workgroup_storage: None,
            max_reduce_lanes: None,
            pre_forward_tile: None,
            pre_forward_split: None,
            post_forward_columns: None,
            cooperative_matrix: false,
            shader_checks: false,
        }
    }
}

/// The optional features mhc found and uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Kernels use subgroup operations (the adapter has them and the options allow them).
    pub subgroups: bool,
    /// The adapter's smallest subgroup size (8 on lavapipe, 32 on NVIDIA); kernels never
    /// assume one.
    pub subgroup_min_size: u32,
    /// The adapter's largest subgroup size.
    pub subgroup_max_size: u32,
    /// Timestamp queries around passes (GPU times in `mhc bench`).
    pub timestamps: bool,
    /// Timestamps between the dispatches of a pass (per-stage timing in `mhc bench`).
    pub stage_timestamps: bool,
    /// WGSL's `f16` type (needed by the cooperative-matrix path).
    pub f16: bool,
    /// mhc_pre forward's projection runs on cooperative matrices (see
    /// [`ContextOptions::cooperative_matrix`]).
    pub cooperative_matrix: bool,
}

/// A wgpu device and queue with mhc's pipeline cache. Cheap to share by reference; every
/// operator takes one.
pub struct Context {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    caps: Capabilities,
    max_binding: u64,
    max_groups: u32,
    max_storage: u32,
    pre_tile: Option<Tile>,
    pre_split: Option<PreSplit>,
    post_columns: Option<u32>,
    reduce_lanes: Option<u32>,
    pub(crate) shader_checks: bool,
    pub(crate) pipelines: PipelineCache,
    pub(crate) scratch: crate::scratch::ScratchPool,
    pub(crate) timer: crate::timing::TimerSlot,
    pub(crate) shared: Arc<DeviceState>,
}

/// Features mhc uses when present; none is required.
const WANTED: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS)
    .union(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    .union(wgpu::Features::SHADER_F16);

/// What the cooperative-matrix path of mhc_pre forward needs from the device.
const COOP: wgpu::Features =
    wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX.union(wgpu::Features::SHADER_F16).union(wgpu::Features::SUBGROUP);

/// An error naming what the adapter lacks for the cooperative-matrix path (the subgroup size
/// is checked in `from_device`, which also serves devices mhc did not create).
fn check_coop_adapter(adapter: &wgpu::Adapter) -> Result<()> {
    let info = adapter.get_info();
    let missing = COOP - adapter.features();
    if !missing.is_empty() {
        return Err(Error::gpu(
            "cooperative matrices",
            format!("{} ({:?}) lacks {missing:?}", info.name, info.backend),
        ));
    }
    let has_config = adapter.cooperative_matrix_properties().iter().any(|p| {
        (p.m_size, p.n_size, p.k_size) == (16, 16, 16)
            && p.ab_type == wgpu::CooperativeScalarType::F16
            && p.cr_type == wgpu::CooperativeScalarType::F32
    });
    if !has_config {
        return Err(Error::gpu(
            "cooperative matrices",
            format!("{} reports no 16x16x16 configuration with f16 inputs and f32 accumulators", info.name),
        ));
    }
    Ok(())
}

/// The process's one wgpu instance, on Vulkan, Metal and DX12 unless `WGPU_BACKEND` names
/// others, locked: one thread at a time enumerates its adapters or makes a device. Not
/// OpenGL: wgpu's GL backend brings up EGL, and on an H200 (NVIDIA 580) a context dropped on
/// one thread, which tore its instance's EGL display down, deadlocked the driver while other
/// threads submitted work. Kept for the process, so no context's drop tears an instance down
/// and each context is spared the driver's start-up. Locked, because the same driver crashed
/// (a segmentation fault inside it) when several threads enumerated the one instance's
/// physical devices at once (docs/perf-history.md, sixteenth and seventeenth sessions).
fn instance() -> MutexGuard<'static, wgpu::Instance> {
    static INSTANCE: OnceLock<Mutex<wgpu::Instance>> = OnceLock::new();
    INSTANCE
        .get_or_init(|| {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
            desc.backends = wgpu::Backends::PRIMARY;
            Mutex::new(wgpu::Instance::new(desc.with_env()))
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// A context on a device of its own, not the one `Context::new` shares, for unit tests that
/// must see no other test's calls on their queue.
#[cfg(test)]
pub(crate) fn private_context() -> Context {
    let instance = instance();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).expect("an adapter");
    let desc = wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("a device");
    drop(instance);
    Context::from_device(adapter.get_info(), device, queue, ContextOptions::default()).expect("a context")
}

/// Every adapter wgpu sees, on the backends `WGPU_BACKEND` allows (by default Vulkan, Metal
/// and DX12).
pub fn adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = instance();
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all())).iter().map(|a| a.get_info()).collect()
}

/// What every context on one device shares: the message of the device's loss, once lost, and
/// the open batch of its queue.
#[derive(Default)]
pub(crate) struct DeviceState {
    lost: Mutex<Option<String>>,
    pub(crate) pending: crate::batch::PendingSlot,
}

/// A wgpu device with its queue and their shared state.
#[derive(Clone)]
struct DeviceQueue {
    device: wgpu::Device,
    queue: wgpu::Queue,
    state: Arc<DeviceState>,
}

/// The state every context on `device` shares. wgpu keeps one lost callback a device, so the
/// contexts share one: a second callback would silence the first context's. They share the
/// queue's open batch too, so that a read or wait through any of them comes after the batch's
/// calls. Devices are told apart by identity (`wgpu::Device`'s `Hash`), and the table holds
/// no device, only weak references to the states, which the device's callback and the
/// contexts on it hold: an entry goes with its device.
fn device_state(device: &wgpu::Device) -> Arc<DeviceState> {
    type States = HashMap<u64, Weak<DeviceState>>;
    static WATCHED: OnceLock<Mutex<States>> = OnceLock::new();
    let mut watched = WATCHED.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    watched.retain(|_, state| state.strong_count() > 0);
    let key = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        device.hash(&mut h);
        h.finish()
    };
    if let Some(state) = watched.get(&key).and_then(Weak::upgrade) {
        return state;
    }
    let state = Arc::new(DeviceState::default());
    let sink = state.clone();
    device.set_device_lost_callback(move |reason, msg| {
        *sink.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(format!("{reason:?}: {msg}"));
    });
    watched.insert(key, Arc::downgrade(&state));
    state
}

/// The device of `adapter` (with the cooperative matrices or without) that every context on it
/// shares, made on first use and kept for the process, unless it was lost. Contexts are then
/// cheap, and no context's drop destroys a device: on an H200 (NVIDIA 580) destroying one
/// device while other threads created pipelines or submitted on another deadlocked the driver
/// (docs/perf-history.md, sixteenth session). Devices are made one at a time.
fn shared_device(adapter: &wgpu::Adapter, coop: bool) -> Result<DeviceQueue> {
    type Key = (String, u32, u32, wgpu::Backend, bool);
    static DEVICES: OnceLock<Mutex<HashMap<Key, DeviceQueue>>> = OnceLock::new();
    let info = adapter.get_info();
    let key = (info.name.clone(), info.vendor, info.device, info.backend, coop);
    let mut devices = DEVICES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(d) = devices.get(&key) {
        if d.state.lost.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
            return Ok(d.clone());
        }
    }
    let mut features = adapter.features() & WANTED;
    if coop {
        features |= COOP;
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("mhc"),
        required_features: features,
        required_limits: adapter.limits(),
        // SAFETY: wgpu's experimental features (here only cooperative matrices, and only
        // when asked for) are not yet validated as thoroughly as the rest of its API; mhc
        // checks the adapter's configurations and subgroup size before using them.
        experimental_features: if coop {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        ..Default::default()
    }))
    .map_err(|e| Error::gpu("device request", e))?;
    let state = device_state(&device);
    let shared = DeviceQueue { device, queue, state };
    devices.insert(key, shared.clone());
    Ok(shared)
}

impl Context {
    /// The default adapter: `WGPU_ADAPTER_NAME` (a substring of the name) when set, else the
    /// high-performance one; `WGPU_BACKEND` limits the backends searched.
    pub fn new() -> Result<Self> {
        Self::with_options(ContextOptions {
            pre_forward_tile: tile_from_env()?,
            pre_forward_split: split_from_env()?,
            post_forward_columns: columns_from_env()?,
            cooperative_matrix: flag_from_env("MHC_COOP")?,
            shader_checks: flag_from_env("MHC_SHADER_CHECKS")?,
            ..Default::default()
        })
    }

    /// A context on the adapter `WGPU_ADAPTER_NAME` names, else the one `opts` prefers; fails
    /// with [`Error::Gpu`] where there is none or it lacks what `opts` asks for. Contexts on
    /// the same adapter share one wgpu device (one with the cooperative matrices, one without),
    /// which the process keeps: each context has its own options, pipelines and scratch
    /// buffers, and [`Context::wait`] waits for the device's work, all contexts' alike.
    pub fn with_options(opts: ContextOptions) -> Result<Self> {
        let instance = instance();
        let adapter = match std::env::var("WGPU_ADAPTER_NAME") {
            Ok(name) => {
                let want = name.to_lowercase();
                let all = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
                let names: Vec<String> = all.iter().map(|a| a.get_info().name).collect();
                all.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&want)).ok_or_else(|| {
                    Error::gpu("adapter", format!("WGPU_ADAPTER_NAME={name} matches none of {names:?}"))
                })?
            }
            Err(_) => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: opts.power_preference,
                ..Default::default()
            }))
            .map_err(|e| {
                Error::gpu("adapter", format!("{e} (no GPU or Vulkan/Metal/DX12 driver found; on Linux without a GPU install lavapipe: apt-get install mesa-vulkan-drivers)"))
            })?,
        };
        if opts.cooperative_matrix {
            check_coop_adapter(&adapter)?;
        }
        // Made under the instance's lock too: the device is the adapter's, on the same driver.
        let shared = shared_device(&adapter, opts.cooperative_matrix)?;
        drop(instance);
        Self::build(adapter.get_info(), shared, opts)
    }

    /// Wraps a device and queue the caller already owns (a game engine's, another ML
    /// runtime's). mhc uses the features and limits the device was created with.
    ///
    /// mhc watches for the device's loss through its lost callback, of which wgpu keeps one a
    /// device: a callback set before the first context on the device is replaced, and one set
    /// after it leaves mhc unable to tell a lost device from a live one (its calls would
    /// then fail with wgpu's errors rather than [`Context::check_lost`]'s). Contexts on the
    /// same device, made here or by [`Context::new`], share the one callback.
    pub fn from_device(
        info: wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        opts: ContextOptions,
    ) -> Result<Self> {
        let state = device_state(&device);
        Self::build(info, DeviceQueue { device, queue, state }, opts)
    }

    fn build(info: wgpu::AdapterInfo, shared: DeviceQueue, opts: ContextOptions) -> Result<Self> {
        let DeviceQueue { device, queue, state } = shared;
        let limits = device.limits();
        if limits.max_storage_buffers_per_shader_stage < mhc_wgsl::MAX_STORAGE_BUFFERS {
            return Err(Error::gpu(
                "device limits",
                format!(
                    "max_storage_buffers_per_shader_stage is {}, mhc's kernels bind up to {}; request the adapter's limits when creating the device",
                    limits.max_storage_buffers_per_shader_stage,
                    mhc_wgsl::MAX_STORAGE_BUFFERS
                ),
            ));
        }
        let f = device.features();
        if opts.cooperative_matrix && !f.contains(COOP) {
            return Err(Error::gpu("cooperative matrices", format!("the device was created without {:?}", COOP - f)));
        }
        if opts.cooperative_matrix && (info.subgroup_min_size != 32 || info.subgroup_max_size != 32) {
            return Err(Error::gpu(
                "cooperative matrices",
                format!(
                    "mhc's cooperative-matrix kernel needs subgroups of exactly 32; {} has {}..={}",
                    info.name, info.subgroup_min_size, info.subgroup_max_size
                ),
            ));
        }
        let caps = Capabilities {
            subgroups: opts.use_subgroups && f.contains(wgpu::Features::SUBGROUP),
            subgroup_min_size: info.subgroup_min_size,
            subgroup_max_size: info.subgroup_max_size,
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            stage_timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES),
            f16: f.contains(wgpu::Features::SHADER_F16),
            cooperative_matrix: opts.cooperative_matrix,
        };
        if let Some(l) = opts.max_reduce_lanes.filter(|l| !l.is_power_of_two()) {
            return Err(Error::param("max_reduce_lanes", format!("expected a power of two, got {l}")));
        }
        if let Some(c) = opts.post_forward_columns {
            post_columns("post_forward_columns", c)?;
        }
        if let Some(t) = opts.pre_forward_tile {
            check_tile("pre_forward_tile", t)?;
        }
        // Whole words (bindings are padded to 4 bytes), and at most 2^31 bytes: the kernels
        // index a binding's elements (bf16 ones too) and words with u32, and Metal allows
        // bindings of many GiB.
        let max_binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size)
            .min(opts.max_binding_size.unwrap_or(u64::MAX))
            .min(1 << 31)
            & !3;
        let max_groups = limits
            .max_compute_workgroups_per_dimension
            .min(opts.max_workgroups_per_dimension.unwrap_or(u32::MAX))
            .max(1);
        let max_storage = limits.max_compute_workgroup_storage_size.min(opts.max_workgroup_storage.unwrap_or(u32::MAX));
        Ok(Self {
            device,
            queue,
            info,
            caps,
            max_binding,
            max_groups,
            max_storage,
            pre_tile: opts.pre_forward_tile,
            pre_split: opts.pre_forward_split,
            post_columns: opts.post_forward_columns,
            reduce_lanes: opts.max_reduce_lanes,
            shader_checks: opts.shader_checks,
            pipelines: PipelineCache::default(),
            scratch: Default::default(),
            timer: Default::default(),
            shared: state,
        })
    }

    /// The adapter's name, backend, device type and driver.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The optional features the kernels use on this device.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// The wgpu device, for a program that records its own work beside mhc's.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue mhc submits to.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The most bytes one tensor binding may span; larger tensors are split over tokens.
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding
    }

    pub(crate) fn max_workgroups_per_dimension(&self) -> u32 {
        self.max_groups
    }

    /// The most bytes of workgroup memory a kernel may use.
    pub(crate) fn max_workgroup_storage(&self) -> u32 {
        self.max_storage
    }

    pub(crate) fn pre_forward_tile(&self) -> Option<Tile> {
        self.pre_tile
    }

    pub(crate) fn pre_forward_split(&self) -> Option<PreSplit> {
        self.pre_split
    }

    pub(crate) fn post_forward_columns(&self) -> Option<u32> {
        self.post_columns
    }

    pub(crate) fn target(&self) -> Target {
        let sg_min = self.caps.subgroup_min_size.min(self.reduce_lanes.unwrap_or(u32::MAX));
        Target { subgroup: self.caps.subgroups, sg_min }
    }

    /// An error if the device was lost (driver reset, GPU removed).
    pub fn check_lost(&self) -> Result<()> {
        match &*self.shared.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(msg) => Err(Error::gpu("device lost", msg)),
            None => Ok(()),
        }
    }

    /// Runs `f` inside validation and out-of-memory error scopes: a wgpu error raised by what
    /// `f` records becomes an `Err` naming `what`, not a panic.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_lost()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let v = pollster::block_on(validation.pop());
        let o = pollster::block_on(oom.pop());
        if let Some(e) = o {
            return Err(Error::gpu(what, format!("out of GPU memory: {e}")));
        }
        if let Some(e) = v {
            return Err(Error::gpu(what, e));
        }
        self.check_lost()?;
        out
    }

    /// Blocks until all submitted work is done (an open [`batch`](Context::batch)'s calls
    /// so far included).
    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::gpu("wait", e))?;
        self.check_lost()
    }
}

/// A switch of [`ContextOptions`] from the environment: `MHC_COOP=1` (or 0),
/// `MHC_SHADER_CHECKS=1` (or 0); unset is off.
fn flag_from_env(name: &'static str) -> Result<bool> {
    match std::env::var(name).as_deref() {
        Err(_) | Ok("0") | Ok("") => Ok(false),
        Ok("1") => Ok(true),
        Ok(v) => Err(Error::param(name, format!("expected 0 or 1, got {v:?}"))),
    }
}

/// `MHC_PRE_SPLIT=splits,chunk_words,tokens_per_invocation,invocations` or `off`: see
/// [`ContextOptions::pre_forward_split`] (checked against the device when used). The layout
/// it forces keeps its partials split-major, also at decoding sizes, where the default layout
/// is token-major ([`SplitTile::split_major`]).
fn split_from_env() -> Result<Option<PreSplit>> {
    let Ok(v) = std::env::var("MHC_PRE_SPLIT") else { return Ok(None) };
    if v == "off" {
        return Ok(Some(PreSplit::Off));
    }
    let bad = || {
        Error::param(
            "MHC_PRE_SPLIT",
            format!("expected off or splits,chunk_words,tokens_per_invocation,invocations, got {v:?}"),
        )
    };
    let parts: Vec<u32> = v.split(',').map(|p| p.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?;
    match parts[..] {
        [splits, chunk_words, tokens_per_invocation, invocations] => Ok(Some(PreSplit::Tile(SplitTile {
            splits,
            chunk_words,
            tokens_per_invocation,
            invocations,
            split_major: true,
        }))),
        _ => Err(bad()),
    }
}

/// The columns an invocation of mhc_post forward may take, or an error naming `name`.
fn post_columns(name: &'static str, c: u32) -> Result<u32> {
    if [4, 8].contains(&c) { Ok(c) } else { Err(Error::param(name, format!("expected 4 or 8, got {c}"))) }
}

/// `MHC_POST_COLUMNS=4` or `8`: see [`ContextOptions::post_forward_columns`].
fn columns_from_env() -> Result<Option<u32>> {
    const VAR: &str = "MHC_POST_COLUMNS";
    match std::env::var(VAR).as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok(v) => {
            let c = v.parse().map_err(|_| Error::param(VAR, format!("expected 4 or 8, got {v:?}")))?;
            post_columns(VAR, c).map(Some)
        }
    }
}

/// `MHC_PRE_TILE=tb,tpl[,slices]`: tb tokens a row of invocations (a power of two up to 256),
/// tpl tokens an invocation (1 to 8), slices workgroups a tile's h_in (1 to 1024; default 1);
/// `main` walks h_in newest chunk first where the projection's layout allows.
fn tile_from_env() -> Result<Option<Tile>> {
    let Ok(v) = std::env::var("MHC_PRE_TILE") else { return Ok(None) };
    let bad = || {
        Error::param(
            "MHC_PRE_TILE",
            format!("expected tb,tpl[,slices] (tb a power of two <= 256, tpl 1..=8, slices 1..=1024), got {v:?}"),
        )
    };
    let parts: Vec<u32> = v.split(',').map(|p| p.trim().parse().map_err(|_| bad())).collect::<Result<_>>()?;
    let (tb, tpl, slices) = match parts[..] {
        [tb, tpl] => (tb, tpl, 1),
        [tb, tpl, slices] => (tb, tpl, slices),
        _ => return Err(bad()),
    };
    check_tile("MHC_PRE_TILE", Tile { tb, tpl, slices, newest_first: true }).map(Some).map_err(|_| bad())
}

/// `tile` where mhc_pre forward's `main` can take it: tb a power of two up to 256, tpl 1 to 8,
/// slices 1 to 1024 (else naga or the driver would refuse the kernel, with an error that names
/// no option).
fn check_tile(option: &str, tile: Tile) -> Result<Tile> {
    let Tile { tb, tpl, slices, .. } = tile;
    if tb.is_power_of_two() && tb <= 256 && (1..=8).contains(&tpl) && (1..=1024).contains(&slices) {
        Ok(tile)
    } else {
        Err(Error::param(
            option,
            format!("expected tb a power of two <= 256, tpl 1..=8 and slices 1..=1024, got {tb}, {tpl}, {slices}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use mhc_core::HostTensor;

    use super::{Context, ContextOptions};
    use crate::GpuTensor;

    /// Contexts on one adapter share its device, and dropping one leaves the device to the
    /// others (none is destroyed while the process runs).
    #[test]
    fn contexts_share_a_device_that_outlives_them() {
        let a = Context::new().expect("a wgpu adapter");
        let b = Context::with_options(ContextOptions { max_workgroup_storage: Some(16 << 10), ..Default::default() })
            .expect("a wgpu adapter");
        assert!(a.device() == b.device());
        drop(a);
        let host = HostTensor::from_f32(vec![3], vec![1.5, -2.0, 7.25]).unwrap();
        let back = GpuTensor::upload(&b, "x", &host).unwrap().read(&b).unwrap();
        assert_eq!(back.as_f32(), Some(&[1.5, -2.0, 7.25][..]));
        assert!(Context::new().expect("a wgpu adapter").device() == b.device());
    }

    /// Contexts find their adapter one thread at a time: NVIDIA's driver crashed when threads
    /// enumerated the shared instance's devices at once. While this thread holds the instance,
    /// a context made on another thread waits (its device already exists, so without the lock
    /// it would be made in milliseconds), then is made once the instance is free.
    #[test]
    fn contexts_wait_for_the_instance() {
        let first = Context::new().expect("a wgpu adapter");
        let held = super::instance();
        let other = std::thread::spawn(Context::new);
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!other.is_finished(), "a context was made while another thread held the instance");
        drop(held);
        let other = other.join().expect("the thread ran").expect("a wgpu adapter");
        assert!(other.device() == first.device());
    }
}
