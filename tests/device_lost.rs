//! A lost device (here destroyed by its owner, which wgpu reports through the same callback as
//! a driver reset) is an error in every context on it, not a panic or a silent no-op. In a
//! binary of its own: it makes its own instance and device, which no other test may share.

use mhc::core::{DType, Error};
use mhc::runtime::{Context, ContextOptions, GpuTensor, wgpu};

/// Two contexts on one caller's device (wgpu keeps one lost callback a device, so the second
/// must not silence the first), then the device destroyed.
#[test]
fn a_lost_device_is_an_error_in_every_context_on_it() {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default())).expect("an adapter");
    let desc = wgpu::DeviceDescriptor { required_limits: adapter.limits(), ..Default::default() };
    let (device, queue) = pollster::block_on(adapter.request_device(&desc)).expect("a device");
    let make = || Context::from_device(adapter.get_info(), device.clone(), queue.clone(), ContextOptions::default());
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
