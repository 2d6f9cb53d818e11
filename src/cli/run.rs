use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use mhc::core::{DType, Dims, HostTensor, Op, TensorMeta};
use mhc::exec::{Device, Named, Options, execute, random_inputs};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use super::{CliResult, DeviceArg, OpOptions, context, parse_op};

#[derive(Args)]
pub struct RunArgs {
    /// pre-forward, pre-backward, sinkhorn-forward, sinkhorn-backward, post-forward, post-backward
    #[arg(value_parser = parse_op)]
    op: Op,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    device: DeviceArg,
    #[command(flatten)]
    opts: OpOptions,
}

fn file_err(path: &Path, detail: impl std::fmt::Display) -> Box<dyn std::error::Error> {
    format!("{}: {detail}", path.display()).into()
}

/// The dtype `op` takes its input `name` in: that of the input it makes up itself.
fn expected_dtype(op: Op, name: &str) -> Option<DType> {
    let dims = Dims::new(1, 1, 1).ok()?;
    random_inputs(op, &dims, 0, &Options::default()).get(name).map(HostTensor::dtype)
}

/// Reads every tensor of a safetensors file of `op`'s inputs; bf16 and f32 only.
pub fn read_safetensors(path: &Path, op: Op) -> CliResult<Named> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    let st =
        SafeTensors::deserialize(&bytes).map_err(|e| file_err(path, format!("not a valid safetensors file: {e}")))?;
    let mut named = Named::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::BF16 => DType::BF16,
            Dtype::F32 => DType::F32,
            other => {
                let wanted = expected_dtype(op, &name).map_or_else(
                    || "bf16 or f32 expected".to_string(),
                    |d| format!("{} takes {name} as {d}", op.name()),
                );
                return Err(file_err(path, format!("{name}: dtype {other:?} is not supported ({wanted})")));
            }
        };
        let t = HostTensor::from_le_bytes(view.shape().to_vec(), dtype, view.data())
            .map_err(|e| file_err(path, format!("{name}: {e}")))?;
        named.insert(name, t);
    }
    Ok(named)
}

/// Writes `tensors` to `path` through a temporary file in the same folder, renamed at the end,
/// so a failure never leaves a partial file.
pub fn write_safetensors(path: &Path, tensors: &[(&str, HostTensor)]) -> CliResult<()> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            let dtype = match t.dtype() {
                DType::BF16 => Dtype::BF16,
                DType::F32 => Dtype::F32,
            };
            Ok((*name, TensorView::new(dtype, t.shape().to_vec(), t.as_le_bytes())?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()
        .map_err(|e| file_err(path, e))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| file_err(path, e))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| file_err(path, format!("cannot write: {e}")))?;
    tmp.write_all(&bytes).map_err(|e| file_err(path, format!("cannot write: {e}")))?;
    tmp.persist(path).map_err(|e| file_err(path, format!("cannot write: {}", e.error)))?;
    Ok(())
}

pub fn run(a: RunArgs) -> CliResult<ExitCode> {
    let inputs = read_safetensors(&a.input, a.op)?;
    let ctx = if a.device == DeviceArg::Gpu { Some(context()?) } else { None };
    let device = ctx.as_ref().map_or(Device::Cpu, Device::Gpu);
    let outputs = execute(a.op, device, &inputs, &a.opts.options()).map_err(|e| file_err(&a.input, e))?;
    write_safetensors(&a.output, &outputs)?;
    Ok(ExitCode::SUCCESS)
}
