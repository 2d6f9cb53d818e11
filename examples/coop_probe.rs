//! Probe: does an f16 cooperative-matrix projection make mhc_pre forward faster? Runs the
//! projection of mhc_pre forward (x [T, K] bf16 times phi^T, plus the sum of squares for the
//! RMS; `shaders/coop_probe.wgsl`) at the four bench shapes and prints its GPU time against
//! the time to read x at 4.2 TB/s (the H200's copy ceiling) and its error against an f64
//! reference on every 97th token. Needs an adapter with wgpu's experimental cooperative
//! matrices (f16 16x16x16), subgroups of 32 and timestamps; it is not part of the library.
//! Results on an H200: docs/PERFORMANCE.md. Run: `cargo run --release --example coop_probe`.
use mhc::runtime::wgpu;
use wgpu::util::DeviceExt;

const SRC: &str = include_str!("../shaders/coop_probe.wgsl");

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
        power_preference: wgpu::PowerPreference::HighPerformance,
        ..Default::default()
    }))?;
    println!("adapter {:?}", adapter.get_info().name);
    for p in adapter.cooperative_matrix_properties() {
        println!("  coop {p:?}");
    }
    let features = wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX
        | wgpu::Features::SHADER_F16
        | wgpu::Features::SUBGROUP
        | wgpu::Features::TIMESTAMP_QUERY;
    if !adapter.features().contains(features) {
        return Err(format!("{}: needs {:?}", adapter.get_info().name, features - adapter.features()).into());
    }
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: None,
        required_features: features,
        required_limits: adapter.limits(),
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
        ..Default::default()
    }))?;
    let copy_bw = 4.2e12;
    for &(t, k, ks) in &[
        (4096usize, 10240usize, 1usize),
        (4096, 10240, 8),
        (4096, 10240, 16),
        (8192, 10240, 8),
        (16384, 16384, 8),
        (8192, 28672, 14),
        (8192, 28672, 1),
    ] {
        let mut rng = Rng(0x9e3779b97f4a7c15 ^ (t * k) as u64);
        let xv: Vec<half::bf16> = (0..t * k).map(|_| half::bf16::from_f64(rng.f() * 4.0 - 2.0)).collect();
        let s = (3.0 / k as f64).sqrt();
        let phi: Vec<f32> = (0..24 * k).map(|_| ((rng.f() * 2.0 - 1.0) * s) as f32).collect();
        // phi scaled by 2^6 so that both f16 parts are normal numbers; the result is scaled back.
        let scale = 64.0f32;
        let mut hi = vec![half::f16::ZERO; 32 * k];
        let mut lo = vec![half::f16::ZERO; 32 * k];
        for i in 0..24 * k {
            let v = phi[i] * scale;
            hi[i] = half::f16::from_f32(v);
            lo[i] = half::f16::from_f32(v - hi[i].to_f32());
        }
        let buf = |data: &[u8], usage| {
            device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: None, contents: data, usage })
        };
        let st = wgpu::BufferUsages::STORAGE;
        let xb = buf(bytemuck::cast_slice(&xv), st);
        let hb = buf(bytemuck::cast_slice(&hi), st);
        let lb = buf(bytemuck::cast_slice(&lo), st);
        let ob = buf(&vec![0u8; ks * t * 32 * 4], st | wgpu::BufferUsages::COPY_SRC);
        let sb = buf(&vec![0u8; ks * t * 4], st | wgpu::BufferUsages::COPY_SRC);
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(
                SRC.replace("KVAL", &format!("{k}u"))
                    .replace("KSVAL", &format!("{ks}u"))
                    .replace("TVAL", &format!("{t}u"))
                    .into(),
            ),
        });
        let pipe = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipe.get_bind_group_layout(0),
            entries: &[&xb, &hb, &lb, &ob, &sb]
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
                .collect::<Vec<_>>(),
        });
        let runs = 300u32;
        let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: None,
            ty: wgpu::QueryType::Timestamp,
            count: 2 * runs,
        });
        let run = |q: Option<u32>| {
            let mut enc = device.create_command_encoder(&Default::default());
            {
                let tw = q.map(|i| wgpu::ComputePassTimestampWrites {
                    query_set: &qs,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                });
                let mut pass =
                    enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: tw });
                pass.set_pipeline(&pipe);
                pass.set_bind_group(0, &bg, &[]);
                pass.dispatch_workgroups((t / 64) as u32, ks as u32, 1);
            }
            queue.submit([enc.finish()]);
        };
        for _ in 0..2000 {
            run(None);
        }
        device.poll(wgpu::PollType::wait_indefinitely())?;
        for i in 0..runs {
            run(Some(i));
        }
        let rb = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16 * runs as u64,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = |src: &wgpu::Buffer, size: u64| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
            let dst = device.create_buffer(&wgpu::BufferDescriptor {
                label: None,
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = device.create_command_encoder(&Default::default());
            if std::ptr::eq(src, &rb) {
                enc.resolve_query_set(&qs, 0..2 * runs, &rb, 0);
            }
            enc.copy_buffer_to_buffer(src, 0, &dst, 0, size);
            queue.submit([enc.finish()]);
            dst.slice(..).map_async(wgpu::MapMode::Read, |_| {});
            device.poll(wgpu::PollType::wait_indefinitely())?;
            let v = dst.slice(..).get_mapped_range()?.to_vec();
            Ok(v)
        };
        let ticks: Vec<u64> = bytemuck::cast_slice(&read(&rb, 16 * runs as u64)?).to_vec();
        let period = queue.get_timestamp_period() as f64 * 1e-9;
        let mut ts: Vec<f64> = ticks.chunks(2).map(|p| (p[1] - p[0]) as f64 * period).collect();
        ts.sort_by(f64::total_cmp);
        let med = ts[ts.len() / 2];
        let floor = (t * k * 2) as f64 / copy_bw;
        let parts: Vec<f32> = bytemuck::cast_slice(&read(&ob, (ks * t * 32 * 4) as u64)?).to_vec();
        let sparts: Vec<f32> = bytemuck::cast_slice(&read(&sb, (ks * t * 4) as u64)?).to_vec();
        let out: Vec<f32> = (0..t * 32).map(|i| (0..ks).map(|s| parts[s * t * 32 + i]).sum()).collect();
        let ssq: Vec<f32> = (0..t).map(|i| (0..ks).map(|s| sparts[s * t + i]).sum()).collect();
        // Reference on a sample of tokens, f64.
        let (mut max_err, mut max_ref, mut ss_err) = (0.0f64, 0.0f64, 0.0f64);
        let (mut err2, mut ref2) = (0.0f64, 0.0f64);
        for tok in (0..t).step_by(97) {
            let xr = &xv[tok * k..(tok + 1) * k];
            let ss: f64 = xr.iter().map(|v| v.to_f64() * v.to_f64()).sum();
            ss_err = ss_err.max(((ssq[tok] as f64) - ss).abs() / ss);
            for m in 0..24 {
                let r: f64 = (0..k).map(|c| xr[c].to_f64() * phi[m * k + c] as f64).sum();
                let g = out[tok * 32 + m] as f64 / scale as f64;
                max_err = max_err.max((g - r).abs());
                max_ref = max_ref.max(r.abs());
                err2 += (g - r) * (g - r);
                ref2 += r * r;
            }
        }
        println!(
            "T={t} K={k} K splits {ks}: median {:.1} us (min {:.1}), read-x floor {:.1} us = {:.2}x; max err / max ref {:.2e}, norm err {:.2e}, sumsq rel err {:.2e}",
            med * 1e6,
            ts[0] * 1e6,
            floor * 1e6,
            med / floor,
            max_err / max_ref,
            (err2 / ref2).sqrt(),
            ss_err
        );
    }
    Ok(())
}
