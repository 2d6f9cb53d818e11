//! The `mhc` binary end to end: `mhc run` on safetensors files written here, on both devices and
//! for every operator, against the f64 reference; every error path of `mhc run` (one line on
//! stderr, non-zero exit, no output file left); `mhc check --quick`; `mhc bench --json`;
//! `mhc info`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use half::{bf16, f16};
use mhc::core::random::seed_from_env;
use mhc::core::{DType, Dims, HostTensor, Op, PreParams, SinkhornParams, TensorMeta};
use mhc::exec::{Named, Options, random_inputs, reference};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tempfile::TempDir;

const DEVICES: [&str; 2] = ["cpu", "gpu"];

/// Runs the binary; `MHC_SEED` is passed on so that `check` and `bench` replay with the test.
fn mhc<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mhc"))
        .args(args)
        .env("XDG_RUNTIME_DIR", "/tmp")
        .env("MHC_SEED", seed().to_string())
        .output()
        .expect("the mhc binary starts")
}

fn seed() -> u64 {
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SEED.get_or_init(seed_from_env)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(args: &[String], out: &Output) -> String {
    format!(
        "mhc {} (MHC_SEED={})\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        seed(),
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn succeed(args: &[String]) -> Output {
    let out = mhc(args);
    assert!(out.status.success(), "expected success: {}", describe(args, &out));
    out
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

/// A tensor as stored in a file: any safetensors dtype, any shape, any bytes.
#[derive(Clone)]
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

type RawFile = BTreeMap<String, Raw>;

fn raw_tensor(t: &HostTensor) -> Raw {
    let dtype = match t.dtype() {
        DType::BF16 => Dtype::BF16,
        DType::F32 => Dtype::F32,
    };
    Raw { dtype, shape: t.shape().to_vec(), bytes: t.as_le_bytes().to_vec() }
}

fn raw_file(named: &Named) -> RawFile {
    named.iter().map(|(name, t)| (name.clone(), raw_tensor(t))).collect()
}

fn serialize(tensors: &RawFile) -> Vec<u8> {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, r)| (name.as_str(), TensorView::new(r.dtype, r.shape.clone(), &r.bytes).expect("valid view")))
        .collect();
    safetensors::serialize(views, None).expect("serializable")
}

fn write_file(path: &Path, tensors: &RawFile) {
    fs::write(path, serialize(tensors)).expect("write input file");
}

fn read_file(path: &Path) -> Named {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let dtype = match v.dtype() {
                Dtype::BF16 => DType::BF16,
                Dtype::F32 => DType::F32,
                other => panic!("{name}: output of dtype {other:?}"),
            };
            let t = HostTensor::from_le_bytes(v.shape().to_vec(), dtype, v.data()).expect("consistent tensor");
            (name, t)
        })
        .collect()
}

/// SPEC.md section 6: each output's name, shape (leading dims of `x` kept) and dtype.
fn expected_outputs(op: Op, lead: &[usize], n: usize, d: usize) -> Vec<(&'static str, Vec<usize>, DType)> {
    use DType::{BF16, F32};
    let per_token = |tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
    let m = n * n + 2 * n;
    match op {
        Op::PreForward => vec![
            ("h_in", per_token(&[d]), BF16),
            ("h_post", per_token(&[n]), F32),
            ("h_res", per_token(&[n, n]), F32),
            ("inv_rms", per_token(&[]), F32),
            ("h_mix", per_token(&[m]), F32),
            ("h_pre", per_token(&[n]), F32),
        ],
        Op::PreBackward => vec![
            ("dx", per_token(&[n, d]), BF16),
            ("dphi", vec![m, n * d], F32),
            ("dalpha", vec![3], F32),
            ("dbias", vec![m], F32),
            ("dgamma", vec![n, d], F32),
        ],
        Op::SinkhornForward => vec![("out", per_token(&[n, n]), F32)],
        Op::SinkhornBackward => vec![("d_logits", per_token(&[n, n]), F32)],
        Op::PostForward => vec![("out", per_token(&[n, d]), BF16)],
        Op::PostBackward => vec![
            ("dx", per_token(&[d]), BF16),
            ("dresidual", per_token(&[n, d]), BF16),
            ("dpost_layer_mix", per_token(&[n]), F32),
            ("dcomb_res_mix", per_token(&[n, n]), F32),
        ],
    }
}

/// The options as `mhc run` flags.
fn flags(o: &Options) -> Vec<String> {
    [
        ("--norm-eps", o.pre.norm_eps.to_string()),
        ("--hc-eps", o.pre.hc_eps.to_string()),
        ("--post-mult", o.pre.post_mult.to_string()),
        ("--sinkhorn-iters", o.sinkhorn.iters.to_string()),
        ("--sinkhorn-eps", o.sinkhorn.eps.to_string()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v])
    .collect()
}

/// Writes `inputs` to a file named after `stem`, runs `mhc run` on `device` (with `extra`
/// flags), checks that the outputs are exactly `expected` (names, shapes, dtypes) and that each
/// is within its tolerance of the f64 reference at `opts`. Returns the outputs.
fn run_and_check(
    stem: &Path,
    op: Op,
    device: &str,
    inputs: &Named,
    extra: &[String],
    opts: &Options,
    expected: &[(&str, Vec<usize>, DType)],
) -> Named {
    let stem = format!("{}-{}-{device}", stem.display(), op.name());
    let (input, output) =
        (PathBuf::from(format!("{stem}-in.safetensors")), PathBuf::from(format!("{stem}-out.safetensors")));
    write_file(&input, &raw_file(inputs));
    let mut args: Vec<String> = ["run", op.name(), "--device", device, "--input"].map(String::from).to_vec();
    args.extend([path_str(&input), "--output".into(), path_str(&output)]);
    args.extend_from_slice(extra);
    let out = succeed(&args);
    let ctx = describe(&args, &out);
    let outs = read_file(&output);
    let names: BTreeSet<&str> = outs.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = expected.iter().map(|e| e.0).collect();
    assert_eq!(names, want, "output names of {ctx}");
    let spec: BTreeSet<&str> = op.outputs().iter().copied().collect();
    assert_eq!(names, spec, "output names against Op::outputs: {ctx}");
    for (name, shape, dtype) in expected {
        let t = &outs[*name];
        assert_eq!(t.shape(), &shape[..], "shape of {name}: {ctx}");
        assert_eq!(t.dtype(), *dtype, "dtype of {name}: {ctx}");
    }
    let refs = reference(op, inputs, opts).expect("reference");
    assert_eq!(refs.len(), expected.len());
    for r in &refs {
        let name = r.name;
        let c = r.compare(&outs[name]);
        assert!(
            c.passed(),
            "{name} of {} on {device}: {:?}; max err {:.3e}, norm err {:.3e}\n{ctx}",
            op.name(),
            c.failure,
            c.max_err_of_max,
            c.norm_err
        );
    }
    outs
}

/// Every operator through files, leading dims [B, S] and odd D included.
fn round_trip(device: &str) {
    let dir = TempDir::new().unwrap();
    let opts = Options::default();
    // [B, S, n, D] with odd D; flat tokens with a single stream; flat tokens at a wider D.
    let shapes: [(Vec<usize>, usize, usize); 3] = [(vec![2, 3], 4, 5), (vec![5], 1, 3), (vec![3], 8, 33)];
    for (i, (lead, n, d)) in shapes.iter().enumerate() {
        let dims = Dims::with_lead(lead.clone(), *n, *d).unwrap();
        for (j, op) in Op::ALL.into_iter().enumerate() {
            let inputs = random_inputs(op, &dims, seed() ^ (i * 16 + j) as u64, &opts);
            let expected = expected_outputs(op, lead, *n, *d);
            run_and_check(&dir.path().join(format!("s{i}")), op, device, &inputs, &[], &opts, &expected);
        }
    }
}

#[test]
fn expected_shapes_keep_leading_dims() {
    // The table the round trips check against, spelt out for x of shape [2, 3, 4, 5].
    let shapes = |op| -> Vec<(&str, Vec<usize>)> {
        expected_outputs(op, &[2, 3], 4, 5).into_iter().map(|(n, s, _)| (n, s)).collect()
    };
    let v = |s: &[usize]| s.to_vec();
    assert_eq!(
        shapes(Op::PreForward),
        [
            ("h_in", v(&[2, 3, 5])),
            ("h_post", v(&[2, 3, 4])),
            ("h_res", v(&[2, 3, 4, 4])),
            ("inv_rms", v(&[2, 3])),
            ("h_mix", v(&[2, 3, 24])),
            ("h_pre", v(&[2, 3, 4]))
        ]
    );
    assert_eq!(
        shapes(Op::PreBackward),
        [
            ("dx", v(&[2, 3, 4, 5])),
            ("dphi", v(&[24, 20])),
            ("dalpha", v(&[3])),
            ("dbias", v(&[24])),
            ("dgamma", v(&[4, 5]))
        ]
    );
    assert_eq!(shapes(Op::SinkhornForward), [("out", v(&[2, 3, 4, 4]))]);
    assert_eq!(shapes(Op::SinkhornBackward), [("d_logits", v(&[2, 3, 4, 4]))]);
    assert_eq!(shapes(Op::PostForward), [("out", v(&[2, 3, 4, 5]))]);
    assert_eq!(
        shapes(Op::PostBackward),
        [
            ("dx", v(&[2, 3, 5])),
            ("dresidual", v(&[2, 3, 4, 5])),
            ("dpost_layer_mix", v(&[2, 3, 4])),
            ("dcomb_res_mix", v(&[2, 3, 4, 4]))
        ]
    );
}

#[test]
fn run_matches_reference_on_cpu() {
    round_trip("cpu");
}

#[test]
fn run_matches_reference_on_gpu() {
    round_trip("gpu");
}

/// Per-token inputs may come flattened or with a trailing 1 (post_layer_mix `[..., n, 1]`);
/// outputs still take the leading dims of `x` (and dpost_layer_mix the shape of its input).
#[test]
fn run_accepts_other_per_token_layouts() {
    let dir = TempDir::new().unwrap();
    let opts = Options::default();
    let dims = Dims::with_lead(vec![2, 3], 4, 5).unwrap();
    let (t, n, m) = (dims.t, dims.n, dims.m());
    for device in DEVICES {
        let mut pre = random_inputs(Op::PreBackward, &dims, seed() ^ 0x70, &opts);
        pre.remove("gamma");
        for (name, flat) in
            [("inv_rms", vec![t]), ("h_mix", vec![t, m]), ("dh_post", vec![t, n]), ("dh_in", vec![t, 5])]
        {
            let v = pre.remove(name).unwrap();
            pre.insert(name.into(), v.reshaped(flat).unwrap());
        }
        let expected = expected_outputs(Op::PreBackward, &[2, 3], 4, 5);
        run_and_check(&dir.path().join("flat"), Op::PreBackward, device, &pre, &[], &opts, &expected);

        let mut post = random_inputs(Op::PostBackward, &dims, seed() ^ 0x71, &opts);
        let plm = post.remove("post_layer_mix").unwrap();
        post.insert("post_layer_mix".into(), plm.reshaped([2, 3, 4, 1]).unwrap());
        let mut expected = expected_outputs(Op::PostBackward, &[2, 3], 4, 5);
        expected[2].1 = vec![2, 3, 4, 1];
        run_and_check(&dir.path().join("plm1"), Op::PostBackward, device, &post, &[], &opts, &expected);
        let expected = expected_outputs(Op::PostForward, &[2, 3], 4, 5);
        post.remove("d_out");
        run_and_check(&dir.path().join("plm1"), Op::PostForward, device, &post, &[], &opts, &expected);
    }
}

/// Every option flag reaches the operator: the outputs match the reference at those options and
/// not the reference at the defaults.
#[test]
fn run_honours_options() {
    let dir = TempDir::new().unwrap();
    let opts = Options {
        pre: PreParams { norm_eps: 1e-3, hc_eps: 1e-2, post_mult: 1.0 },
        sinkhorn: SinkhornParams { iters: 5, eps: 1e-3 },
    };
    let extra = flags(&opts);
    let dims = Dims::with_lead(vec![2, 3], 4, 5).unwrap();
    for device in DEVICES {
        for op in [Op::PreForward, Op::PreBackward, Op::SinkhornForward, Op::SinkhornBackward] {
            let inputs = random_inputs(op, &dims, seed() ^ 0x80, &opts);
            let expected = expected_outputs(op, &[2, 3], 4, 5);
            let outs = run_and_check(&dir.path().join("opts"), op, device, &inputs, &extra, &opts, &expected);
            let defaults = reference(op, &inputs, &Options::default()).unwrap();
            assert!(
                defaults.iter().any(|r| !r.compare(&outs[r.name]).passed()),
                "{} on {device}: outputs also match the default options; were {extra:?} ignored?",
                op.name()
            );
        }
    }
    // Each option on its own changes what it should.
    type Set = fn(&mut Options);
    let cases: [(&str, &str, Set, Op, &str); 5] = [
        ("--post-mult", "1.0", |o| o.pre.post_mult = 1.0, Op::PreForward, "h_post"),
        ("--hc-eps", "0.1", |o| o.pre.hc_eps = 0.1, Op::PreForward, "h_pre"),
        ("--norm-eps", "10", |o| o.pre.norm_eps = 10.0, Op::PreForward, "inv_rms"),
        ("--sinkhorn-iters", "1", |o| o.sinkhorn.iters = 1, Op::SinkhornForward, "out"),
        ("--sinkhorn-eps", "0.5", |o| o.sinkhorn.eps = 0.5, Op::SinkhornForward, "out"),
    ];
    for (flag, value, set, op, output) in cases {
        let inputs = random_inputs(op, &dims, seed() ^ 0x81, &Options::default());
        let expected = expected_outputs(op, &[2, 3], 4, 5);
        let mut o = Options::default();
        set(&mut o);
        let extra = [flag.to_string(), value.to_string()];
        let outs = run_and_check(&dir.path().join(&flag[2..]), op, "gpu", &inputs, &extra, &o, &expected);
        let r = reference(op, &inputs, &Options::default()).unwrap().into_iter().find(|r| r.name == output).unwrap();
        assert!(!r.compare(&outs[output]).passed(), "{flag} {value} did not change {output}");
    }
}

/// Runs a command that must fail: a non-zero exit, exactly one line on stderr (`mhc: ...`)
/// holding every needle (case-insensitive), and nothing left in `out_dir`. Returns stderr.
fn expect_failure(args: &[String], out_dir: &Path, needles: &[&str]) -> String {
    let before: BTreeSet<PathBuf> = fs::read_dir(out_dir).unwrap().map(|e| e.unwrap().path()).collect();
    let out = mhc(args);
    let ctx = describe(args, &out);
    assert!(!out.status.success(), "expected failure: {ctx}");
    assert_ne!(out.status.code(), Some(0), "{ctx}");
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected a one-line message: {ctx}");
    assert!(lines[0].starts_with("mhc: "), "{ctx}");
    for needle in needles {
        assert!(err.to_lowercase().contains(&needle.to_lowercase()), "stderr should name {needle:?}: {ctx}");
    }
    let after: BTreeSet<PathBuf> = fs::read_dir(out_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(before, after, "files appeared or vanished in the output folder: {ctx}");
    err
}

/// `word` appears in `s` not as part of a longer identifier.
fn names(s: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    s.match_indices(word).any(|(i, _)| {
        !s[..i].chars().next_back().is_some_and(ident) && !s[i + word.len()..].chars().next().is_some_and(ident)
    })
}

fn run_args(op: &str, input: &Path, output: &Path, device: &str) -> Vec<String> {
    ["run", op, "--input", &path_str(input), "--output", &path_str(output), "--device", device]
        .map(String::from)
        .to_vec()
}

fn with(mut f: RawFile, name: &str, r: Raw) -> RawFile {
    f.insert(name.into(), r);
    f
}

fn without(mut f: RawFile, name: &str) -> RawFile {
    f.remove(name).unwrap_or_else(|| panic!("{name} in the file"));
    f
}

fn f32_values(r: &Raw) -> Vec<f32> {
    assert_eq!(r.dtype, Dtype::F32);
    r.bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn as_bf16(r: &Raw) -> Raw {
    let bytes = f32_values(r).into_iter().flat_map(|v| bf16::from_f32(v).to_le_bytes()).collect();
    Raw { dtype: Dtype::BF16, shape: r.shape.clone(), bytes }
}

fn as_f16(r: &Raw) -> Raw {
    let bytes = f32_values(r).into_iter().flat_map(|v| f16::from_f32(v).to_le_bytes()).collect();
    Raw { dtype: Dtype::F16, shape: r.shape.clone(), bytes }
}

fn bf16_as_f32(r: &Raw) -> Raw {
    assert_eq!(r.dtype, Dtype::BF16);
    let bytes =
        r.bytes.chunks_exact(2).flat_map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect();
    Raw { dtype: Dtype::F32, shape: r.shape.clone(), bytes }
}

fn zeros_f32(shape: &[usize]) -> Raw {
    Raw { dtype: Dtype::F32, shape: shape.to_vec(), bytes: vec![0; shape.iter().product::<usize>() * 4] }
}

/// Files whose tensors do not fit: each names the tensor and what was expected, on both devices.
#[test]
fn run_rejects_bad_tensors() {
    let dir = TempDir::new().unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let opts = Options::default();
    let dims = Dims::with_lead(vec![2, 3], 4, 5).unwrap();
    let input = |op| raw_file(&random_inputs(op, &dims, seed() ^ 0x90, &opts));
    let pre = input(Op::PreForward);
    let pre_bwd = input(Op::PreBackward);
    let post = input(Op::PostForward);
    let sk_bwd = input(Op::SinkhornBackward);
    type Case<'a> = (&'a str, &'a str, RawFile, Vec<&'a str>);
    let cases: Vec<Case<'_>> = vec![
        ("phi-bf16", "pre-forward", with(pre.clone(), "phi", as_bf16(&pre["phi"])), vec!["phi", "f32", "bf16"]),
        (
            "phi-f16",
            "pre-forward",
            with(pre.clone(), "phi", as_f16(&pre["phi"])),
            vec!["phi", "F16", "pre-forward takes phi as f32"],
        ),
        (
            "x-f16",
            "pre-forward",
            with(pre.clone(), "x", as_f16(&bf16_as_f32(&pre["x"]))),
            vec!["x", "F16", "pre-forward takes x as bf16"],
        ),
        ("x-f32", "pre-forward", with(pre.clone(), "x", bf16_as_f32(&pre["x"])), vec!["x", "bf16", "f32"]),
        (
            "inv_rms-bf16",
            "pre-backward",
            with(pre_bwd.clone(), "inv_rms", as_bf16(&pre_bwd["inv_rms"])),
            vec!["inv_rms", "f32", "bf16"],
        ),
        (
            "phi-shape",
            "pre-forward",
            with(pre.clone(), "phi", zeros_f32(&[24, 21])),
            vec!["phi", "[24, 20]", "[24, 21]"],
        ),
        (
            "gamma-shape",
            "pre-forward",
            with(pre.clone(), "gamma", zeros_f32(&[5, 4])),
            vec!["gamma", "[4, 5]", "[5, 4]"],
        ),
        (
            "comb-tokens",
            "post-forward",
            with(post.clone(), "comb_res_mix", zeros_f32(&[2, 2, 4, 4])),
            vec!["comb_res_mix", "6 tokens", "[2, 2, 4, 4]"],
        ),
        (
            "logits-not-square",
            "sinkhorn-backward",
            with(sk_bwd.clone(), "logits", zeros_f32(&[2, 3, 4, 3])),
            vec!["logits", "[..., n, n]", "[2, 3, 4, 3]"],
        ),
        (
            "d_out-shape",
            "sinkhorn-backward",
            with(sk_bwd.clone(), "d_out", zeros_f32(&[2, 3, 3, 3])),
            vec!["d_out", "[..., 4, 4]", "[2, 3, 3, 3]"],
        ),
        ("no-bias", "pre-forward", without(pre.clone(), "bias"), vec!["bias", "missing"]),
        ("no-dh_res", "pre-backward", without(pre_bwd.clone(), "dh_res"), vec!["dh_res", "missing"]),
        ("no-d_out", "sinkhorn-backward", without(sk_bwd.clone(), "d_out"), vec!["d_out", "missing"]),
        ("gama", "pre-forward", with(without(pre.clone(), "gamma"), "gama", pre["gamma"].clone()), vec!["gama"]),
        // A sinkhorn-backward file given to sinkhorn-forward: d_out is not its input.
        ("extra-d_out", "sinkhorn-forward", sk_bwd.clone(), vec!["d_out", "sinkhorn-forward"]),
        ("empty", "post-forward", RawFile::new(), vec!["missing"]),
    ];
    for device in DEVICES {
        for (what, op, file, needles) in &cases {
            let input = dir.path().join(format!("{what}.safetensors"));
            write_file(&input, file);
            let output = out_dir.join(format!("{what}.safetensors"));
            let err = expect_failure(&run_args(op, &input, &output, device), &out_dir, needles);
            // The tensor is named as a word, not just as part of the file name or another tensor.
            assert!(names(&err, needles[0]), "{what} on {device}: {err}");
            assert!(!output.exists());
        }
    }
    // Options out of range are refused the same way.
    for device in DEVICES {
        for (flag, op, file, name) in [
            ("--hc-eps=1.5", "pre-forward", &pre, "hc_eps"),
            ("--norm-eps=-1", "pre-forward", &pre, "norm_eps"),
            ("--post-mult=0", "pre-backward", &pre_bwd, "post_mult"),
            ("--sinkhorn-iters=0", "sinkhorn-backward", &sk_bwd, "sinkhorn_iters"),
            ("--sinkhorn-eps=-1", "sinkhorn-backward", &sk_bwd, "sinkhorn_eps"),
        ] {
            let input = dir.path().join(format!("{op}.safetensors"));
            write_file(&input, file);
            let mut args = run_args(op, &input, &out_dir.join("opt.safetensors"), device);
            args.push(flag.to_string());
            expect_failure(&args, &out_dir, &[name]);
        }
    }
}

/// Files that cannot be read, unknown operators and unwritable outputs.
#[test]
fn run_rejects_bad_files_and_arguments() {
    let dir = TempDir::new().unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let output = out_dir.join("out.safetensors");
    let good = serialize(&raw_file(&random_inputs(
        Op::PostForward,
        &Dims::with_lead(vec![2, 3], 4, 5).unwrap(),
        seed(),
        &Options::default(),
    )));

    let missing = dir.path().join("no-such-file.safetensors");
    expect_failure(&run_args("post-forward", &missing, &output, "cpu"), &out_dir, &[&path_str(&missing)]);

    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    for (what, bytes) in [
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("empty", Vec::new()),
        ("short", good[..5].to_vec()),
        ("truncated-header", good[..8 + header_len / 2].to_vec()),
        ("truncated-data", good[..good.len() - 7].to_vec()),
        ("trailing-garbage", [&good[..], b"xyz"].concat()),
    ] {
        let input = dir.path().join(format!("{what}.safetensors"));
        fs::write(&input, bytes).unwrap();
        for device in DEVICES {
            expect_failure(&run_args("post-forward", &input, &output, device), &out_dir, &[&path_str(&input)]);
        }
    }

    // A folder is not a file.
    expect_failure(&run_args("post-forward", dir.path(), &output, "cpu"), &out_dir, &[&path_str(dir.path())]);

    let input = dir.path().join("good.safetensors");
    fs::write(&input, &good).unwrap();
    let mut needles = vec!["pre-fwd"];
    needles.extend(Op::ALL.iter().map(|op| op.name()));
    expect_failure(&run_args("pre-fwd", &input, &output, "cpu"), &out_dir, &needles);

    // An output folder that does not exist: the output path is named and nothing is written.
    let nowhere = dir.path().join("no-such-dir").join("out.safetensors");
    for device in DEVICES {
        expect_failure(&run_args("post-forward", &input, &nowhere, device), &out_dir, &[&path_str(&nowhere)]);
    }
    assert!(!nowhere.parent().unwrap().exists());

    // A missing flag is a one-line message too.
    let args: Vec<String> = ["run", "post-forward", "--output", &path_str(&output)].map(String::from).to_vec();
    expect_failure(&args, &out_dir, &["--input"]);
    let args: Vec<String> = ["bench", "--iters", "0"].map(String::from).to_vec();
    expect_failure(&args, &out_dir, &["--iters"]);
    // More runs than one query set times, and a shape past any device's buffers (refused
    // before its host data would fill the host's memory).
    let args: Vec<String> = ["bench", "--iters", "410", "--stages"].map(String::from).to_vec();
    expect_failure(&args, &out_dir, &["--iters", "409"]);
    let args: Vec<String> = ["bench", "--shape", "100000000,8,4096"].map(String::from).to_vec();
    expect_failure(&args, &out_dir, &["--shape 100000000,8,4096"]);
    let args: Vec<String> = ["bench", "--shape", "4,4"].map(String::from).to_vec();
    expect_failure(&args, &out_dir, &["4,4"]);
    let args: Vec<String> = ["bench", "--op", "post"].map(String::from).to_vec();
    expect_failure(&args, &out_dir, &["post", "post-forward"]);
}

/// A run that fails leaves an existing output file as it was.
#[test]
fn failed_run_keeps_old_output() {
    let dir = TempDir::new().unwrap();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let output = out_dir.join("out.safetensors");
    let old = b"the previous run's output".to_vec();
    fs::write(&output, &old).unwrap();
    let dims = Dims::with_lead(vec![2, 3], 4, 5).unwrap();
    let pre = raw_file(&random_inputs(Op::PreForward, &dims, seed(), &Options::default()));
    let bad = dir.path().join("bad.safetensors");
    write_file(&bad, &with(pre.clone(), "phi", zeros_f32(&[3, 3])));
    let garbage = dir.path().join("garbage.safetensors");
    fs::write(&garbage, b"garbage").unwrap();
    let good = dir.path().join("good.safetensors");
    write_file(&good, &pre);
    for device in DEVICES {
        for args in [
            run_args("pre-forward", &bad, &output, device),
            run_args("pre-forward", &garbage, &output, device),
            run_args("pre-forward", &dir.path().join("missing.safetensors"), &output, device),
            run_args("post-forward", &good, &output, device),
        ] {
            expect_failure(&args, &out_dir, &[]);
            assert_eq!(fs::read(&output).unwrap(), old, "{args:?} touched the old output");
        }
    }
    // And a run that succeeds replaces it.
    succeed(&run_args("pre-forward", &good, &output, "cpu"));
    assert_eq!(read_file(&output).len(), 6);
}

#[test]
fn check_quick_passes() {
    for device in DEVICES {
        let args: Vec<String> = ["check", "--quick", "--device", device].map(String::from).to_vec();
        let out = succeed(&args);
        let ctx = describe(&args, &out);
        let stdout = text(&out.stdout);
        assert!(stdout.lines().any(|l| l.trim() == "all outputs PASS"), "{ctx}");
        assert!(!stdout.contains("FAIL"), "{ctx}");
        // Every output of every operator has a passing row.
        for op in Op::ALL {
            for output in op.outputs() {
                assert!(
                    stdout.lines().any(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        w.first() == Some(&op.name()) && w.get(2) == Some(output) && w.last() == Some(&"PASS")
                    }),
                    "no PASS row for {} {output}: {ctx}",
                    op.name()
                );
            }
        }
    }
}

/// The tuning variables: a valid value is used (`mhc check` still passes), a malformed one is
/// an error naming the variable and what it expects.
#[test]
fn tuning_variables_are_used_or_refused() {
    let check = |var: &str, value: &str| {
        Command::new(env!("CARGO_BIN_EXE_mhc"))
            .args(["check", "--quick"])
            .env("XDG_RUNTIME_DIR", "/tmp")
            .env("MHC_SEED", seed().to_string())
            .env(var, value)
            .output()
            .expect("the mhc binary starts")
    };
    for (var, value) in [
        ("MHC_PRE_SPLIT", "off"),
        ("MHC_PRE_SPLIT", "3,2,2,64"),
        ("MHC_PRE_TILE", "16,2"),
        ("MHC_PRE_TILE", "16,2,3"),
        ("MHC_POST_COLUMNS", "8"),
    ] {
        let out = check(var, value);
        let ctx = format!("{var}={value}\nstdout:\n{}\nstderr:\n{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{ctx}");
        assert!(text(&out.stdout).lines().any(|l| l.trim() == "all outputs PASS"), "{ctx}");
    }
    for (var, value, expected) in [
        ("MHC_PRE_SPLIT", "on", "splits,chunk_words,tokens_per_invocation,invocations"),
        ("MHC_PRE_SPLIT", "3,2,2", "splits,chunk_words,tokens_per_invocation,invocations"),
        ("MHC_PRE_TILE", "3,2", "tb,tpl"),
        ("MHC_PRE_TILE", "16,2,0", "tb,tpl[,slices]"),
        ("MHC_POST_COLUMNS", "16", "4 or 8"),
    ] {
        let out = check(var, value);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(err.contains(var) && err.contains(expected), "{var}={value}: {err}");
    }
}

const BENCH_ROWS: [&str; 7] = [
    "pre-forward",
    "pre-forward+sinkhorn",
    "pre-backward",
    "sinkhorn-forward",
    "sinkhorn-backward",
    "post-forward",
    "post-backward",
];

/// Checks one row of `mhc bench --json` against the document's ceilings and `Op::cost`.
fn check_bench_row(row: &serde_json::Value, doc: &serde_json::Value, ctx: &str) -> (String, [usize; 3]) {
    let num = |k: &str| row[k].as_f64().unwrap_or_else(|| panic!("{k} of {row}: {ctx}"));
    let int = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} of {row}: {ctx}"));
    let op = row["op"].as_str().unwrap_or_else(|| panic!("op of {row}")).to_string();
    assert!(BENCH_ROWS.contains(&op.as_str()), "{op}: {ctx}");
    let (t, n, d) = (int("T") as usize, int("n") as usize, int("D") as usize);
    let us = num("us");
    assert!(us.is_finite() && us > 0.0, "us of {row}");
    let runs: Vec<f64> = row["runs_us"]
        .as_array()
        .unwrap_or_else(|| panic!("runs_us of {row}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(runs.len() as u64, doc["iters"].as_u64().unwrap(), "{row}");
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    assert!((sorted[sorted.len() / 2] - us).abs() <= 0.05 + 1e-6 * us, "us {us} is not the median of {runs:?}");
    let sets = int("timed_sets");
    let slow = row["slow_start"].as_bool().unwrap_or_else(|| panic!("slow_start of {row}"));
    assert!((1..=3).contains(&sets) && (!slow || sets == 3), "a set that starts slow is timed again, up to 3: {row}");
    let (bytes, flops) = (int("bytes"), int("flops"));
    assert!(bytes > 0 && flops > 0, "{row}");
    let dims = Dims::new(t, n, d).unwrap();
    let iters = SinkhornParams::default().iters;
    let cost = match Op::from_name(&op) {
        Some(o) => o.cost(&dims, iters),
        None => {
            let (p, s) = (Op::PreForward.cost(&dims, iters), Op::SinkhornForward.cost(&dims, iters));
            mhc::core::Cost { bytes: p.bytes + (t * n * n * 4) as u64, flops: p.flops + s.flops }
        }
    };
    assert_eq!((bytes, flops), (cost.bytes, cost.flops), "{row}");
    let mem = bytes as f64 / doc["copy_bytes_per_s"].as_f64().unwrap();
    let fma = flops as f64 / doc["fma_flops_per_s"].as_f64().unwrap();
    let x_floor = num("x_floor");
    let want = us * 1e-6 / mem.max(fma);
    assert!((x_floor - want).abs() <= 1e-9 * want, "x_floor {x_floor}, expected {want}: {row}");
    let bound = row["bound"].as_str().unwrap_or_else(|| panic!("bound of {row}"));
    assert!(["memory", "arithmetic"].contains(&bound), "{row}");
    assert_eq!(bound == "memory", mem >= fma, "{row}");
    (op, [t, n, d])
}

fn read_json(path: &Path, ctx: &str) -> serde_json::Value {
    let s = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}: {ctx}", path.display()));
    let doc: serde_json::Value = serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad JSON {e}: {s}"));
    let device = doc["device"].as_str().unwrap_or_else(|| panic!("device: {doc}"));
    assert!(!device.is_empty());
    for k in ["copy_bytes_per_s", "fma_flops_per_s"] {
        let v = doc[k].as_f64().unwrap_or_else(|| panic!("{k}: {doc}"));
        assert!(v.is_finite() && v > 0.0, "{k} = {v}");
    }
    doc
}

/// `mhc bench` with `flags`, writing its JSON to `json`.
fn bench_args(flags: &[&str], json: &Path) -> Vec<String> {
    ["bench"].iter().chain(flags).map(|s| s.to_string()).chain(["--json".to_string(), path_str(json)]).collect()
}

/// Runs `args` (from [`bench_args`]), which must succeed: its stdout, its description for
/// messages, and the JSON it wrote to `json`.
fn bench_doc(args: &[String], json: &Path) -> (String, String, serde_json::Value) {
    let out = succeed(args);
    let ctx = describe(args, &out);
    let doc = read_json(json, &ctx);
    (text(&out.stdout), ctx, doc)
}

#[test]
fn bench_writes_json() {
    let dir = TempDir::new().unwrap();
    let json = dir.path().join("bench.json");
    let args = bench_args(&["--iters", "3", "--warmup-ms", "0", "--shape", "16,4,64", "--shape", "3,2,3"], &json);
    let (stdout, ctx, doc) = bench_doc(&args, &json);
    let rows = doc["rows"].as_array().unwrap_or_else(|| panic!("rows: {doc}"));
    assert_eq!(rows.len(), 14, "{doc}");
    let seen: BTreeSet<(String, [usize; 3])> = rows.iter().map(|r| check_bench_row(r, &doc, &ctx)).collect();
    let want: BTreeSet<(String, [usize; 3])> = [[16, 4, 64], [3, 2, 3]]
        .into_iter()
        .flat_map(|s| BENCH_ROWS.iter().map(move |op| (op.to_string(), s)))
        .collect();
    assert_eq!(seen, want);
    for op in BENCH_ROWS {
        assert!(stdout.lines().any(|l| l.split_whitespace().next() == Some(op)), "no {op} row: {ctx}");
    }

    // One operator, one shape.
    let json = dir.path().join("one.json");
    let args = bench_args(&["--op", "sinkhorn-forward", "--shape", "4,4,8", "--iters", "2"], &json);
    let (stdout, ctx, doc) = bench_doc(&args, &json);
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{doc}");
    assert_eq!(check_bench_row(&rows[0], &doc, &ctx), ("sinkhorn-forward".to_string(), [4, 4, 8]));
    assert!(stdout.contains("sinkhorn-forward"), "{ctx}");
}

/// `--wall`: each call timed on the host, submit to wait, and named so in the output and JSON;
/// it cannot be combined with `--stages`, which needs timestamps.
#[test]
fn bench_times_wall_clock() {
    let dir = TempDir::new().unwrap();
    let json = dir.path().join("wall.json");
    let flags =
        ["--wall", "--op", "pre-forward", "--shape", "1,4,64", "--shape", "3,1,3", "--iters", "3", "--warmup-ms", "0"];
    let args = bench_args(&flags, &json);
    let (stdout, ctx, doc) = bench_doc(&args, &json);
    assert!(doc["timing"].as_str().is_some_and(|t| t.starts_with("host wall clock")), "{doc}");
    assert!(stdout.contains("timing: host wall clock"), "{ctx}");
    let rows = doc["rows"].as_array().unwrap_or_else(|| panic!("rows: {doc}"));
    let seen: Vec<(String, [usize; 3])> = rows.iter().map(|r| check_bench_row(r, &doc, &ctx)).collect();
    let want: Vec<(String, [usize; 3])> = [[1, 4, 64], [3, 1, 3]]
        .into_iter()
        .flat_map(|s| ["pre-forward", "pre-forward+sinkhorn"].map(|op| (op.to_string(), s)))
        .collect();
    assert_eq!(seen, want, "{ctx}");

    let args: Vec<String> = ["bench", "--wall", "--stages"].map(String::from).to_vec();
    let out = mhc(&args);
    let ctx = describe(&args, &out);
    assert!(!out.status.success(), "{ctx}");
    let err = text(&out.stderr);
    assert!(err.contains("--wall") && err.contains("--stages"), "{ctx}");
}

/// `--stages`: each operator's entry points in recording order, timed inside its pass.
#[test]
fn bench_times_stages() {
    let dir = TempDir::new().unwrap();
    let json = dir.path().join("stages.json");
    let flags = [
        "--op",
        "pre-backward",
        "--op",
        "post-forward",
        "--shape",
        "16,4,64",
        "--iters",
        "3",
        "--warmup-ms",
        "0",
        "--stages",
    ];
    let args = bench_args(&flags, &json);
    let has_stage_timestamps = mhc::runtime::Context::new().unwrap().capabilities().stage_timestamps;
    if !has_stage_timestamps {
        let out = mhc(&args);
        let ctx = describe(&args, &out);
        assert!(!out.status.success() && text(&out.stderr).contains("--stages"), "{ctx}");
        return;
    }
    let (stdout, ctx, doc) = bench_doc(&args, &json);
    let rows = doc["rows"].as_array().unwrap_or_else(|| panic!("rows: {doc}"));
    let want: [(&str, &[&str]); 2] = [("pre-backward", &["rows", "cols", "finish"]), ("post-forward", &["forward"])];
    assert_eq!(rows.len(), want.len(), "{ctx}");
    for (row, (op, entries)) in rows.iter().zip(want) {
        check_bench_row(row, &doc, &ctx);
        assert_eq!(row["op"], op, "{ctx}");
        let stages = row["stages"].as_array().unwrap_or_else(|| panic!("stages of {row}"));
        let names: Vec<&str> = stages.iter().map(|s| s["entry"].as_str().unwrap()).collect();
        assert_eq!(names, entries, "{ctx}");
        let us: Vec<f64> = stages.iter().map(|s| s["us"].as_f64().unwrap()).collect();
        assert!(us.iter().all(|u| u.is_finite() && *u > 0.0), "{us:?}: {ctx}");
        // Each stage lies inside its pass in every run, so its median is at most the pass's
        // (order statistics keep a pointwise order). No lower bound: on a busy CPU, lavapipe's
        // end-of-pass timestamp can come long after the last stage's.
        let total = row["us"].as_f64().unwrap();
        assert!(us.iter().all(|u| *u <= total * (1.0 + 1e-9)), "stages {us:?} vs pass {total}: {ctx}");
    }
    assert!(stdout.contains("cols"), "{ctx}");
}

#[test]
fn info_names_the_adapter() {
    let args = ["info".to_string()];
    let out = succeed(&args);
    let ctx = describe(&args, &out);
    let stdout = text(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("adapters:"), "{ctx}");
    // "  NAME (Backend, DeviceType), driver ...", one per adapter.
    let listed: Vec<&str> =
        lines.take_while(|l| l.starts_with("  ")).filter_map(|l| l.trim().split(" (").next()).collect();
    assert!(!listed.is_empty() && listed.iter().all(|n| !n.is_empty()), "{ctx}");
    let used = stdout
        .lines()
        .find_map(|l| l.strip_prefix("mhc uses: "))
        .unwrap_or_else(|| panic!("no 'mhc uses:' line: {ctx}"));
    assert!(listed.iter().any(|n| used.starts_with(&format!("{n} ("))), "{used:?} is not one of {listed:?}: {ctx}");
    for field in ["subgroups:", "timestamp queries:", "max storage binding:"] {
        assert!(stdout.contains(field), "{field} missing: {ctx}");
    }
}
