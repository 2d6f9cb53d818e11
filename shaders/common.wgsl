// ---- common.wgsl: bf16 packing and grid helpers shared by every kernel ----
// WGSL has no bf16: two values share a u32, the element at the even index in the low half.
// A vec4<u32> holds 8 elements; lo4/hi4 return the even / odd ones, so element-wise maths
// can run on the two halves and pack4 puts them back in place.

fn bf16_lo(w: u32) -> f32 {
    return bitcast<f32>(w << 16u);
}

fn bf16_hi(w: u32) -> f32 {
    return bitcast<f32>(w & 0xffff0000u);
}

// Element e of a bf16 tensor, given the word w = buf[e >> 1] that holds it.
fn bf16_at(w: u32, e: u32) -> f32 {
    return select(bf16_lo(w), bf16_hi(w), (e & 1u) == 1u);
}

fn lo4(q: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(q << vec4<u32>(16u));
}

fn hi4(q: vec4<u32>) -> vec4<f32> {
    return bitcast<vec4<f32>>(q & vec4<u32>(0xffff0000u));
}

// v rounded to bf16 (nearest, ties to even; NaN stays a quiet NaN), as f32 bits with the bf16
// in the top half: callers take it with a shift or a mask, so a pair packs with one of each.
fn bf16_top(v: f32) -> u32 {
    let b = bitcast<u32>(v);
    return select(b + 0x7fffu + ((b >> 16u) & 1u), b | 0x400000u, (b & 0x7fffffffu) > 0x7f800000u);
}

fn bf16_top4(v: vec4<f32>) -> vec4<u32> {
    return vec4<u32>(bf16_top(v.x), bf16_top(v.y), bf16_top(v.z), bf16_top(v.w));
}

fn bf16_bits(v: f32) -> u32 {
    return bf16_top(v) >> 16u;
}

// Two values as one word, lo in the low half.
fn pack2(lo: f32, hi: f32) -> u32 {
    return (bf16_top(lo) >> 16u) | (bf16_top(hi) & 0xffff0000u);
}

// A bf16 element stored alone: odd-length rows share words with their neighbours, written by
// other invocations, so the element's half is replaced with atomicAnd(keep) + atomicOr(bits).
fn half_keep(e: u32) -> u32 {
    return ~(0xffffu << ((e & 1u) * 16u));
}

fn half_bits(e: u32, v: f32) -> u32 {
    return bf16_bits(v) << ((e & 1u) * 16u);
}

fn pack4(lo: vec4<f32>, hi: vec4<f32>) -> vec4<u32> {
    return (bf16_top4(lo) >> vec4<u32>(16u)) | (bf16_top4(hi) & vec4<u32>(0xffff0000u));
}

// Not infinity or NaN: not all exponent bits set.
fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn sigmoid(z: f32) -> f32 {
    return 1.0 / (1.0 + exp(-z));
}

// Dispatches wider than 65535 workgroups are laid out as a 2D grid.
fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
