//! Contexts on a device the caller made (`Context::from_device`): one whose limits are too low
//! for mhc's kernels is refused up front, and a lost device (here destroyed by its owner, which
//! wgpu reports through the same callback as a driver reset) is an error in every context on
//! it, not a panic or a silent no-op. In a binary of its own: each test makes its own instance
//! and device, one test at a time (NVIDIA's driver crashed when threads brought up devices at
//! once, docs/perf-history.md, seventeenth session).

use std::sync::Mutex;

use mhc::core::{DType, Error};
use mhc::runtime::{Context, ContextOptions, GpuTensor, wgpu};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The default adapter's device with `limits`.
fn device(limits: impl FnOnce(wgpu::Limits) -> wgpu::Limits) -> (wgpu::AdapterInfo, wgpu::Device, wgpu::Queue) {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).expect("an adapter");
    let desc = wgpu::DeviceDescriptor { required_limits: limits(adapter.limits()), ..Default::default() };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("a device");
    (adapter.get_info(), device, queue)
}

/// Every entry point's storage buffers must fit the device's limit a shader stage.
#[test]
fn a_device_with_too_few_storage_buffers_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let most = mhc::wgsl::MAX_STORAGE_BUFFERS;
    let (info, device, queue) = device(|l| wgpu::Limits { max_storage_buffers_per_shader_stage: most - 1, ..l });
    let err = Context::from_device(info, device, queue, ContextOptions::default()).err().expect("refused");
    assert!(err.to_string().contains(&format!("bind up to {most}")), "{err}");
}

/// Two contexts on one caller's device (wgpu keeps one lost callback a device, so the second
/// must not silence the first), then the device destroyed.
#[test]
fn a_lost_device_is_an_error_in_every_context_on_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (info, device, queue) = device(|l| l);
    let make = || Context::from_device(info.clone(), device.clone(), queue.clone(), ContextOptions::default());
    let (a, b) = (make().unwrap(), make().unwrap());
    for ctx in [&a, &b] {
        let t = GpuTensor::zeros(ctx, "before", &[5], DType::F32).unwrap();
        assert_eq!(t.read(ctx).unwrap().as_f32().unwrap(), &[0.0; 5]);
        ctx.check_lost().unwrap();
    }
    device.destroy();
    // wgpu reports the loss when the device is next polled.
    assert!(a.wait().is_err());
    for ctx in [&a, &b] {
        for err in [ctx.check_lost().unwrap_err(), GpuTensor::zeros(ctx, "after", &[5], DType::F32).unwrap_err()] {
            assert!(matches!(&err, Error::Gpu { .. }) && err.to_string().contains("device lost"), "{err}");
        }
    }
}
