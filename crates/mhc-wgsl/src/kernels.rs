//! The specialisation of each kernel family for a shape and an adapter: which code path, how
//! many invocations a workgroup, how many tokens each workgroup takes.

use crate::Spec;

/// What the kernels need to know about the adapter they will run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    /// Subgroup operations are available (reductions use them instead of shared memory).
    pub subgroup: bool,
    /// The adapter's smallest subgroup size, or less: the most lanes one cluster of
    /// `block_reduce` may span (a power of two).
    pub sg_min: u32,
}

impl Target {
    /// No subgroups: portable everywhere, shared-memory reductions only.
    pub const PORTABLE: Target = Target { subgroup: false, sg_min: 1 };
}

fn m_of(n: u32) -> u32 {
    n * n + 2 * n
}

fn base(n: u32, d: u32, wg: u32, target: Target) -> Spec {
    // The lanes of one reduce-scatter in `block_reduce`: a power of two no larger than any
    // subgroup, the workgroup or its 32 values.
    let cluster = 1 << target.sg_min.clamp(1, 32).min(wg).ilog2();
    Spec::new()
        .with("N", n)
        .with("D", d)
        .with("K", n * d)
        .with("M", m_of(n))
        .with("NN", n * n)
        .with("WG", wg)
        .with("CL", cluster)
        .with("RPL", 32 / cluster)
        .flag("SUBGROUP", target.subgroup)
        .flag("VEC4", d.is_multiple_of(8))
}

/// `nv` values an invocation that `block_reduce` sums over the workgroup, in groups of 32.
fn with_reduction(spec: Spec, nv: u32) -> Spec {
    spec.with("NV", nv).with("RG", nv.div_ceil(32))
}

/// Tokens a workgroup so that each invocation keeps about `budget` accumulators.
fn tokens_per_group(values_per_token: u32, budget: u32) -> u32 {
    (budget / values_per_token).clamp(1, 8)
}

/// How the vector path of mhc_pre forward lays out its tokens: `tb` tokens a row of
/// invocations (the rows split K between them), `tpl` tokens an invocation, and with the
/// projection over splits of K, `slices` workgroups for a tile's h_in (each takes a slice of
/// D; the first also writes the small outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Tokens a row of invocations.
    pub tb: u32,
    /// Tokens an invocation.
    pub tpl: u32,
    /// Workgroups a tile's h_in is split over (projection over splits of K only).
    pub slices: u32,
    /// `main` walks its slice of h_in a chunk of `project`'s at a time, in the reverse of the
    /// order `project` read them, where the splits of K start at rows of x and a slice holds
    /// whole splits (otherwise row by row): its first reads of x then find in the L2 what
    /// `project` read last.
    pub newest_first: bool,
}

/// The most bytes of x for which [`Tile::for_tokens`] has `main` walk h_in newest chunk
/// first. On an H100 (50 MB of L2; call 119 of docs/bench/h200-device-bench.log, n = 4)
/// that took `main` from 48.5 to 45.7 us at 4096 x 2560 (84 MB of x) and from 88.9 to 83.0
/// at 8192 x 2560 (168 MB), but from 235.2 to 239.5 at 16384 x 4096 (537 MB) and from 206.2
/// to 207.5 at 8192 x 7168 (470 MB), where little of x stays in the L2 and the walk's shorter
/// runs of each row cost more than it finds there.
const NEWEST_FIRST_MAX_X_BYTES: usize = 256 << 20;

impl Tile {
    /// The default for `tokens` tokens of `n` streams of width `d`: two tokens an invocation
    /// where the sums fit in registers; the widest rows (8, 16 or 32 tokens) that still leave
    /// 256 workgroups. On an H200 (docs/perf-history.md) 8 timed best at 4096 tokens, 16 at
    /// 8192 and 32 at 16384. Each tile's h_in is split over 2 workgroups (0.8-1.6% faster
    /// than 1 at the four bench shapes there, 1.2-2.9% with the fused Sinkhorn), and where
    /// there are few tiles (decoding) over up to 128 / tiles, so that it is not one
    /// workgroup's serial walk over its tokens' rows; a slice has at least 32 words of 8
    /// columns. `main` walks h_in newest chunk first where x is at most 256 MiB. Above M = 24
    /// an invocation takes 1 token; with the projection over splits of K, 2 took the same time
    /// at 8192 x {5, 6, 8} x 2560 and 0.9% less at 16384 x 5 x 4096 on an H100 (call 176).
    pub fn for_tokens(n: u32, d: u32, tokens: usize) -> Tile {
        let tpl = if m_of(n) <= 24 { 2 } else { 1 };
        let rows = |tb: u32| tokens / (tb * tpl) as usize;
        let tb = [32, 16].into_iter().find(|&tb| rows(tb) >= 256).unwrap_or(8);
        let tiles = tokens.div_ceil((tb * tpl) as usize).max(1);
        let slices = (128 / tiles as u32).max(2).min((d / 256).max(1));
        let newest_first = tokens.saturating_mul((2 * n * d) as usize) <= NEWEST_FIRST_MAX_X_BYTES;
        Tile { tb, tpl, slices, newest_first }
    }
}

/// Where the vector path of mhc_pre forward gets its projection sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Projection {
    /// `main` computes them for its tile of tokens.
    InMain,
    /// From [`pre_forward_coop`]'s partials over this many splits of K.
    Coop(u32),
    /// From the f32 partials of `project` (pre_forward.wgsl), laid out by the tile.
    Split(SplitTile),
}

/// Whether mhc_pre forward's `project` should scale phi by gamma itself for `tokens` tokens
/// (flag GAMMA of [`pre_forward`]) rather than after a `fold_gamma` dispatch. `project`
/// scales each chunk of phi as it stores it to shared memory, after the chunk before has been
/// used, so the dispatch saved costs no early wait on the chunk's loads (scaling them as they
/// arrived did: 4096 tokens 137.1 -> 140.8 us). On an H200 (calls 56-60 of
/// docs/bench/h200-device-bench.log, n = 4, us for the operator, against the fold): 1 token
/// 16.5-16.9 -> 15.0-15.4 at D = 2560 and 22.4 -> 19.5-19.7 at D = 7168, 64 tokens 26.0-26.2
/// -> 23.3-23.9, 4096 tokens 114.1-114.4 -> 112.8-112.9, 8192 tokens 197.9-198.4 ->
/// 195.5-196.4 at D = 2560 and 500.4-500.6 -> 499.4-499.5 at D = 7168; but 16384 x 4096
/// 560.9-561.2 -> 570.4-571.1, where `project` took 390.5 -> 404.0 us with 5 registers more.
pub fn gamma_in_project(tokens: usize) -> bool {
    tokens <= 8192
}

/// mhc_pre forward: the whole layer for a tile of tokens in one workgroup; with a
/// [`Projection`] other than `InMain` (vector path only), the projection's sums come from
/// partials over splits of K. `gamma`: `project` scales phi by gamma as it stores each chunk
/// (flag GAMMA; only with `Projection::Split` whose workgroups cover whole rows of a chunk,
/// invocations a multiple of 2 x chunk_words); otherwise the caller folds gamma into phi
/// first (`fold_gamma`) where there is one.
pub fn pre_forward(
    n: u32,
    d: u32,
    sinkhorn: bool,
    gamma: bool,
    target: Target,
    tile: Tile,
    projection: Projection,
) -> Spec {
    let projection = if d.is_multiple_of(8) { projection } else { Projection::InMain };
    let (splits, per_split) = match projection {
        Projection::InMain => (1, 1),
        Projection::Coop(splits) => (splits, COOP_PART_PER_SPLIT),
        Projection::Split(t) => (t.splits, m_of(n) + 1),
    };
    let split = match projection {
        Projection::Split(t) => t,
        _ => SplitTile { splits: 1, chunk_words: 1, tokens_per_invocation: 1, invocations: 64, split_major: true },
    };
    let spec = base(n, d, 256, target)
        .flag("SINKHORN", sinkhorn)
        .flag("PARTS", projection != Projection::InMain)
        .flag("COOP", matches!(projection, Projection::Coop(_)))
        .flag("SPLIT", matches!(projection, Projection::Split(_)))
        .flag(
            "GAMMA",
            gamma && matches!(projection, Projection::Split(t) if t.invocations.is_multiple_of(2 * t.chunk_words)),
        )
        .with("CS", splits)
        .with("PW", splits * per_split)
        .with("SC", split.chunk_words)
        .with("SPT", split.tokens_per_invocation)
        .with("PWG", split.invocations)
        .flag("SPLIT_MAJOR", split.split_major)
        // phi's vec4s an invocation stages a chunk.
        .with("PHL", (m_of(n) * split.chunk_words * 2).div_ceil(split.invocations));
    if d.is_multiple_of(8) {
        // block_reduce is not used on this path; NV only sizes its (unused) arrays.
        let slices = if matches!(projection, Projection::Split(_)) { tile.slices.max(1) } else { 1 };
        with_reduction(spec, m_of(n) + 1)
            .with("TB", tile.tb)
            .with("TPL", tile.tpl)
            .with("DS", slices)
            .flag("NEWEST", tile.newest_first)
    } else {
        let tb = tokens_per_group(m_of(n) + 1, 100);
        with_reduction(spec, tb * (m_of(n) + 1)).with("TB", tb).with("DS", 1)
    }
}

/// How `project` of mhc_pre forward's vector path lays out the f32 projection: `splits`
/// splits of K, each a workgroup of `invocations` taking `tokens_per_invocation` tokens
/// each, phi staged `chunk_words` words (8 columns each) at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SplitTile {
    /// Splits of K, each with its own partial sums (M + 1 floats a token).
    pub splits: u32,
    /// Words of K a chunk of phi in shared memory holds.
    pub chunk_words: u32,
    /// Tokens an invocation.
    pub tokens_per_invocation: u32,
    /// Invocations a workgroup.
    pub invocations: u32,
    /// The partial sums of a dispatch laid out `[split][M + 1][token]`, so that a subgroup's
    /// stores are contiguous (otherwise `[token][split][M + 1]`). On an H200 that took `project`
    /// from 104 to 83 us at 4096 x 4 x 2560, but one decoded token from 16.8 to 18.2 us, where
    /// `main` then adds up to 256 splits with a stride known only at run time.
    pub split_major: bool,
}

/// Workgroups `project` aims at. An H200 holds two of them on each of its 132 multiprocessors
/// (180 registers an invocation, `examples/kernel_stats.rs`; and on an H100 NVIDIA's driver
/// fitted at most 49152 bytes of a pipeline's workgroup memory on a multiprocessor,
/// docs/PERFORMANCE.md, against 24576 a workgroup at n = 4), so 256 run as one wave; 320 or
/// 384 took 10-30% longer there.
const SPLIT_TARGET_GROUPS: usize = 256;
/// `main` adds a token's partials with one load each, unrolled: at most this many splits
/// (`DECODE_MAX_SPLITS` for the decoding layout).
const MAX_SPLITS: u32 = 32;
/// Tokens up to which `project` takes the decoding layout.
const DECODE_TOKENS: usize = 64;
const DECODE_MAX_SPLITS: u32 = 256;

impl SplitTile {
    /// Tokens a workgroup of `project` takes.
    pub fn tokens(&self) -> u32 {
        self.invocations * self.tokens_per_invocation
    }

    /// Bytes of workgroup memory `project` takes: phi's chunks, double-buffered.
    pub fn workgroup_bytes(&self, n: u32) -> u32 {
        self.chunk_words * Self::bytes_per_chunk_word(n)
    }

    /// Bytes of workgroup memory a word of chunk takes: two buffers of M x 8 columns x 4 bytes.
    fn bytes_per_chunk_word(n: u32) -> u32 {
        2 * m_of(n) * 32
    }

    /// The layout for `tokens` tokens of `n` streams of width `d` on a device with
    /// `workgroup_storage` bytes of workgroup memory; `None` off the vector path (D not a
    /// multiple of 8).
    pub fn for_shape(n: u32, d: u32, tokens: usize, workgroup_storage: u32) -> Option<SplitTile> {
        if !d.is_multiple_of(8) {
            return None;
        }
        let m = m_of(n);
        // Longer chunks mean fewer barriers (16 words took 4-6% less time than 8 on an H200),
        // but two workgroups must fit the device's workgroup memory: an H100 held one an SM
        // past 24576 bytes, which took `project` 1.3x longer (`SPLIT_TARGET_GROUPS`). At
        // 8192 x 2560 on an H100, this rule's chunks were 1.13-1.23x faster than the longer
        // ones that fit one workgroup, at n = 5, 6 and 8 (docs/PERFORMANCE.md).
        let chunk_words = (workgroup_storage / 2 / Self::bytes_per_chunk_word(n)).clamp(1, 16);
        let chunk_words = 1 << chunk_words.ilog2();
        let words = n * d / 8;
        // Decoding: one token an invocation, 32 invocations, splits of 8-word chunks up to
        // 256 workgroups, so that no invocation walks a long stretch of K alone. On an H200
        // (call 9 of docs/bench/h200-device-bench.log, n = 4, us for the operator): 1 token
        // at D = 2560 41.5 -> 26.4 (160 splits), 16 tokens 49.1 -> 36.9, 64 tokens 50.9 ->
        // 41.3 (128 splits); 1 token at D = 7168 73.0 -> 35.6 (256 splits).
        if tokens <= DECODE_TOKENS {
            let chunk_words = chunk_words.min(8);
            let blocks = tokens.div_ceil(32).max(1);
            let splits = (SPLIT_TARGET_GROUPS / blocks) as u32;
            let splits = splits.clamp(1, DECODE_MAX_SPLITS.min(words.div_ceil(chunk_words)));
            return Some(SplitTile {
                splits,
                chunk_words,
                tokens_per_invocation: 1,
                invocations: 32,
                split_major: false,
            });
        }
        // 4 tokens an invocation halve phi's shared-memory loads a token; on an H200 that was
        // faster from 8192 tokens (16384 x 4096: 427-439 us for `project` against 463 us with
        // 2; 8192 x 7168: 551 against 569 us for the operator; 8192 x 10240, with split-major
        // partials: 139.8 against 150.8 us for `project`), not at 4096 x 10240 (89.6 against
        // 82.8: twice the splits, of 2-3 chunks each). Above n = 4 (M > 24), on an H100 at
        // 8192 x 2560 with 256 workgroups, 2 tokens took `project` 1.38-1.47x less time than 1
        // (n = 5: 352.4-355.2 -> 253.1-255.3 us, n = 6: 527.1-529.7 -> 371.1-372.6, n = 8:
        // 1084.0-1090.6 -> 744.1-748.6; 16384 x 5 x 4096: 1043.0-1045.4 -> 722.4-728.6), and 4
        // tokens 1.1-5.3x more than 2 (278.4-279.5, 1032.0-1032.1, 3950.0-3953.1;
        // docs/PERFORMANCE.md).
        let tokens_per_invocation = if m <= 24 && n * d >= 10240 && tokens >= 8192 { 4 } else { 2 };
        let invocations = 128;
        let blocks = tokens.div_ceil((invocations * tokens_per_invocation) as usize).max(1);
        let chunks = words.div_ceil(chunk_words);
        let splits = (SPLIT_TARGET_GROUPS.div_ceil(blocks) as u32).clamp(1, MAX_SPLITS.min(chunks));
        Some(SplitTile { splits, chunk_words, tokens_per_invocation, invocations, split_major: true })
    }
}

/// Workgroups the cooperative-matrix `project` aims at (see `CoopTile::for_shape`). The f32
/// `project` was fastest at one wave (`SPLIT_TARGET_GROUPS`); whether this one is too is not
/// measured.
const COOP_TARGET_GROUPS: usize = 512;
/// Floats a token of the cooperative-matrix partials takes per split of K: 32 sums, the sum
/// of squares, max |x|.
const COOP_PART_PER_SPLIT: u32 = 34;

/// How mhc_pre forward's cooperative-matrix projection lays out its work: `subgroups`
/// subgroups of 32 a workgroup (16 tokens each), `chunk` columns of K a step, `splits`
/// splits of K.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CoopTile {
    /// Splits of K, each with its own partial sums.
    pub splits: u32,
    /// Subgroups of 32 invocations a workgroup, 16 tokens each.
    pub subgroups: u32,
    /// Columns of K a step.
    pub chunk: u32,
}

impl CoopTile {
    /// Tokens a workgroup takes.
    pub fn tokens(&self) -> u32 {
        16 * self.subgroups
    }

    /// Floats a token of the partial sums takes.
    pub fn partial_floats(&self) -> u32 {
        self.splits * COOP_PART_PER_SPLIT
    }

    /// The layout for `tokens` tokens, or `None` where the shape does not fit the path (M
    /// above 32, D not a multiple of 8, K not a multiple of the chunk). 8 subgroups and
    /// 32-column chunks timed best on an H200 (4 subgroups, or 64-column chunks, were 1.2-1.3x
    /// slower). Splits are added until there are about 512 workgroups (4 for each of an
    /// H200's 132 multiprocessors).
    pub fn for_shape(n: u32, d: u32, tokens: usize) -> Option<CoopTile> {
        let (subgroups, chunk) = (8, 32);
        let k = n * d;
        if m_of(n) > 32 || !d.is_multiple_of(8) || !k.is_multiple_of(chunk) {
            return None;
        }
        let groups = tokens.div_ceil(16 * subgroups as usize).max(1);
        let chunks = k / chunk;
        let mut splits = 1;
        for s in 1..=16 {
            if chunks.is_multiple_of(s) {
                splits = s;
                if groups * s as usize >= COOP_TARGET_GROUPS {
                    break;
                }
            }
        }
        Some(CoopTile { splits, subgroups, chunk })
    }
}

/// mhc_pre forward's cooperative-matrix kernels (`phi_top`, `split_phi`, `project`).
pub fn pre_forward_coop(n: u32, d: u32, tile: CoopTile) -> Spec {
    // Chunks in flight: 4 where they divide a split's chunks (1 was 5-30% slower on an H200).
    let chunks = n * d / tile.chunk / tile.splits;
    let pf = [4, 2, 1].into_iter().find(|p| chunks.is_multiple_of(*p)).unwrap_or(1);
    let wg = 32 * tile.subgroups;
    Spec::new()
        .with("K", n * d)
        .with("M", m_of(n))
        .with("NB", (n * d).div_ceil(2048))
        .with("KS", tile.splits)
        .with("S", tile.subgroups)
        .with("KC", tile.chunk)
        .with("KSTEPS", tile.chunk / 16)
        .with("PF", pf)
        .with("XL", 16 * tile.subgroups * tile.chunk / 2 / wg)
        .with("PL", 64 * tile.chunk / wg)
}

/// mhc_pre backward: its `rows`, `cols` and `finish` entry points share this spec. `big_coef`:
/// `cols` forms dx again for a token whose coef passed f32's range, which only a norm_eps near
/// 0 allows (`dx_big_coef` in pre_backward.wgsl).
pub fn pre_backward(n: u32, d: u32, has_gamma: bool, big_coef: bool, target: Target) -> Spec {
    let (tb, wg) = (8, 128);
    // Even D: `cols` steps over 8 tokens at a time and writes dx in whole words (WORDS). Two
    // columns an invocation (PAIR) double the registers held for phi and dphi's sums, so above
    // n = 6 an invocation takes one column and a step's dx is put together in workgroup memory.
    // On an H100 (docs/PERFORMANCE.md), against the odd-D layout these replaced (one column,
    // one token a step, two atomics a bf16 of dx), pre backward at 8192 x 2560 took: n = 5 with
    // PAIR 1337.6-1340.6 -> 630.0-632.4 us (three runs of ten 1868.2-3059.4: slow starts, in
    // PERFORMANCE.md's "Slow processes and slow starts"); n = 6 with PAIR 1595.0 ->
    // 1157.3-1159.6; n = 7 2703.2-2706.4 -> 1788.9-1791.3 with one column, 3816.4-3826.0 with
    // PAIR; n = 8 3559.0-3571.9 -> 3212.9-3214.9 with one column, 5998.9-6023.3 with PAIR.
    let words = d.is_multiple_of(2);
    let pair = words && m_of(n) <= 48;
    let cht = if pair { 64 } else { 32 };
    with_reduction(base(n, d, wg, target), tb * n)
        .with("TB", tb)
        // Tokens `cols` stages at a time (one barrier each): 64 was 0-1.5% faster than 32 on an
        // H200 at n = 4. With PAIR (n <= 6) 64 tokens' scalars take under 15 KB, within the
        // 16 KB of workgroup memory every adapter has; at n = 7 and 8 they would not.
        .with("CHT", cht)
        .with("SL", (cht * (m_of(n) + 1)).div_ceil(wg))
        .with("HL", (cht * n).div_ceil(wg))
        // Tokens a step of `cols`, their loads issued together. On an H200 one token a step
        // left `cols` waiting on memory latency; 2, 4 and 8 took pre backward at 16384/4096
        // from 2300 us to 2104, 1765 and 1529 us (docs/perf-history.md).
        .with("UT", 8)
        .with("TV", (m_of(n) + 4) / 4)
        .flag("HAS_GAMMA", has_gamma)
        .flag("BIG_COEF", big_coef)
        .flag("WORDS", words)
        .flag("PAIR", pair)
}

/// Below this many elements of x (tokens x D), mhc_post forward's vector path takes 4 columns
/// an invocation instead of 8. On an H200 (docs/perf-history.md) 4 columns took 4096 x 2560
/// from 52.6-52.9 to 51.4-51.8 us and 8192 x 2560 from 96.2 to 95.2, and cost 3 and 5 us at
/// 16384 x 4096 and 8192 x 7168 (287 -> 290, 252 -> 257). Why was not measured; a likely
/// part is the pass's end, where smaller invocations leave fewer bytes in flight to drain.
pub const POST_NARROW_ELEMENTS: u64 = 1 << 25;

/// The columns an invocation of mhc_post forward's vector path takes by default: 4 up to
/// [`POST_NARROW_ELEMENTS`] elements of x, 8 above.
///
/// ```
/// assert_eq!(mhc_wgsl::post_forward_columns(2560, 8192), 4);
/// assert_eq!(mhc_wgsl::post_forward_columns(4096, 16384), 8);
/// ```
pub fn post_forward_columns(d: u32, tokens: usize) -> u32 {
    if tokens as u64 * u64::from(d) <= POST_NARROW_ELEMENTS { 4 } else { 8 }
}

/// mhc_post forward: one word of columns of a token an invocation, all N output rows, where D
/// is a multiple of 8 (4 columns if `columns` is 4, else 8); one column otherwise. 128
/// invocations a workgroup timed 5-10% faster on an H200 than 256 or 512.
pub fn post_forward(n: u32, d: u32, columns: u32, target: Target) -> Spec {
    let vector = d.is_multiple_of(8);
    let narrow = vector && columns == 4;
    let cpi = if narrow {
        4
    } else if vector {
        8
    } else {
        1
    };
    post_base(n, d, 128, target).flag("NARROW", narrow).with("CPI", cpi)
}

/// mhc_post backward. It reduces N + NN sums a token over its workgroup: one token to a
/// workgroup of 64 invocations gives each a few column blocks to amortise that reduction over
/// and keeps its registers few. On an H200 this took it from 2.6x its memory floor (256
/// invocations, 3 tokens) to 1.1-1.5x (docs/perf-history.md).
pub fn post_backward(n: u32, d: u32, target: Target) -> Spec {
    post_base(n, d, 64, target).flag("NARROW", false).with("CPI", if d.is_multiple_of(8) { 8 } else { 1 })
}

fn post_base(n: u32, d: u32, wg: u32, target: Target) -> Spec {
    // SC4: on an H200 the mixes as 4 + 16 scalar loads an invocation took 3-5% longer than
    // as 1 + 4 vec4 loads (4096 x 2560: forward 60.2 -> 57.2 us, backward 92.2 -> 91.1).
    with_reduction(base(n, d, wg, target), n + n * n).flag("SC4", n == 4)
}

/// Sinkhorn forward and backward, one token an invocation.
pub fn sinkhorn(n: u32) -> Spec {
    Spec::new().with("N", n).with("NN", n * n).with("WG", 64)
}

/// The copy and FMA ceilings of `mhc bench`.
pub fn bench() -> Spec {
    Spec::new().with("WG", 256)
}

/// Optimiser steps on f32 parameters, one element an invocation.
pub fn optim() -> Spec {
    Spec::new().with("WG", 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_tiles_leave_room_for_two_workgroups() {
        for storage in [16384, 32768, 49152, 65536] {
            for n in 1..=8 {
                for tokens in [1, 64, 4096, 16384] {
                    let tile = SplitTile::for_shape(n, 2560, tokens, storage).unwrap();
                    assert!(tile.chunk_words.is_power_of_two(), "{tile:?}");
                    assert!(2 * tile.workgroup_bytes(n) <= storage, "n = {n}, {storage} bytes: {tile:?}");
                }
            }
        }
        // n = 4 on NVIDIA's 49152 bytes keeps the 16-word chunks it was tuned with.
        assert_eq!(SplitTile::for_shape(4, 2560, 4096, 49152).unwrap().chunk_words, 16);
    }

    #[test]
    fn split_tiles_take_two_tokens_an_invocation_above_four_streams() {
        // The layouts timed fastest on an H100 at 8192 x 2560 (docs/PERFORMANCE.md).
        for (n, chunk_words) in [(5, 8), (6, 8), (8, 4)] {
            let tile =
                SplitTile { splits: 8, chunk_words, tokens_per_invocation: 2, invocations: 128, split_major: true };
            assert_eq!(SplitTile::for_shape(n, 2560, 8192, 49152), Some(tile), "n = {n}");
        }
    }
}
